"""The contract of vLLM's Transformers backend, checked on CPU without vLLM.

vLLM (vllm/model_executor/models/transformers/) builds the base model with `AutoModel.from_config`,
sets `config._attn_implementation = "vllm"`, registers its own attention function under that name
and calls the base model as `model(input_ids=[1, tokens], position_ids=[1, tokens], use_cache=False,
return_dict=False, attention_instances={layer_idx: Attention}, **kwargs)`: every request of the
batch packed into one row, no attention mask, positions restarting per request. Its attention
function reads `module.layer_idx` and the `attention_instances` kwarg and returns
[tokens, heads * head_dim]. It needs `_supports_attention_backend = True` (else its automatic
Transformers backend passes the model over), `is_causal` on the attention modules (False means an
encoder), and reads the tensor-parallel plan from `config.base_model_tp_plan`.

Here a registered attention function records every call and then runs transformers' SDPA; the
models must pass a kwarg given to the top-level forward down to it in every layer and give
SDPA's logits.
"""

import re

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_ltg.gpt import (
    LtgGptConfig,
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
    LtgGptModel,
)
from hf_ltg.ltg_bert import (
    LtgBertConfig,
    LtgBertForCausalLM,
    LtgBertForMaskedLM,
    LtgBertForMultipleChoice,
    LtgBertForQuestionAnswering,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
)

try:  # transformers >= 5: a mask function per attention name (else a custom name gets no mask)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
except ImportError:  # pragma: no cover
    AttentionMaskInterface = None

VOCAB = 120
LAYERS = 3
CALLS = []  # (layer_idx, kwargs) of every call of the "recording" attention function


def recording_attention(module, query, key, value, attention_mask, **kwargs):
    CALLS.append((module.layer_idx, dict(kwargs)))
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def packed_attention(module, query, key, value, attention_mask, scaling=None, attention_instances=None, **kwargs):
    """What vLLM's attention does with a packed row: causal attention inside each request, found
    from `attention_instances` (here: the requests' boundaries), output [tokens, heads * head_dim]."""
    assert attention_mask is None, "vLLM gives the attention no mask"
    bounds = attention_instances[module.layer_idx]
    outputs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True, scale=scaling
        )
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    output = torch.cat(outputs, dim=2)  # [1, H, tokens, hd]
    return output[0].transpose(0, 1).reshape(query.shape[2], -1), None


AttentionInterface.register("recording", recording_attention)
AttentionInterface.register("packed", packed_attention)
if AttentionMaskInterface is not None:
    AttentionMaskInterface.register("recording", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def gpt_config():
    return LtgGptConfig(vocab_size=VOCAB, max_position_embeddings=16, hidden_size=32, num_hidden_layers=LAYERS,
                        num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                        pad_token_id=0, num_labels=3)


def bert_config():
    return LtgBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=64, position_bucket_size=8,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


HEADS = {
    "gpt-causal-lm": (LtgGptForCausalLM, gpt_config),
    "gpt-sequence-classification": (LtgGptForSequenceClassification, gpt_config),
    "gpt-token-classification": (LtgGptForTokenClassification, gpt_config),
    "ltg-bert-masked-lm": (LtgBertForMaskedLM, bert_config),
    "ltg-bert-causal-lm": (LtgBertForCausalLM, bert_config),
    "ltg-bert-sequence-classification": (LtgBertForSequenceClassification, bert_config),
    "ltg-bert-token-classification": (LtgBertForTokenClassification, bert_config),
    "ltg-bert-question-answering": (LtgBertForQuestionAnswering, bert_config),
    "ltg-bert-multiple-choice": (LtgBertForMultipleChoice, bert_config),
}


def padded_batch(cls):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row: GPT's mask and positions must reach the attention function
    if cls is LtgBertForMultipleChoice:
        return ids.view(1, 2, 9), mask.view(1, 2, 9)
    return ids, mask


def main_output(output):
    return output.start_logits if hasattr(output, "start_logits") else output.logits


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_layer_calls_the_registered_attention_with_the_forward_kwargs(head, tmp_path):
    cls, make_config = HEADS[head]
    torch.manual_seed(0)
    cls(make_config()).save_pretrained(tmp_path)
    reference = cls.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    model = cls.from_pretrained(tmp_path, attn_implementation="recording").eval()
    assert model.config._attn_implementation == "recording"
    ids, mask = padded_batch(cls)
    marker = object()

    CALLS.clear()
    with torch.no_grad():
        got = main_output(model(input_ids=ids, attention_mask=mask, vllm_marker=marker))
        want = main_output(reference(input_ids=ids, attention_mask=mask))

    assert sorted(layer for layer, _ in CALLS) == list(range(LAYERS))
    assert all(kwargs.get("vllm_marker") is marker for _, kwargs in CALLS), [sorted(k) for _, k in CALLS]
    if cls.base_model_prefix == "ltg_bert":  # the relative position terms travel with the call
        assert all(kwargs.get("position_bias") is not None for _, kwargs in CALLS)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_gpt_base_model_serves_a_packed_vllm_batch_like_each_request_alone(tmp_path):
    """Two requests (9 and 12 tokens) in one row of 21 > max_position_embeddings = 16, positions
    restarting at the second, no mask, `use_cache=False, return_dict=False`: each request's hidden
    states equal a plain forward of it alone (SDPA)."""
    torch.manual_seed(0)
    LtgGptModel(gpt_config()).save_pretrained(tmp_path)
    reference = LtgGptModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    model = LtgGptModel.from_pretrained(tmp_path, attn_implementation="packed").eval()
    generator = torch.Generator().manual_seed(1)
    requests = [torch.randint(3, VOCAB, (1, n), generator=generator) for n in (9, 12)]
    packed = torch.cat(requests, dim=1)
    positions = torch.cat([torch.arange(r.shape[1]) for r in requests])[None]
    bounds = [0, 9, 21]

    with torch.no_grad():
        hidden = model(input_ids=packed, position_ids=positions, use_cache=False, return_dict=False,
                       attention_instances={layer: bounds for layer in range(LAYERS)})[0]
        alone = [reference(input_ids=r).last_hidden_state for r in requests]

    torch.testing.assert_close(hidden[:, :9], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[:, 9:], alone[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs 17 positions"):  # positions, not the row, must fit
        model(input_ids=packed[:, :17], position_ids=torch.arange(17)[None], use_cache=False,
              attention_instances={layer: [0, 17] for layer in range(LAYERS)})


def test_backend_flags_say_what_vllm_can_serve():
    # GPT: vLLM's automatic Transformers backend takes it. LTG-BERT: its relative position bias is
    # a dense additive term that vLLM's attention drops, so it must be passed over.
    assert LtgGptModel.is_backend_compatible() and LtgGptForCausalLM.is_backend_compatible()
    assert not LtgBertModel.is_backend_compatible()
    gpt = LtgGptForCausalLM(gpt_config())
    assert all(m.is_causal for m in gpt.modules() if type(m).__name__ == "LtgGptAttention")
    bert = LtgBertModel(bert_config())
    assert not any(m.is_causal for m in bert.modules() if type(m).__name__ == "LtgBertAttention")


def test_gpt_tensor_parallel_plan_names_every_linear_of_every_layer():
    """vLLM matches the plan's patterns (`*` = any layer) against the base model's module names and
    replaces each matching nn.Linear; a pattern that matches nothing would leave that layer
    replicated, one that matches a non-Linear would break loading."""
    model = LtgGptModel(gpt_config())
    plan = model.config.base_model_tp_plan
    assert model.supports_tp_plan
    assert set(plan.values()) <= {"colwise", "rowwise", "colwise_rep", "rowwise_rep"}  # styles vLLM knows
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    for pattern in plan:
        matched = {name for name in linears if re.fullmatch(pattern.replace(".", r"\.").replace("*", r"\d+"), name)}
        assert len(matched) == LAYERS, (pattern, sorted(linears))
    assert len(linears) == 4 * LAYERS  # and nothing else in the base model is a Linear
    # the plan is a class attribute of the config: never written into config.json
    assert "base_model_tp_plan" not in model.config.to_dict()
