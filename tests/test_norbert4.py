"""NorBERT4 (`hf_ltg.norbert4`): the release's computation, generation with a KV cache, attention backends,
pipelines, the saved folder without hf_ltg, peft, gradient checkpointing, conversion and bad input.

The reference forward below is written from the release's Hub code (`modeling_gptbert.py`, ltgoslo/NorBERT
`norbert4/huggingface_prototype/`) on a state dict in the release's layout: its padded path (positions
0..T-1, window |i - j| <= w, padding masked as keys) and its flash-attn path (each sequence alone on its
real tokens, window |i - j| <= w - 1).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import gelu_new

from hf_ltg.conversion.norbert4 import norbert4_model
from hf_ltg.norbert4 import (
    Norbert4Config,
    Norbert4ForCausalLM,
    Norbert4ForMaskedLM,
    Norbert4ForMultipleChoice,
    Norbert4ForQuestionAnswering,
    Norbert4ForSequenceClassification,
    Norbert4ForTokenClassification,
)
from tests.helpers import run_without_hf_ltg

# A release config.json, tiny: windows of 3 (local) and 6 (global) tokens so that 10-token inputs cross them.
RELEASE_CONFIG = {
    "architectures": ["GptBertForMaskedLM"],
    "auto_map": {"AutoConfig": "configuration_gptbert.GptBertConfig",
                 "AutoModelForMaskedLM": "modeling_gptbert.GptBertForMaskedLM"},
    "unk_token_id": 1, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0, "mask_token_id": 4,
    "hidden_size": 32, "intermediate_size": 40, "max_sequence_length": 64, "num_layers": 4,
    "attention_dropout": 0.0, "hidden_dropout": 0.0, "embedding_dropout": 0.1, "classifier_dropout": 0.2,
    "layer_norm_eps": 1e-07, "query_key_head_size": 8, "value_head_size": 12, "num_attention_heads": 2,
    "rope_theta": 160000, "vocab_size": 40, "local_global_ratio": 2, "global_window_length": 6,
    "local_window_length": 3, "deterministic_flash_attn": False, "use_cache": False,
}
NUM_LABELS = 3


def release_state_dict(config=RELEASE_CONFIG, seed=0, head="lm", num_labels=NUM_LABELS):
    """Random weights under the release's names, every scale and mixing weight away from its start."""
    g = torch.Generator().manual_seed(seed)
    D, inner, H = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    dqk, dv, V = config["query_key_head_size"], config["value_head_size"], config["vocab_size"]

    def r(*shape, std=None):
        return torch.randn(*shape, generator=g) * (std if std is not None else 0.5 * shape[-1] ** -0.5)

    t = {"embedding.word_embedding.weight": r(V, D, std=0.3), "embedding.word_scale": r(D, std=0.1)}
    for i in range(config["num_layers"]):
        p = f"encoder.layers.{i}"
        t.update({
            f"{p}.attention.qk_proj.weights.0": r(H * dqk, D), f"{p}.attention.qk_proj.weights.1": r(H * dqk, D),
            f"{p}.attention.qk_proj.scale": r(D, std=0.1),
            f"{p}.attention.v_proj.weight": r(H * dv, D), f"{p}.attention.v_proj.scale": r(D, std=0.1),
            f"{p}.attention.out_proj.weight": r(D, H * dv), f"{p}.attention.out_proj.scale": r(H * dv, std=0.1),
            f"{p}.attention.q_scale": r(H, dqk, std=0.2), f"{p}.attention.k_scale": r(H, dqk, std=0.2),
            f"{p}.mlp.up_proj.weights.0": r(inner, D), f"{p}.mlp.up_proj.weights.1": r(inner, D),
            f"{p}.mlp.up_proj.scale": r(D, std=0.1),
            f"{p}.mlp.down_proj.weight": r(D, inner), f"{p}.mlp.down_proj.scale": r(inner, std=0.1),
            f"{p}.lambdas_v": torch.tensor([1.0, 0.0]) + r(2, std=0.3),
            f"{p}.lambdas_qk": torch.tensor([1.0, 0.0]) + r(2, std=0.3),
            f"{p}.lambdas_mlp": torch.tensor([1.0, 1.0, 0.0]) + r(3, std=0.3),
            f"{p}.lambdas_out": torch.tensor([1.0, 1.0, 1.0, 0.0]) + r(4, std=0.3),
        })
    t["classifier.projection.weight"] = r(D, D)
    t["classifier.projection.scale"] = r(D, std=0.1)
    if head == "lm":
        t["classifier.emb2vocab.weight"] = t["embedding.word_embedding.weight"]  # tied in training
        t["classifier.emb2vocab.bias"] = r(V, std=0.5)
        t["classifier.emb2vocab.scale"] = r(D, std=0.1)
    else:
        t["classifier.output_projection.weight"] = r(num_labels, D)
        t["classifier.output_projection.bias"] = r(num_labels, std=0.5)
        t["classifier.output_projection.scale"] = r(D, std=0.1)
    return t


# ------------------------------------------------------------------ the release's computation

def _casted_in(x, t, name, weights=("weight",), bias=False):
    """The release's CastedLinearIn / MultiCastedLinearOrthoIn: F.linear(x, W * (scale + 1), b)."""
    weight = torch.cat([t[f"{name}.{w}"] for w in weights], dim=0) * (t[f"{name}.scale"] + 1.0).unsqueeze(0)
    return F.linear(x, weight, t[f"{name}.bias"] if bias else None)


def _norm(x, eps):
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).type_as(x)


def release_encode(t, c, ids, mask, causal, reach):
    """The release's encoder (padded path; `reach` = w for it, w - 1 for the flash path), last layer [B, T, D]."""
    eps, H = c["layer_norm_eps"], c["num_attention_heads"]
    dqk, dv = c["query_key_head_size"], c["value_head_size"]
    B, T = ids.shape
    emb = F.layer_norm(F.embedding(ids, t["embedding.word_embedding.weight"]), (c["hidden_size"],), eps=eps)
    emb = emb * (t["embedding.word_scale"] + 1.0)
    padding = mask.bool()[:, None, None, :]
    h = emb
    for i in range(c["num_layers"]):
        p = f"encoder.layers.{i}"
        lam = {k: t[f"{p}.lambdas_{k}"] / (t[f"{p}.lambdas_{k}"].abs().mean() + 1e-6) for k in ("v", "qk", "mlp", "out")}
        v_in = _norm(lam["v"][0] * h + lam["v"][1] * emb, eps)
        qk_in = _norm(lam["qk"][0] * h + lam["qk"][1] * emb, eps)
        q, k = _casted_in(qk_in, t, f"{p}.attention.qk_proj", ("weights.0", "weights.1")).tensor_split([H * dqk], -1)
        v = _casted_in(v_in, t, f"{p}.attention.v_proj")
        q = q.reshape(B, T, H, dqk).transpose(1, 2)
        k = k.reshape(B, T, H, dqk).transpose(1, 2)
        v = v.reshape(B, T, H, dv).transpose(1, 2)
        q = (t[f"{p}.attention.q_scale"] + 1.0).unsqueeze(1).unsqueeze(0) * _norm(q, eps)
        k = (t[f"{p}.attention.k_scale"] + 1.0).unsqueeze(1).unsqueeze(0) * _norm(k, eps)
        is_global = (i + 1) % c["local_global_ratio"] == 0
        theta = 160_000 if is_global else 10_000
        inv_freq = 1.0 / (theta ** (torch.arange(0, dqk, 2, dtype=torch.float32) / dqk))
        angles = torch.einsum("n, d -> nd", torch.arange(c["max_sequence_length"], dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)[None, None, :T]
        q, k = ((x * angles.cos() + torch.cat([-x[..., dqk // 2:], x[..., :dqk // 2]], -1) * angles.sin()) for x in (q, k))
        window = c["global_window_length"] if is_global else c["local_window_length"]
        w = window if reach == "padded" else window - 1
        ones = torch.ones(T, T, dtype=torch.bool)
        window_mask = ones.tril().triu(diagonal=-w) if causal else ones.tril(diagonal=w).triu(diagonal=-w)
        keep = padding & window_mask[None, None]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dqk)
        probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1).masked_fill(~keep, 0.0)
        a = (probs @ v).transpose(1, 2).flatten(2, 3)
        a = _casted_in(_norm(a, eps), t, f"{p}.attention.out_proj")
        m = _norm(lam["mlp"][0] * a + lam["mlp"][1] * h + lam["mlp"][2] * emb, eps)
        x, gate = _casted_in(m, t, f"{p}.mlp.up_proj", ("weights.0", "weights.1")).chunk(2, dim=-1)
        f = _casted_in(_norm(x * gelu_new(gate), eps), t, f"{p}.mlp.down_proj")
        h = lam["out"][0] * f + lam["out"][1] * a + lam["out"][2] * h + lam["out"][3] * emb
    return h


def release_hidden(t, c, ids, mask, causal, path):
    """The last layer [B, T, D]: "padded" runs the batch as the padded path does; "flash" runs each row
    alone on its real tokens (the flash-attn path), zeros at padding."""
    if path == "padded":
        return release_encode(t, c, ids, mask, causal, "padded")
    out = torch.zeros(*ids.shape, c["hidden_size"])
    for row in range(ids.size(0)):
        real = mask[row].bool()
        out[row, real] = release_encode(t, c, ids[row, real][None], torch.ones(1, int(real.sum())), causal, "flash")[0]
    return out


def release_lm_logits(t, c, h, mode):
    """The release's LMClassifier, soft cap and (masked mode) the shift with a BOS column."""
    eps = c["layer_norm_eps"]
    x = gelu_new(_casted_in(_norm(h, eps), t, "classifier.projection"))
    x = _casted_in(_norm(x, eps), t, "classifier.emb2vocab", bias=True)
    x = 30 * torch.sigmoid(x / 7.5)
    if mode == "causal":
        return x
    bos = torch.zeros(x.size(0), 1, c["vocab_size"])
    bos[:, :, c["bos_token_id"]] = 1.0
    return torch.cat([bos, x[:, :-1]], dim=1)


def release_classifier(t, c, h):
    eps = c["layer_norm_eps"]
    x = gelu_new(_casted_in(_norm(h, eps), t, "classifier.projection"))
    return _casted_in(_norm(x, eps), t, "classifier.output_projection", bias=True)


# ------------------------------------------------------------------ fixtures

def padded_batch(side="right", seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, RELEASE_CONFIG["vocab_size"], (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    if side == "right":
        mask[1, 7:] = 0
        mask[2, 4:] = 0
    else:
        mask[1, :3] = 0
        mask[2, :6] = 0
    ids[mask == 0] = 0
    return ids, mask


def converted(model_class=Norbert4ForMaskedLM, head="lm", seed=0, **config_overrides):
    release = dict(RELEASE_CONFIG, **config_overrides)
    num_labels = 2 if model_class is Norbert4ForQuestionAnswering else NUM_LABELS
    tensors = release_state_dict(release, seed, head, num_labels)
    if head != "lm":
        release["architectures"] = [model_class.__name__.replace("Norbert4", "GptBert")]
        release["num_labels"] = num_labels
    model, _ = norbert4_model(tensors, release)
    if type(model) is not model_class:
        model = _rehead(model, model_class)
    return model.eval(), tensors, release


def _rehead(model, model_class):
    other = model_class(model.config)
    other.load_state_dict(model.state_dict(), strict=False)
    if hasattr(other, "lm_head"):
        other.tie_weights()
    return other


def _close(ours, theirs, keep, atol=1e-5):
    difference = (ours[keep] - theirs[keep]).abs().max().item()
    assert difference <= atol, difference


# ------------------------------------------------------------------ the release's computation, exactly

@pytest.mark.parametrize("mode", ["masked", "causal"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_lm_logits_match_the_release_flash_path_at_real_tokens(mode, side):
    model, tensors, release = converted()
    model_class = Norbert4ForCausalLM if mode == "causal" else Norbert4ForMaskedLM
    model = _rehead(model, model_class).eval()
    ids, mask = padded_batch(side)
    keep = mask.bool()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        h = release_hidden(tensors, release, ids, mask, mode == "causal", "flash")
        theirs = torch.zeros_like(ours)
        for row in range(3):
            theirs[row, keep[row]] = release_lm_logits(tensors, release, h[row:row + 1, keep[row]], mode)[0]
    if mode == "masked":
        # The release shifts its padded output by one index, so the first real token after left padding
        # holds the prediction made at a padding position (its BOS column only at index 0): not compared.
        keep = keep & torch.cat([torch.ones(3, 1, dtype=torch.bool), keep[:, :-1]], dim=1)
    _close(ours, theirs, keep)


@pytest.mark.parametrize("mode", ["masked", "causal"])
def test_lm_logits_match_the_release_padded_path_with_window_edge_padded(mode):
    model, tensors, release = converted()
    model.config.window_edge = "padded"
    model = _rehead(model, Norbert4ForCausalLM if mode == "causal" else Norbert4ForMaskedLM).eval()
    ids, mask = padded_batch("right")
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = release_lm_logits(tensors, release, release_hidden(tensors, release, ids, mask, mode == "causal",
                                                                    "padded"), mode)
    keep = mask.bool()
    _close(ours, theirs, keep)
    # and the two window edges differ on these inputs (10 tokens cross the 3- and 6-token windows)
    model.config.window_edge = "flash"
    with torch.no_grad():
        assert (model(ids, attention_mask=mask).logits - ours)[keep].abs().max() > 1e-3


def test_masked_lm_loss_is_the_release_loss():
    model, tensors, release = converted()
    ids, _ = padded_batch()
    labels = torch.full_like(ids, -100)
    labels[:, [0, 3, 6]] = ids[:, [0, 3, 6]]  # position 0 is never scored
    with torch.no_grad():
        loss = model(ids, labels=labels).loss
        prediction = release_lm_logits(tensors, release, release_encode(tensors, release, ids, torch.ones_like(ids),
                                                                        False, "flash"), "causal")
        expected = F.cross_entropy(prediction[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert abs(loss.item() - expected.item()) <= 1e-5


@pytest.mark.parametrize("model_class", [Norbert4ForSequenceClassification, Norbert4ForTokenClassification,
                                         Norbert4ForQuestionAnswering])
@pytest.mark.parametrize("mode", ["masked", "causal"])
def test_classification_heads_match_the_release(model_class, mode):
    model, tensors, release = converted(model_class, head="classifier")
    model.config.is_decoder = mode == "causal"
    ids, mask = padded_batch("right")
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
        h = release_hidden(tensors, release, ids, mask, mode == "causal", "flash")
    keep = mask.bool()
    if model_class is Norbert4ForSequenceClassification:
        _close(out.logits, release_classifier(tensors, release, h[:, 0]), slice(None))
    elif model_class is Norbert4ForTokenClassification:
        _close(out.logits, release_classifier(tensors, release, h), keep)
    else:
        start, end = release_classifier(tensors, release, h).split(1, dim=-1)
        _close(out.start_logits, start.squeeze(-1), keep)
        _close(out.end_logits, end.squeeze(-1), keep)


def test_multiple_choice_scores_each_choice_from_its_first_token():
    release = dict(RELEASE_CONFIG, architectures=["GptBertForSequenceClassification"], num_labels=1)
    tensors = release_state_dict(release, head="classifier", num_labels=1)
    sequence_model, _ = norbert4_model(tensors, release)
    model = _rehead(sequence_model, Norbert4ForMultipleChoice).eval()
    ids, mask = padded_batch("right")
    with torch.no_grad():
        logits = model(ids.view(1, 3, 10), attention_mask=mask.view(1, 3, 10)).logits
        h = release_hidden(tensors, release, ids, mask, False, "flash")
    _close(logits, release_classifier(tensors, release, h[:, 0]).view(1, 3), slice(None))


def test_hidden_states_and_base_model_match_the_release():
    model, tensors, release = converted()
    ids, mask = padded_batch("right")
    base = model.norbert4
    with torch.no_grad():
        out = base(ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == release["num_layers"] + 1
    _close(out.last_hidden_state, release_hidden(tensors, release, ids, mask, False, "flash"), mask.bool())


# ------------------------------------------------------------------ generation

def _recompute(model, ids, mask, steps):
    for _ in range(steps):
        with torch.no_grad():
            next_token = model(ids, attention_mask=mask).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_token)], dim=1)
    return ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generate_with_cache_matches_without_cache_and_recomputation_on_a_left_padded_batch(dtype):
    model, _, _ = converted()
    model = _rehead(model, Norbert4ForCausalLM).to(dtype).eval()
    ids, mask = padded_batch("left")
    ids, mask = ids[:, :7], mask[:, :7]  # prompts of 7, 4 and 1 real tokens
    settings = dict(max_new_tokens=9, do_sample=False, pad_token_id=0, eos_token_id=None)
    cached = model.generate(ids, attention_mask=mask, **settings)
    uncached = model.generate(ids, attention_mask=mask, use_cache=False, **settings)
    static = model.generate(ids, attention_mask=mask, cache_implementation="static", **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, static)
    assert torch.equal(cached, _recompute(model, ids, mask, 9))
    if dtype != torch.float32:
        return  # alone is another batch shape: bf16 rounds otherwise, and near-ties may flip
    # each prompt generates what it generates alone
    for row in range(3):
        real = mask[row].bool()
        alone = model.generate(ids[row, real][None], **settings)
        assert torch.equal(alone[0], cached[row, (~real).sum():])


def test_16bit_models_compute_in_the_dtype_asked_for():
    model, _, _ = converted()
    for dtype in (torch.bfloat16, torch.float16):
        ids, mask = padded_batch()
        with torch.no_grad():
            logits = _rehead(model, Norbert4ForMaskedLM).to(dtype).eval()(ids, attention_mask=mask).logits
        assert logits.dtype == dtype


# ------------------------------------------------------------------ attention backends

@pytest.mark.parametrize("mode", ["masked", "causal"])
def test_eager_and_sdpa_agree(mode):
    model, _, _ = converted()
    model = _rehead(model, Norbert4ForCausalLM if mode == "causal" else Norbert4ForMaskedLM).eval()
    ids, mask = padded_batch("left")
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.config._attn_implementation = implementation
        with torch.no_grad():
            outputs[implementation] = model(ids, attention_mask=mask).logits
    assert not outputs["sdpa"].isnan().any()
    _close(outputs["eager"], outputs["sdpa"], mask.bool())


def _flash_like_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                          is_causal=None, **kwargs):
    """What transformers' flash-attention function computes, in plain torch: a 2-D padding mask, the
    window as `sliding_window` (|i - j| <= sliding_window - 1), causal from `is_causal`, queries aligned
    to the end of the keys (a KV cache)."""
    query_length, key_length = query.size(2), key.size(2)
    query_index = torch.arange(key_length - query_length, key_length)[:, None]
    distance = query_index - torch.arange(key_length)[None]
    keep = distance.abs() <= sliding_window - 1
    if is_causal:
        keep = keep & (distance >= 0)
    keep = keep[None, None]
    if attention_mask is not None:
        assert attention_mask.dim() == 2
        keep = keep & attention_mask.bool()[:, None, None, :]
    keep = keep | ~keep.any(-1, keepdim=True)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=keep, scale=scaling)
    return output.transpose(1, 2), None


@pytest.mark.parametrize("edge", ["flash", "padded"])
@pytest.mark.parametrize("mode", ["masked", "causal"])
def test_a_flash_attention_function_gets_the_padding_mask_and_the_window(edge, mode):
    from transformers import AttentionInterface

    AttentionInterface.register("flash_norbert4_test", _flash_like_attention)
    model, _, _ = converted()
    model.config.window_edge = edge
    model = _rehead(model, Norbert4ForCausalLM if mode == "causal" else Norbert4ForMaskedLM).eval()
    ids, mask = padded_batch("right" if mode == "masked" else "left")
    outputs = {}
    for implementation in ("sdpa", "flash_norbert4_test"):
        model.config._attn_implementation = implementation
        with torch.no_grad():
            outputs[implementation] = model(ids, attention_mask=mask).logits
        if mode == "causal":
            outputs[implementation + " generate"] = model.generate(
                ids[:, :7], attention_mask=mask[:, :7], max_new_tokens=6, do_sample=False, pad_token_id=0)
    _close(outputs["sdpa"], outputs["flash_norbert4_test"], mask.bool())
    with torch.no_grad():  # attention weights come from the eager path, with its own masks
        outputs["weights"] = model(ids, attention_mask=mask, output_attentions=True).logits
    _close(outputs["sdpa"], outputs["weights"], mask.bool())
    if mode == "causal":
        assert torch.equal(outputs["sdpa generate"], outputs["flash_norbert4_test generate"])


def test_attentions_are_returned_and_respect_the_windows():
    model, _, _ = converted()
    ids, mask = padded_batch("right")
    with torch.no_grad():
        attentions = model.norbert4(ids, attention_mask=mask, output_attentions=True).attentions
    local = attentions[0][0, 0]  # layer 0 is local: window 3, flash edge: |i - j| <= 2
    distance = (torch.arange(10)[:, None] - torch.arange(10)[None]).abs()
    assert local[distance > 2].abs().max() == 0 and local[distance <= 2].min() > 0


# ------------------------------------------------------------------ training

def test_gradient_checkpointing_gives_the_same_gradients():
    model, _, _ = converted()
    model.config.embedding_dropout = 0.0
    model = _rehead(model, Norbert4ForMaskedLM)
    ids, mask = padded_batch()
    grads = []
    for checkpointing in (False, True):
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.zero_grad()
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_lora_defaults_target_the_attention_projections_and_merge_exactly():
    from peft import LoraConfig, get_peft_model

    model, _, _ = converted()
    model = _rehead(model, Norbert4ForCausalLM).eval()
    ids, mask = padded_batch()
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False))
    targeted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targeted == {"qk_proj", "v_proj"}
    with torch.no_grad():
        adapted = peft_model(input_ids=ids, attention_mask=mask).logits
        merged = peft_model.merge_and_unload()(ids, attention_mask=mask).logits
    _close(adapted, merged, mask.bool(), atol=1e-4)


# ------------------------------------------------------------------ config, errors

def test_the_release_config_loads_as_it_is():
    config = Norbert4Config(**{k: v for k, v in RELEASE_CONFIG.items() if k not in ("architectures", "auto_map")})
    assert (config.num_hidden_layers, config.num_layers) == (4, 4)
    assert (config.max_position_embeddings, config.max_sequence_length) == (64, 64)
    assert Norbert4Config.from_dict(config.to_dict()).num_hidden_layers == 4


def test_an_unknown_window_edge_is_a_one_line_error():
    with pytest.raises(ValueError, match="window_edge 'both' is unknown") as error:
        Norbert4Config(window_edge="both")
    assert "\n" not in str(error.value)


# A stand-in for the release's Hub code (which cannot ship here): its classes run this test's reference forward.
STAND_IN_CONFIGURATION = """
from transformers import PretrainedConfig


class GptBertConfig(PretrainedConfig):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)
"""
STAND_IN_MODELING = """
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_gptbert import GptBertConfig


class GptBertForMaskedLM(PreTrainedModel):
    config_class = GptBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.tensors = {}

    def load_state_dict(self, tensors, strict=True):
        self.tensors = dict(tensors)

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        from tests.test_norbert4 import RELEASE_CONFIG, release_hidden, release_lm_logits

        hidden = release_hidden(self.tensors, RELEASE_CONFIG, input_ids, attention_mask, False, "padded")
        return MaskedLMOutput(logits=release_lm_logits(self.tensors, RELEASE_CONFIG, hidden, "masked"))
"""


def test_convert_verify_compares_with_the_release_code_in_the_folder(release_folder, tmp_path, capsys):
    import shutil

    from hf_ltg.cli import main

    shutil.copytree(release_folder, tmp_path / "release")
    (tmp_path / "release" / "configuration_gptbert.py").write_text(STAND_IN_CONFIGURATION)
    (tmp_path / "release" / "modeling_gptbert.py").write_text(STAND_IN_MODELING)
    assert main(["convert", "--verify", str(tmp_path / "release"), str(tmp_path / "out")]) == 0
    assert "--verify: largest logit difference" in capsys.readouterr().out
    assert "largest logit difference from the release's own code" in (tmp_path / "out" / "README.md").read_text()


def test_a_release_folder_without_weights_is_a_one_line_error(release_folder, tmp_path, capsys):
    import shutil

    from hf_ltg.cli import main

    shutil.copytree(release_folder, tmp_path / "release")
    (tmp_path / "release" / "model.safetensors").unlink()
    assert main(["convert", str(tmp_path / "release"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "holds no weights" in error, error
    assert not (tmp_path / "out").exists()


def test_a_release_with_missing_weights_is_a_one_line_error():
    tensors = release_state_dict()
    del tensors["encoder.layers.2.mlp.down_proj.scale"]
    with pytest.raises(ValueError, match="encoder.layers.2.mlp.down_proj.scale") as error:
        norbert4_model(tensors, RELEASE_CONFIG)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------ pipelines, the folder without hf_ltg

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a of to in is was and cat dog mat sat on fox jumps over lazy quick brown who what "
         "model token language next from before it paris").split()


def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + ["##s", "."])}
    assert len(vocab) <= RELEASE_CONFIG["vocab_size"]
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", vocab["[CLS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", cls_token="[CLS]", bos_token="[CLS]",
                                   eos_token="[SEP]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                   model_max_length=64)


@pytest.fixture(scope="module")
def release_folder(tmp_path_factory):
    """A tiny folder in the release's layout: config.json, model.safetensors, tokenizer."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("norbert4") / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(RELEASE_CONFIG))
    tensors = release_state_dict()
    tensors.pop("classifier.emb2vocab.weight")  # safetensors keeps one of two shared tensors
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    wordpiece_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(release_folder, tmp_path_factory):
    from hf_ltg.conversion.norbert4 import write_folder
    from hf_ltg.conversion.releases import read_tokenizer, read_weights

    tensors, _ = read_weights(release_folder)
    model, _ = norbert4_model(tensors, RELEASE_CONFIG)
    out = tmp_path_factory.mktemp("norbert4") / "converted"
    model.config.id2label = {0: "NEG", 1: "POS", 2: "NEU"}
    model.config.label2id = {"NEG": 0, "POS": 1, "NEU": 2}
    write_folder(model, read_tokenizer(release_folder), out, "release", "test")
    return out


def test_the_convert_command_converts_a_release_folder(release_folder, tmp_path, capsys):
    from hf_ltg.cli import main

    assert main(["convert", str(release_folder), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = Norbert4ForMaskedLM.from_pretrained(tmp_path / "out").eval()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == \
        "modeling_norbert4.Norbert4ForCausalLM"
    assert model.lm_head.decoder.weight.data_ptr() == model.norbert4.embedding.word_embedding.weight.data_ptr()
    tensors = release_state_dict()
    ids, mask = padded_batch("right")
    with torch.no_grad():
        theirs = release_lm_logits(tensors, RELEASE_CONFIG,
                                   release_hidden(tensors, RELEASE_CONFIG, ids, mask, False, "flash"), "masked")
        _close(model(ids, attention_mask=mask).logits, theirs, mask.bool())


def test_stock_pipelines(checkpoint):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        pipeline,
    )

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    fill = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(checkpoint), tokenizer=tokenizer)
    assert len(fill("the cat [MASK] on the mat", top_k=3)) == 3
    generate = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(checkpoint), tokenizer=tokenizer)
    texts = generate(["the cat", "a quick brown fox jumps"], max_new_tokens=4, do_sample=False)
    assert len(texts) == 2
    classify = pipeline("text-classification", model=AutoModelForSequenceClassification.from_pretrained(checkpoint),
                        tokenizer=tokenizer)
    assert classify("the dog sat")[0]["label"] in {"NEG", "POS", "NEU"}
    tag = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(checkpoint),
                   tokenizer=tokenizer)
    assert tag("the dog sat") and all(item["entity"] in {"NEG", "POS", "NEU"} for item in tag("the dog sat"))
    features = pipeline("feature-extraction", model=AutoModel.from_pretrained(checkpoint), tokenizer=tokenizer)
    assert torch.tensor(features("the dog sat")).shape[-1] == RELEASE_CONFIG["hidden_size"]


def test_the_saved_folder_loads_through_every_auto_class_without_hf_ltg(checkpoint, tmp_path):
    ids, mask = padded_batch("right")
    with torch.no_grad():
        expected = Norbert4ForMaskedLM.from_pretrained(checkpoint).eval()(ids, attention_mask=mask).logits
        expected_generation = Norbert4ForCausalLM.from_pretrained(checkpoint).eval().generate(
            ids[:, :4], attention_mask=mask[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    out = run_without_hf_ltg(
        f"""
        import torch
        from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
            AutoModelForMultipleChoice, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
            AutoModelForTokenClassification, AutoTokenizer)
        ids = torch.tensor({ids.tolist()}); mask = torch.tensor({mask.tolist()})
        for auto in (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForMultipleChoice,
                     AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoModelForTokenClassification):
            model = auto.from_pretrained(CKPT, trust_remote_code=True)
            assert type(model).__name__.startswith("Norbert4"), type(model)
        assert AutoConfig.from_pretrained(CKPT, trust_remote_code=True).model_type == "ltg_norbert4"
        AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
        with torch.no_grad():
            logits = AutoModelForMaskedLM.from_pretrained(CKPT, trust_remote_code=True).eval()(ids, attention_mask=mask).logits
            generated = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True).eval().generate(
                ids[:, :4], attention_mask=mask[:, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
        torch.save({{"logits": logits, "generated": generated}}, "result.pt")
        print("ok")
        """,
        checkpoint, tmp_path,
    )
    assert "ok" in out
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    _close(result["logits"], expected, mask.bool())
    assert torch.equal(result["generated"], expected_generation)
