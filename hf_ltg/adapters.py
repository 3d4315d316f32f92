"""Parameter-efficient fine-tuning of hf_ltg models with peft: LoRA, prompt tuning, p-tuning, prefix tuning.

The helpers build ordinary peft configs, so everything peft offers (`get_peft_model`,
`PeftModel.from_pretrained`, `AutoPeftModelFor*`, `merge_and_unload`) works as it does for
built-in models. What they add for our models:

- the classification head (`score` for GPT sequence classification, `classifier` /
  `qa_outputs` for the other heads) is found from the model and saved whole with the adapter
  (`modules_to_save`); LoRA never wraps a layer inside it;
- a requested LoRA target that names no linear or embedding layer is a ValueError that lists
  the names there are (an input embedding tied to the LM head is refused: merging would change
  the head too);
- the fine-tuning commands get `--adapter` options (`add_adapter_arguments`), one call to
  wrap the model (`apply_adapter`) and one to save the result (`save_adapter_or_merged`).

peft's defaults for `LoraConfig(target_modules=None)` come from `hf_ltg.registration`, run by
`import hf_ltg`.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PeftModelForCausalLM,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

# The command-line options live apart so that building the parser imports neither torch nor peft.
from .adapter_options import ADAPTER_METHODS, add_adapter_arguments, check_adapter_arguments  # noqa: F401
from .checkpoint import atomic_directory, save_checkpoint

# Beside a classification adapter: the labels of its head, which the base checkpoint does not know.
LABELS_FILE = "labels.json"
PROMPT_METHODS = ("prompt", "ptuning", "prefix")
ALL_LINEAR = "all-linear"

# Head class name suffix -> peft task type (the suffixes transformers uses for its heads).
_TASK_BY_CLASS_SUFFIX = {
    "ForCausalLM": TaskType.CAUSAL_LM,
    "ForSequenceClassification": TaskType.SEQ_CLS,
    "ForTokenClassification": TaskType.TOKEN_CLS,
    "ForQuestionAnswering": TaskType.QUESTION_ANS,
}
_HEADED_TASKS = (TaskType.SEQ_CLS, TaskType.TOKEN_CLS, TaskType.QUESTION_ANS)


# ---------------------------------------------------------------------------------------------
# What the model offers


def task_type_of(model) -> TaskType:
    """The peft task type of a head model, from its class name (`LtgGptForCausalLM` -> CAUSAL_LM)."""
    name = type(model).__name__
    for suffix, task_type in _TASK_BY_CLASS_SUFFIX.items():
        if name.endswith(suffix):
            return task_type
    raise ValueError(
        f"Cannot tell the peft task type of {name}: adapters need a head model whose class name ends in one of "
        f"{', '.join(_TASK_BY_CLASS_SUFFIX)}; pass task_type explicitly."
    )


def _task_type(task_type) -> TaskType:
    try:
        return TaskType(task_type.upper() if isinstance(task_type, str) else task_type)
    except ValueError:
        raise ValueError(
            f"Unknown task type {task_type!r}; use one of CAUSAL_LM, SEQ_CLS, TOKEN_CLS, QUESTION_ANS."
        ) from None


def head_module_names(model, task_type=None) -> list[str]:
    """Names of the task head modules that train fully and are saved with the adapter.

    These are the model's own children that hold parameters, other than the base model
    (`base_model_prefix`): `score` for `LtgGptForSequenceClassification`, `classifier` for the
    token classifiers, `qa_outputs` for question answering. A causal LM has none: its
    `lm_head` is tied to the token embedding and stays frozen.
    """
    task_type = task_type_of(model) if task_type is None else _task_type(task_type)
    if task_type not in _HEADED_TASKS:
        return []
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return [
        name
        for name, child in model.named_children()
        if child is not base and any(True for _ in child.parameters())
    ]


def linear_layer_names(model, exclude: list[str] = ()) -> list[str]:
    """Sorted distinct short names (last path component) of the model's `nn.Linear` layers.

    Layers inside a module named in `exclude` (and such a module itself) are left out.
    """
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not _inside(name, exclude):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _inside(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _matches(module_name: str, target: str) -> bool:
    # peft's rule for a list of target names: the full name, or its dotted suffix.
    return module_name == target or module_name.endswith("." + target)


# ---------------------------------------------------------------------------------------------
# peft configs


def lora_config(model, task_type=None, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                targets: str | list[str] | None = None) -> LoraConfig:
    """A LoraConfig for `model`.

    `targets`: None for the family's default (registered with peft by `import hf_ltg`, e.g.
    the fused `qkv_proj` of GPT), `"all-linear"` for every linear layer except the output
    embedding and the task head, or a list of layer names (short names like `"fc_in"` or full
    paths), which may include an input embedding (`"wte"`) when it is not tied to an LM head.
    Task heads are trained fully and saved with the adapter (`modules_to_save`).
    """
    task_type = task_type_of(model) if task_type is None else _task_type(task_type)
    if r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}.")
    heads = head_module_names(model, task_type)
    if isinstance(targets, str):
        targets = [targets]
    if targets is None:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ValueError(
                f"peft has no default LoRA target modules for model_type {model_type!r}; pass targets from "
                f"{linear_layer_names(model, heads)} or 'all-linear' (did you `import hf_ltg`?)."
            )
    elif [target.lower() for target in targets] == [ALL_LINEAR]:
        targets = ALL_LINEAR  # peft expands it, leaving out the output embedding; modules_to_save keeps heads out
    else:
        targets = list(targets)
        _check_targets(model, targets, heads)
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=heads or None,
    )


def _check_targets(model, targets: list[str], heads: list[str]) -> None:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    available = linear_layer_names(model, heads)
    embeddings = sorted({name.rsplit(".", 1)[-1] for name, m in layers.items() if isinstance(m, torch.nn.Embedding)})
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for target in targets:
        matched = [name for name in layers if _matches(name, target)]
        if not matched:
            raise ValueError(
                f"LoRA target module {target!r} is neither a linear nor an embedding layer of {type(model).__name__}; "
                f"its linear layers are {available} (or use 'all-linear') and its embeddings {embeddings}."
            )
        if all(_inside(name, heads) for name in matched):
            raise ValueError(
                f"LoRA target module {target!r} is inside the task head {heads}, which is trained and saved whole "
                f"(modules_to_save); choose targets from {available}."
            )
        tied = [name for name in matched if isinstance(layers[name], torch.nn.Embedding)
                and output is not None and layers[name].weight is getattr(output, "weight", None)]
        if tied:
            raise ValueError(
                f"LoRA target module {target!r} is the input embedding {tied[0]}, whose weight the output layer "
                "shares (tie_word_embeddings): the merged adapter would change the LM head too. Adapt the linear "
                f"layers {available} instead (a classifier's input embedding is not tied and can be adapted)."
            )


def prompt_tuning_config(model, task_type=None, num_virtual_tokens: int = 16, init_text: str | None = None,
                         tokenizer=None) -> PromptTuningConfig:
    """A PromptTuningConfig: `num_virtual_tokens` trained input embeddings prepended to every input.

    Random initialisation by default. With `init_text`, the virtual tokens start as the
    embeddings of that text's tokens (repeated or cut to `num_virtual_tokens`); peft loads the
    tokenizer again by path, so `tokenizer` must be a local tokenizer folder or a tokenizer
    loaded from one.
    """
    task_type = _prompt_task_type(model, task_type, "prompt tuning")
    _check_virtual_tokens(model, num_virtual_tokens)
    _check_cached_generation(model, task_type, "prompt tuning")
    if init_text is None:
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                                  prompt_tuning_init=PromptTuningInit.RANDOM)
    if not init_text.strip():
        raise ValueError("init_text for prompt tuning is empty; pass some text, or None for random initialisation.")
    folder = _tokenizer_folder(tokenizer)
    _check_init_text_fits(model, folder, init_text)
    return PromptTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=init_text,
                              tokenizer_name_or_path=folder)


def ptuning_config(model, task_type=None, num_virtual_tokens: int = 16,
                   encoder_hidden_size: int | None = None) -> PromptEncoderConfig:
    """A PromptEncoderConfig (p-tuning): virtual token embeddings produced by a small MLP encoder."""
    task_type = _prompt_task_type(model, task_type, "p-tuning")
    _check_virtual_tokens(model, num_virtual_tokens)
    _check_cached_generation(model, task_type, "p-tuning")
    return PromptEncoderConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                               encoder_hidden_size=encoder_hidden_size or model.config.hidden_size)


def prefix_tuning_config(model, task_type=None, num_virtual_tokens: int = 16,
                         prefix_projection: bool = False) -> PrefixTuningConfig:
    """A PrefixTuningConfig: trained keys and values of `num_virtual_tokens` positions in every layer.

    peft injects them as a key/value cache; the model offsets positions by its length, as
    transformers' GPT-2 does.
    """
    task_type = task_type_of(model) if task_type is None else _task_type(task_type)
    _check_virtual_tokens(model, num_virtual_tokens)
    _check_cached_generation(model, task_type, "prefix tuning")
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                              prefix_projection=prefix_projection, **_prefix_cache_shape(model.config))


def _prefix_cache_shape(config) -> dict:
    """peft sizes each prefix key and value as `token_dim // num_attention_heads` (hidden_size / heads).
    NorBERT4 names its head widths (`query_key_head_size`, `value_head_size`), which need not divide
    hidden_size: give peft a token_dim of heads x that width, which takes one width for keys and values."""
    key, value = getattr(config, "query_key_head_size", None), getattr(config, "value_head_size", None)
    if key is None and value is None:
        return {}
    if key != value:
        raise ValueError(
            f"Prefix tuning needs keys and values of one width per head (peft makes both alike); "
            f"{config.model_type} has query_key_head_size={key} and value_head_size={value}: use LoRA, "
            "prompt tuning or p-tuning."
        )
    return {"token_dim": config.num_attention_heads * key, "num_attention_heads": config.num_attention_heads}


def _prompt_task_type(model, task_type, method: str) -> TaskType:
    task_type = task_type_of(model) if task_type is None else _task_type(task_type)
    if task_type == TaskType.TOKEN_CLS:
        # peft prepends the virtual tokens to the input but not to the labels, so the logits
        # have num_virtual_tokens more positions than the labels (built-in models too).
        raise ValueError(
            f"{method} prepends virtual tokens to the input, which peft does not support for token classification "
            "(the logits would not line up with the labels); use --adapter lora or --adapter prefix."
        )
    return task_type


def _check_virtual_tokens(model, num_virtual_tokens: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(num_virtual_tokens, int) or num_virtual_tokens <= 0:
        raise ValueError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}.")
    if limit is not None and num_virtual_tokens >= limit:
        raise ValueError(
            f"num_virtual_tokens={num_virtual_tokens} leaves no room for input: the model has "
            f"max_position_embeddings={limit} and the virtual tokens take positions too; use fewer."
        )


def _check_cached_generation(model, task_type: TaskType, method: str) -> None:
    """Refuse prompt learning on a causal LM whose cached `generate` would give wrong tokens.

    peft's prompt learning (0.21) wraps the model's `prepare_inputs_for_generation` and looks for
    the KV cache under `past_key_values`; transformers >= 5.24 passes it as `cache`. peft then
    sees no cache and prepends its virtual tokens (or a fresh prefix cache) at every step: other
    greedy tokens with the cache than without, silently, transformers' GPT-2 included. hf_ltg's
    causal LMs hand peft the cache under `past_key_values`; this probes that the model does.
    """
    from transformers import DynamicCache, GenerationMixin

    if task_type != TaskType.CAUSAL_LM or not hasattr(model, "prepare_inputs_for_generation"):
        return
    if "cache" not in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters:
        return  # transformers < 5.24: generate passes `past_key_values`, where peft looks
    if '"cache"' in inspect.getsource(PeftModelForCausalLM.prepare_inputs_for_generation):
        return  # a peft that reads the cache under its new name
    probe = DynamicCache()
    try:
        inputs = model.prepare_inputs_for_generation(torch.zeros(1, 1, dtype=torch.long), cache=probe)
    except Exception:  # noqa: BLE001 (any failure: it cannot be shown to hand peft the cache)
        inputs = {}
    if inputs.get("past_key_values") is not probe:
        raise ValueError(
            f"{method} with peft on {type(model).__name__} would generate wrong tokens with the KV cache: peft "
            "(<= 0.21) looks for the cache under `past_key_values`, which transformers >= 5.24 passes as `cache`. "
            "Use LoRA, an hf_ltg model (its prepare_inputs_for_generation hands peft the cache), or transformers "
            "5.23 for this model."
        )


def _tokenizer_folder(tokenizer) -> str:
    path = tokenizer if isinstance(tokenizer, (str, os.PathLike)) else getattr(tokenizer, "name_or_path", None)
    if not path or not Path(path).is_dir():
        raise ValueError(
            "Prompt tuning from text needs the tokenizer as a local folder (peft loads it again with "
            f"AutoTokenizer.from_pretrained(tokenizer_name_or_path)); got {path!r}. Save it with "
            "tokenizer.save_pretrained(folder) and pass the folder."
        )
    return str(Path(path).resolve())


def _check_init_text_fits(model, folder: str, init_text: str) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(init_text)["input_ids"]
    vocab = model.get_input_embeddings().num_embeddings
    if not ids or max(ids) >= vocab:
        raise ValueError(
            f"The tokenizer in {folder} turns the prompt-tuning init text into ids {ids[:10]}..., outside the "
            f"model's vocabulary of {vocab}: use the tokenizer the model was trained with."
        )


def adapter_config(model, method: str, task_type=None, **options) -> PeftConfig:
    """The peft config of `method` ("lora", "prompt", "ptuning", "prefix") with its options."""
    builders = {"lora": lora_config, "prompt": prompt_tuning_config, "ptuning": ptuning_config,
                "prefix": prefix_tuning_config}
    if method not in builders:
        raise ValueError(f"Unknown adapter method {method!r}; use one of {', '.join(ADAPTER_METHODS)}.")
    return builders[method](model, task_type, **options)


# ---------------------------------------------------------------------------------------------
# Wrapping, counting, saving


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) tensors count once."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def describe_trainable(model) -> str:
    trainable, total = trainable_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"


def apply_adapter(model, args, task_type=None, tokenizer=None):
    """Wrap `model` in the adapter that `args` (from `add_adapter_arguments`) asks for.

    Returns the model unchanged when `args.adapter` is unset (full fine-tuning). Prints the
    trainable parameter count. `tokenizer` (a folder or a tokenizer loaded from one) is needed
    only for `--prompt-init-text`.
    """
    check_adapter_arguments(args)
    method = getattr(args, "adapter", None)
    if method is None:
        return model
    if method == "lora":
        options = dict(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=args.lora_targets)
    elif method == "prompt":
        options = dict(num_virtual_tokens=args.num_virtual_tokens, init_text=args.prompt_init_text,
                       tokenizer=tokenizer)
    else:
        options = dict(num_virtual_tokens=args.num_virtual_tokens)
    peft_model = get_peft_model(model, adapter_config(model, method, task_type, **options))
    print(f"adapter {method}: {describe_trainable(peft_model)}", flush=True)
    return peft_model


def save_adapter_or_merged(model, out, tokenizer=None, merge: bool = False, generation_config=None) -> Path:
    """Write the fine-tuning result to `out` atomically.

    - a plain model (full fine-tuning): a complete checkpoint;
    - a PeftModel: the adapter (`adapter_config.json`, `adapter_model.safetensors` with the
      task head), loadable with `PeftModel.from_pretrained` or `AutoPeftModelFor*`;
    - a LoRA PeftModel with `merge=True`: the merged, self-contained full checkpoint (this
      merges `model` in place).
    The tokenizer, when given, is saved next to either.
    """
    if not isinstance(model, PeftModel):
        if merge:
            raise ValueError("merge=True needs a LoRA PeftModel; this model has no adapter to merge.")
        return save_checkpoint(model, out, tokenizer=tokenizer, generation_config=generation_config)
    if merge:
        if model.active_peft_config.is_prompt_learning:
            raise ValueError(
                f"A {model.active_peft_config.peft_type.value} adapter cannot be merged into the weights; "
                "save the adapter (merge=False)."
            )
        return save_checkpoint(model.merge_and_unload(), out, tokenizer=tokenizer,
                               generation_config=generation_config)
    for config in model.peft_config.values():
        base = config.base_model_name_or_path
        if base and Path(base).is_dir():  # so AutoPeftModel finds the base model from any working folder
            config.base_model_name_or_path = str(Path(base).resolve())
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        save_head_labels(model, tmp)
        if tokenizer is not None:
            from .tokenization import save_tokenizer

            save_tokenizer(tokenizer, tmp, model.config)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
    hint = _head_loading_hint(model, out)
    if hint:
        print(hint, flush=True)
    return Path(out)


def save_head_labels(model, folder) -> None:
    """Write `labels.json` (id2label, label2id, problem_type) beside a classification adapter, so
    that `hf-ltg export --merge` gives the merged checkpoint its labels (an adapter folder holds no
    config.json)."""
    if not isinstance(model, PeftModel) or model.active_peft_config.task_type not in (TaskType.SEQ_CLS,
                                                                                      TaskType.TOKEN_CLS):
        return
    config = model.get_base_model().config
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    labels = {"id2label": {str(i): id2label[i] for i in sorted(id2label)},
              "label2id": {v: i for i, v in sorted(id2label.items())},
              "problem_type": getattr(config, "problem_type", None)}
    (Path(folder) / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n")


def _head_loading_hint(model, out) -> str | None:
    """How to load a classification adapter: its base checkpoint does not know the labels.

    (An adapter folder must not hold a config.json: transformers would then take it for a
    complete model and look for the base weights there.)
    """
    config = model.get_base_model().config
    task_type = model.active_peft_config.task_type
    if task_type not in _HEADED_TASKS or not getattr(config, "id2label", None):
        return None
    auto_class = {TaskType.SEQ_CLS: "AutoPeftModelForSequenceClassification",
                  TaskType.TOKEN_CLS: "AutoPeftModelForTokenClassification",
                  TaskType.QUESTION_ANS: "AutoPeftModelForQuestionAnswering"}[task_type]
    labels = {int(k): v for k, v in config.id2label.items()}
    return (f"the base model's checkpoint does not know the labels; load the adapter with "
            f"{auto_class}.from_pretrained({str(out)!r}, num_labels={len(labels)}, id2label={labels}, "
            f"label2id={ {v: k for k, v in labels.items()} }, pad_token_id={config.pad_token_id})")
