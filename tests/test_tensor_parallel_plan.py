"""Tensor-parallel plans: a tied LM head has a plan entry of its own (transformers' peer rule).

transformers' common model tests require, for a model with a tensor-parallel plan whose output
head shares the input embedding's weight, that the head be named in the model's plan (GPT-2's
successors and Llama declare `_tp_plan = {"lm_head": "colwise_gather_output"}`): without it,
`from_pretrained(..., tp_plan="auto")` leaves the head's forward a plain `F.linear` on a replicated
input and a sharded weight. This mirrors that check for every head of both families.
"""

import re

import torch

from hf_ltg import LtgBertConfig, LtgGptConfig
from hf_ltg.gpt import AUTO_MODEL_CLASSES as GPT_CLASSES
from hf_ltg.ltg_bert import AUTO_MODEL_CLASSES as BERT_CLASSES


def parallel_styles():
    try:
        from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES
    except ImportError:  # transformers 4.x
        from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES
    return ALL_PARALLEL_STYLES


def full_plan(model) -> dict:
    """The plan transformers applies: the head class's entries and the base model's, prefixed."""
    plan = getattr(model, "tp_plan", None)
    if plan is None:
        plan = dict(getattr(model, "_tp_plan", None) or {})
    return dict(plan)


def plan_names(plan: dict, module_name: str) -> str | None:
    """The style the plan gives `module_name` (entries use `*` for layer numbers)."""
    for pattern, style in plan.items():
        if re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), module_name):
            return style
    return None


TINY = {
    "gpt": (GPT_CLASSES, lambda: LtgGptConfig(vocab_size=64, max_position_embeddings=16, hidden_size=16,
                                               num_hidden_layers=1, num_attention_heads=2)),
    "ltg_bert": (BERT_CLASSES, lambda: LtgBertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=32,
                                                      max_position_embeddings=16, position_bucket_size=8)),
}
def test_tied_head_has_a_tp_plan_entry():
    styles, checked, missing = parallel_styles(), [], []
    for classes, make_config in TINY.values():
        for cls in classes.values():
            config = make_config()
            with torch.device("meta"):
                model = cls(config)
            tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
            if not (model.supports_tp_plan and config.tie_word_embeddings and tied):
                continue  # the rule is for a model with a plan and a tied head
            plan = full_plan(model)
            for target in tied:  # e.g. "lm_head.weight"
                module_name = target.rsplit(".", 1)[0]
                style = plan_names(plan, module_name)
                checked.append(f"{cls.__name__}.{module_name}")
                if style is None or style not in styles:
                    missing.append(f"{cls.__name__}: tied {module_name} -> {style!r} (plan {plan})")
    assert "LtgGptForCausalLM.lm_head" in checked
    assert not missing, missing


def test_gpt_causal_lm_plan_gathers_the_head_output_as_llama_does():
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = GPT_CLASSES["AutoModelForCausalLM"](TINY["gpt"][1]())
    assert plan_names(full_plan(model), "lm_head") == LlamaForCausalLM._tp_plan["lm_head"]
