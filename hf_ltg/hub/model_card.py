"""The model card (`README.md`) of an exported folder: YAML metadata for the Hub, then the
architecture, the training figures, how to use it and the remote-code security note."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .sources import TrainingRecord

# Head class suffix -> (Hub pipeline tag, Auto class); the base model serves feature extraction.
HEADS = [
    ("ForCausalLM", "text-generation", "AutoModelForCausalLM"),
    ("LMHeadModel", "text-generation", "AutoModelForCausalLM"),  # GPT2LMHeadModel
    ("ForMaskedLM", "fill-mask", "AutoModelForMaskedLM"),
    ("ForSequenceClassification", "text-classification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "token-classification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "question-answering", "AutoModelForQuestionAnswering"),
    ("ForMultipleChoice", None, "AutoModelForMultipleChoice"),
    ("Model", "feature-extraction", "AutoModel"),
]

FAMILY_NAMES = {
    "ltg_gpt": "LTG GPT, a GPT-2 style decoder",
    "ltg_bert": "LTG-BERT, the Language Technology Group's masked language model",
    "gpt2": "GPT-2 (stock transformers classes, no remote code)",
    "ltg_norbert4": "NorBERT4, LTG's GPT-BERT of 2025: one set of weights, masked and causal mode",
}

# The sizes shown in the architecture table, under their transformers names.
SIZE_FIELDS = [
    ("hidden_size", "hidden size"),
    ("num_hidden_layers", "layers"),
    ("num_attention_heads", "attention heads"),
    ("intermediate_size", "feed-forward size"),
    ("vocab_size", "vocabulary"),
    ("max_position_embeddings", "positions"),
    ("n_embd", "hidden size"),
    ("n_layer", "layers"),
    ("n_head", "attention heads"),
    ("n_inner", "feed-forward size"),
    ("n_positions", "positions"),
]


@dataclass
class CardInfo:
    """Everything the card says besides the config and the training record."""

    name: str
    architecture: str  # the saved head class, e.g. LtgGptForCausalLM
    num_parameters: int
    tokenizer_size: int | None = None
    remote_code: bool = True
    license: str | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    language: list[str] = field(default_factory=list)
    source_note: str = ""
    figure: str | None = None  # a training-curve image in the folder


def head_of(architecture: str) -> tuple[str | None, str]:
    """(pipeline tag, Auto class) of a model class name."""
    for suffix, tag, auto in HEADS:
        if architecture.endswith(suffix):
            return tag, auto
    return None, "AutoModel"


def render_model_card(config, info: CardInfo, training: TrainingRecord) -> str:
    tag, auto = head_of(info.architecture)
    metadata = {"library_name": "transformers"}
    if tag:
        metadata["pipeline_tag"] = tag
    tags = ["hf_ltg", config.model_type]
    if info.remote_code:
        tags.append("custom_code")
    metadata["tags"] = tags
    if info.license:
        metadata["license"] = info.license
    if info.language:
        metadata["language"] = info.language
    if info.base_model:
        metadata["base_model"] = info.base_model
    if info.datasets:
        metadata["datasets"] = info.datasets
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip()

    sections = [
        f"---\n{front}\n---",
        f"# {info.name}",
        _summary(config, info, tag),
        _architecture(config, info),
        _training(training, info),
        _usage(config, info, tag, auto),
        _masked_and_causal_modes(config),
        _norbert4_modes_and_windows(config, info.architecture),
    ]
    if info.remote_code:
        sections.append(_security_note(config))
    sections.append("This folder was written by `hf-ltg export` and checked by `hf-ltg doctor`.")
    return "\n\n".join(s for s in sections if s) + "\n"


def _summary(config, info: CardInfo, tag: str | None) -> str:
    family = FAMILY_NAMES.get(config.model_type, config.model_type)
    use = f", for {tag}." if tag else "."
    if _two_modes(config) and tag == "fill-mask":
        if _hybrid(config):
            family = "LTG-BERT trained GPT-BERT style, on masked and causal next-token prediction"
        use = ", for fill-mask and, loaded as `AutoModelForCausalLM`, text generation."
    lines = [f"A `{info.architecture}` ({family}) with {format_count(info.num_parameters)} parameters" + use]
    if info.base_model:
        lines.append(f"Fine-tuned from `{info.base_model}`.")
    if info.datasets:
        lines.append("Trained on " + ", ".join(f"`{d}`" for d in info.datasets) + ".")
    if info.source_note:
        lines.append(f"Exported from {info.source_note}.")
    return " ".join(lines)


def _architecture(config, info: CardInfo) -> str:
    rows = [("model type", f"`{config.model_type}`"), ("class", f"`{info.architecture}`"),
            ("parameters", f"{info.num_parameters:,} ({format_count(info.num_parameters)})")]
    shown = set()
    for name, label in SIZE_FIELDS:
        value = getattr(config, name, None)
        if value is not None and label not in shown:
            rows.append((label, f"{value:,}" if isinstance(value, int) else str(value)))
            shown.add(label)
    for name in ("activation", "activation_function", "hidden_act"):
        if getattr(config, name, None):
            rows.append(("activation", f"`{getattr(config, name)}`"))
            break
    if getattr(config, "tie_word_embeddings", None) is not None:
        rows.append(("tied input/output embeddings", "yes" if config.tie_word_embeddings else "no"))
    quantization = getattr(config, "quantization", None)
    if isinstance(quantization, dict):
        rows.append(("weights", f"int8, scheme `{quantization.get('scheme')}` ({len(quantization.get('modules', []))} "
                                "linear layers; the rest floating point)"))
    if info.tokenizer_size is not None:
        rows.append(("tokenizer size", f"{info.tokenizer_size:,}"))
    labels = getattr(config, "id2label", None) or {}
    if labels and not info.architecture.endswith(("ForCausalLM", "ForMaskedLM", "Model")):
        rows.append(("labels", ", ".join(f"{k}: `{v}`" for k, v in sorted(labels.items(), key=lambda kv: int(kv[0])))))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"## Architecture\n\n| | |\n|---|---|\n{table}"


def _training(record: TrainingRecord, info: CardInfo) -> str:
    if record.empty:
        return "## Training\n\nNo training record (trainer_state.json) was found next to the checkpoint."
    rows = []
    if record.global_step is not None:
        steps = f"{record.global_step:,}"
        if record.max_steps and record.max_steps != record.global_step:
            steps += f" of {record.max_steps:,} planned"
        rows.append(("optimizer steps", steps))
    if record.epoch is not None:
        rows.append(("epochs", f"{record.epoch:.2f}"))
    if record.tokens_seen:
        rows.append(("tokens seen", f"{int(record.tokens_seen):,}"))
    if record.runtime_s is not None:
        rows.append(("training time", f"{record.runtime_s:.0f} s"))
    for label, value in (("final training loss", record.train_loss), ("final validation loss", record.eval_loss),
                         ("validation perplexity", record.eval_perplexity),
                         ("validation accuracy", record.eval_accuracy), ("validation macro F1", record.eval_macro_f1)):
        if value is not None:
            rows.append((label, f"{value:.4f}"))
    text = "## Training\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    evaluations = record.evaluations[-10:]
    if len(evaluations) > 1:
        columns = [c for c in ("step", "eval_loss", "eval_perplexity", "eval_accuracy", "eval_macro_f1")
                   if any(c in row for row in evaluations)]
        names = {"step": "step", "eval_loss": "validation loss", "eval_perplexity": "validation perplexity",
                 "eval_accuracy": "validation accuracy", "eval_macro_f1": "validation macro F1"}
        header = "| " + " | ".join(names[c] for c in columns) + " |"
        lines = [header, "|" + "---|" * len(columns)]
        for row in evaluations:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        text += "\n\nValidation during training (last evaluations):\n\n" + "\n".join(lines)
    if info.figure:
        text += f"\n\n![training curves]({info.figure})"
    return text


def _usage(config, info: CardInfo, tag: str | None, auto: str) -> str:
    trust = ", trust_remote_code=True" if info.remote_code else ""
    repo = f"USER/{info.name}"
    examples = {
        "text-generation": ('generator = pipeline("text-generation", model=repo{t})\n'
                            'print(generator("Once upon a time", max_new_tokens=40)[0]["generated_text"])'),
        "fill-mask": ('unmasker = pipeline("fill-mask", model=repo{t})\n'
                      'print(unmasker(f"The capital of Norway is {{unmasker.tokenizer.mask_token}}."))'),
        "text-classification": 'classifier = pipeline("text-classification", model=repo{t})\nprint(classifier("A sentence to classify."))',
        "token-classification": 'tagger = pipeline("token-classification", model=repo{t})\nprint(tagger("A sentence to tag."))',
        "feature-extraction": 'extractor = pipeline("feature-extraction", model=repo{t})\nfeatures = extractor("A sentence.")',
    }
    lines = [f"from transformers import {auto}, AutoTokenizer" + (", pipeline" if tag in examples else ""), "",
             f'repo = "{repo}"  # or the path of this folder',
             f"tokenizer = AutoTokenizer.from_pretrained(repo{trust})",
             f"model = {auto}.from_pretrained(repo{trust})"]
    if tag in examples:
        lines += ["", examples[tag].format(t=trust)]
    if tag == "fill-mask" and _two_modes(config):
        lines += ["", "# causal mode, the same weights: the pipeline loads them with AutoModelForCausalLM",
                  examples["text-generation"].format(t=trust)]
    elif auto == "AutoModelForQuestionAnswering":  # transformers 5 has no question-answering pipeline
        lines += ["", 'inputs = tokenizer("Where did the cat sit?", "The cat sat on the mat.", return_tensors="pt")',
                  "outputs = model(**inputs)",
                  "start, end = outputs.start_logits.argmax(), outputs.end_logits.argmax()",
                  'print(tokenizer.decode(inputs["input_ids"][0, start : end + 1]))']
    text = "## Usage\n\n```python\n" + "\n".join(lines) + "\n```"
    if info.remote_code:
        heads = ", ".join(f"`{k}`" for k in sorted(getattr(config, "auto_map", {}) or {}) if k != "AutoConfig")
        text += (f"\n\nThe folder carries its own code, so `hf_ltg` need not be installed; every Auto class of its "
                 f"`auto_map` loads it ({heads}). A new head starts from random weights: fine-tune it first.")
    else:
        text += "\n\nThis is a stock transformers model: it needs no remote code and no `hf_ltg`."
    return text


def _hybrid(config) -> bool:
    """Trained on masked and causal next-token prediction (GPT-BERT, `hf-ltg pretrain --objective hybrid`)."""
    return bool(getattr(config, "masked_next_token", False))


def _two_modes(config) -> bool:
    """One set of weights with a masked and a causal mode: GPT-BERT-style LTG-BERT, and NorBERT4."""
    return _hybrid(config) or config.model_type == "ltg_norbert4"


def _norbert4_modes_and_windows(config, architecture: str) -> str:
    """NorBERT4: how its masked-LM logits line up with the tokens (language-model heads), and where its
    sliding windows end (every head)."""
    if config.model_type != "ltg_norbert4":
        return ""
    edge = getattr(config, "window_edge", "flash")
    local, global_, ratio = config.local_window_length, config.global_window_length, config.local_global_ratio
    if ratio == 1:
        layers, shortest = f"Every layer is global (window w = {global_:,} tokens).", global_
    else:
        layers = (f"Every {_ordinal(ratio)} layer is global (window w = {global_:,} tokens), the others local "
                  f"(w = {local:,}).")
        shortest = min(local, global_)
    rule = "|i - j| <= w - 1" if edge == "flash" else "|i - j| <= w"
    modes = "" if not architecture.endswith(("ForMaskedLM", "ForCausalLM")) else (
        "## Masked and causal mode\n\n"
        "NorBERT4 was trained on masked and causal next-token prediction: in both modes hidden state i predicts "
        "token i + 1. Load the weights with `AutoModelForMaskedLM` for masked mode (bidirectional) or with "
        "`AutoModelForCausalLM` for causal mode (`generate` with a KV cache, left-padded batches, a static cache). "
        "The masked LM shifts its logits back by one position, as the release does: the logits at position i are "
        "the prediction for token i (made from position i - 1), so a `[MASK]` and its prediction sit at the same "
        "index, `labels` follow BERT's convention and the fill-mask pipeline works as usual. Position 0 (the "
        "`<s>`/`[CLS]` token every input starts with) is never predicted: its logits are a column of 1.0 at "
        "`bos_token_id` and 0 elsewhere, and the loss skips it.\n\n"
    )
    return modes + (
        f"## Sliding windows\n\n{layers} "
        "Masked mode sees keys within the window on both sides, causal mode only the earlier ones. The release's "
        "own code has two attention paths that disagree by one position at the window edge: its flash-attn path, "
        "which trained the model, keeps |i - j| <= w - 1; its padded path (used where flash-attn is missing) keeps "
        "|i - j| <= w. This folder follows the flash path by default (`window_edge: \"flash\"` in config.json); "
        "`window_edge: \"padded\"` (e.g. `from_pretrained(repo, window_edge=\"padded\")`) gives the padded "
        f"path. This folder's setting: `{edge}`, {rule}. The two differ only on inputs longer than "
        f"{shortest:,} tokens."
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _masked_and_causal_modes(config) -> str:
    """GPT-BERT-style weights (`masked_next_token`) serve both modes; the Auto class picks one."""
    if not _hybrid(config):
        return ""
    return (
        "## Masked and causal mode\n\n"
        "These weights were trained GPT-BERT style, on masked and causal next-token prediction: load them with "
        "`AutoModelForMaskedLM` for masked mode (bidirectional; the fill-mask pipeline works as usual) or with "
        "`AutoModelForCausalLM` for causal mode (a causal mask; `generate` with a KV cache). The config's "
        "`masked_next_token: true` makes the masked-LM head predict a masked token from the position before it, "
        "as in training, so the logits at a mask position are the prediction for that token and `labels` follow "
        "the usual BERT convention. Inputs start with the `[CLS]`/`<s>` token (position 0 gets zero logits)."
    )


def _security_note(config) -> str:
    files = sorted({ref.split(".")[0] + ".py" for ref in (getattr(config, "auto_map", {}) or {}).values()
                    if isinstance(ref, str)})
    return (
        "## Security: remote code\n\n"
        f"`trust_remote_code=True` runs the Python files of this repository ({', '.join(f'`{f}`' for f in files)}) "
        "on your machine with your permissions. They import only `torch` and `transformers`; read them before "
        "you run them, and pin the commit you reviewed with `revision=\"<commit sha>\"` in every "
        "`from_pretrained` call, so that a later push cannot change the code you run. The weights are "
        "safetensors (no pickles)."
    )


def format_count(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
