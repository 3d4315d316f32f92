"""The CPU decoding paths: one bf16 row through ATen's matrix-vector product (oneDNN off for the
call), attention over the filled part of a static cache, and one 16-bit query row attending in
fp32. Each computes what a float64 reference written here computes, falls back when its probe says
no, and keeps the greedy tokens of the model without a cache (also with oneDNN and ATen at AVX2)."""

import json
import os
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from gpt_utils import randomize_
from helpers import REPO
from transformers.cache_utils import DynamicCache, StaticCache

from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.gpt import kernels_ltg_gpt as kernels
from hf_ltg.gpt import modeling_ltg_gpt as modeling
from hf_ltg.gpt.kernels_ltg_gpt import attention_in_fp32
from hf_ltg.gpt.modeling_ltg_gpt import CACHE_FIELD, filled_part

BF16 = torch.bfloat16
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# the probes the one-row path needs, forced to "yes" (so the dispatch is tested on every CPU)
ONE_ROW_PROBED = {("native_16bit_matmul", BF16): True, ("aten_one_row", BF16): True}
needs_mkldnn_switch = pytest.mark.skipif(
    kernels._SET_ONEDNN_ENABLED is None or kernels._GET_ONEDNN_ENABLED is None,
    reason="this torch build cannot switch oneDNN off per call",
)
needs_onednn_bf16 = pytest.mark.skipif(
    kernels._ONEDNN_LINEAR is None or not kernels.native_16bit_matmul(BF16),
    reason="this CPU has no native bf16 products (oneDNN's bf16 linear fails its probe)",
)


def random_model(dtype=torch.float32, seed=0, attention="sdpa"):
    torch.manual_seed(seed)
    config = LtgGptConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=96, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                          embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)
    model = randomize_(LtgGptForCausalLM(config), seed=seed, std=0.3).eval().to(dtype)
    model.set_attn_implementation(attention)
    return model


def bf16_layer(inputs=64, outputs=48):
    torch.manual_seed(0)
    return torch.nn.Linear(inputs, outputs).to(BF16)


def float64_linear(layer, x):
    return x.double() @ layer.weight.double().T + layer.bias.double()


def assert_bf16_close(got, want):
    """Within bf16 rounding of the output plus the rounding of a few hundred bf16 products."""
    assert got.dtype == BF16 and got.shape == want.shape
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double(), want.double(), atol=1e-2 * scale, rtol=1e-2)


@pytest.fixture
def one_row_calls(monkeypatch):
    """The calls that reach `_aten_one_row_linear`, which still computes."""
    calls = []
    real = kernels._aten_one_row_linear

    def spy(x, weight, bias):
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(kernels, "_aten_one_row_linear", spy)
    return calls


@pytest.fixture
def mkldnn_setting():
    """Sets oneDNN's process-wide switch for a test and puts the previous value back."""
    before = torch._C._get_mkldnn_enabled()
    yield torch._C._set_mkldnn_enabled
    torch._C._set_mkldnn_enabled(before)


# ----------------------------------------------------------------------------------------------
# 1. one bf16 row through ATen's matrix-vector product
# ----------------------------------------------------------------------------------------------


@needs_mkldnn_switch
@needs_onednn_bf16
def test_probe_takes_the_one_row_path_where_bf16_products_are_native(monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})
    assert kernels.aten_one_row_linear_works(BF16)
    assert not kernels.aten_one_row_linear_works(torch.float32)
    assert not kernels.aten_one_row_linear_works(torch.float16)


@needs_mkldnn_switch
@needs_onednn_bf16
@pytest.mark.parametrize("shape", [(64,), (1, 64), (1, 1, 64)])
def test_one_bf16_row_matches_float64_and_the_onednn_product(shape, one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})
    assert kernels.aten_one_row_linear_works(BF16)  # probed afresh, through the (spied) product
    one_row_calls.clear()
    layer = bf16_layer()
    x = torch.randn(shape).to(BF16)
    with torch.no_grad():
        got = kernels.linear(layer, x)
        onednn = kernels._ONEDNN_LINEAR(x.reshape(1, -1), layer.weight, layer.bias, "none", [], "").reshape(got.shape)
    assert one_row_calls == [shape]
    assert_bf16_close(got, float64_linear(layer, x))
    # both round one fp32 sum to bf16: a bf16 step or two apart at most
    torch.testing.assert_close(got.float(), onednn.float(), atol=2e-2 * onednn.abs().max().item(), rtol=1e-2)


@needs_mkldnn_switch
def test_the_one_row_path_serves_one_bf16_row_without_gradients(one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    layer = bf16_layer()
    x = torch.randn(1, 1, 64).to(BF16)
    with torch.no_grad():
        got = kernels.linear(layer, x)
    assert one_row_calls == [(1, 1, 64)]
    assert_bf16_close(got, float64_linear(layer, x))


@needs_mkldnn_switch
@pytest.mark.parametrize("case", ["two rows", "fp32", "weight needs gradients", "input needs gradients"])
def test_the_one_row_path_is_not_taken_for(case, one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    layer = bf16_layer()
    x = torch.randn(1, 2 if case == "two rows" else 1, 64).to(BF16)
    if case == "fp32":
        layer, x = layer.float(), x.float()
    if case == "input needs gradients":
        layer.requires_grad_(False)
        x.requires_grad_()
    with torch.set_grad_enabled(case.endswith("gradients")):
        got = kernels.linear(layer, x)
    assert not one_row_calls
    if case == "fp32":
        torch.testing.assert_close(got.double(), float64_linear(layer, x), atol=1e-5, rtol=1e-5)
    else:
        assert_bf16_close(got.detach(), float64_linear(layer, x.detach()))


def test_the_one_row_path_skips_fp16_rows(one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {**ONE_ROW_PROBED, ("native_16bit_matmul", torch.float16): True,
                                             ("onednn_linear", torch.float16): False})
    layer = torch.nn.Linear(64, 48).half()
    x = torch.randn(1, 64).half()
    with torch.no_grad():
        got = kernels.linear(layer, x)
    assert not one_row_calls
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias))


@needs_mkldnn_switch
@pytest.mark.skipif(kernels._ONEDNN_PACK is None, reason="this torch build has no oneDNN weight reordering")
def test_packed_weights_keep_the_onednn_product(one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    layer = bf16_layer()
    x = torch.randn(1, 1, 64).to(BF16)
    kernels.pack_cpu_weights(layer)
    try:
        with torch.no_grad():
            got = kernels.linear(layer, x)
    finally:
        kernels.pack_cpu_weights(layer, enabled=False)
    assert not one_row_calls
    assert_bf16_close(got, float64_linear(layer, x))


@needs_mkldnn_switch
@pytest.mark.parametrize("before", [True, False])
def test_the_onednn_switch_is_put_back(before, mkldnn_setting, monkeypatch):
    seen = []

    def recording_linear(*args):
        seen.append(torch._C._get_mkldnn_enabled())
        return F.linear(*args)

    monkeypatch.setattr(kernels, "F", types.SimpleNamespace(linear=recording_linear))
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    mkldnn_setting(before)
    layer = bf16_layer()
    x = torch.randn(1, 64).to(BF16)
    with torch.no_grad():
        got = kernels.linear(layer, x)
    assert seen == [False]  # off during the product
    assert torch.backends.mkldnn.enabled is before and torch._C._get_mkldnn_enabled() is before
    assert_bf16_close(got, float64_linear(layer, x))


@needs_mkldnn_switch
@pytest.mark.parametrize("before", [True, False])
def test_the_onednn_switch_is_put_back_when_the_product_fails(before, mkldnn_setting, monkeypatch):
    failures = []

    def failing_once(*args):
        if not failures:
            failures.append(torch._C._get_mkldnn_enabled())
            raise RuntimeError("a kernel that fails")
        return F.linear(*args)

    monkeypatch.setattr(kernels, "F", types.SimpleNamespace(linear=failing_once))
    mkldnn_setting(before)
    layer = bf16_layer()
    x = torch.randn(1, 64).to(BF16)
    with pytest.raises(RuntimeError, match="a kernel that fails"):
        kernels._aten_one_row_linear(x, layer.weight, layer.bias)
    assert failures == [False]
    assert torch.backends.mkldnn.enabled is before and torch._C._get_mkldnn_enabled() is before
    # through the layer: the error falls back to the plain op, the switch is still put back
    failures.clear()
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    with torch.no_grad():
        got = kernels.linear(layer, x)
    assert failures == [False]
    assert torch.backends.mkldnn.enabled is before and torch._C._get_mkldnn_enabled() is before
    assert_bf16_close(got, float64_linear(layer, x))


def test_a_failing_one_row_product_switches_off_that_path_only(monkeypatch):
    def failing(*args):
        raise RuntimeError("a kernel that fails")

    monkeypatch.setattr(kernels, "_aten_one_row_linear", failing)
    monkeypatch.setattr(kernels, "_PROBED", dict(ONE_ROW_PROBED))
    onednn = kernels.onednn_linear_works(BF16)  # this machine's own verdict (False where oneDNN lacks bf16)
    layer = bf16_layer()
    x = torch.randn(1, 64).to(BF16)
    with torch.no_grad():
        assert_bf16_close(kernels.linear(layer, x), float64_linear(layer, x))
    assert kernels._PROBED[("aten_one_row", BF16)] is False
    assert kernels._PROBED[("onednn_linear", BF16)] is onednn  # oneDNN's bf16 linear did not fail: left as it was


@needs_mkldnn_switch
def test_a_one_row_product_that_computes_wrong_numbers_fails_its_probe(monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", BF16): True})
    monkeypatch.setattr(kernels, "_aten_one_row_linear", lambda x, w, b: torch.zeros(*x.shape[:-1], w.shape[0]))
    assert not kernels.aten_one_row_linear_works(BF16)
    layer = bf16_layer()
    x = torch.randn(1, 1, 64).to(BF16)
    with torch.no_grad():
        assert_bf16_close(kernels.linear(layer, x), float64_linear(layer, x))


@pytest.mark.parametrize("probed", [
    {("aten_one_row", BF16): False},  # the probe said no
    {("native_16bit_matmul", BF16): False},  # a CPU that emulates bf16 products (AVX2-only)
])
def test_without_the_one_row_path_one_row_is_still_right(probed, one_row_calls, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", dict(probed))
    if ("native_16bit_matmul", BF16) in probed:
        assert not kernels.aten_one_row_linear_works(BF16)
    layer = bf16_layer()
    x = torch.randn(1, 1, 64).to(BF16)
    with torch.no_grad():
        got = kernels.linear(layer, x)
    assert not one_row_calls
    assert_bf16_close(got, float64_linear(layer, x))


AVX2_GENERATE = """
import json, torch
from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.gpt import kernels_ltg_gpt as kernels
torch.set_num_threads(1)
torch.manual_seed(0)
config = LtgGptConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=96, bos_token_id=0, eos_token_id=0, pad_token_id=0)
model = LtgGptForCausalLM(config).eval()
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.3)
model = model.to(torch.bfloat16)
ids = torch.randint(1, 120, (1, 7))
greedy = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
with torch.no_grad():
    cached = model.generate(ids, **greedy)
    uncached = model.generate(ids, use_cache=False, **greedy)
print(json.dumps({
    "capability": torch.backends.cpu.get_cpu_capability(),
    "cached": cached.tolist(), "uncached": uncached.tolist(),
    "native": kernels.native_16bit_matmul(torch.bfloat16),
    "one_row": kernels.aten_one_row_linear_works(torch.bfloat16),
    "probed": {f"{name} {dtype}": verdict for (name, dtype), verdict in kernels._PROBED.items()},
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["AVX2 only", "machine default"])
def test_bf16_greedy_decoding_with_cache_matches_no_cache_under_each_isa_setting(setting):
    """oneDNN and ATen read the ISA caps once, at import: a fresh process for each setting."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ONLY}
    if setting == "AVX2 only":
        env.update(AVX2_ONLY)
    result = subprocess.run([sys.executable, "-c", AVX2_GENERATE], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(setting, report["capability"], report["probed"])
    assert report["cached"] == report["uncached"]
    assert len(report["cached"][0]) == 15
    # the one-row path needs native bf16 products, which oneDNN capped at AVX2 lacks
    assert report["one_row"] == (report["native"] and kernels._SET_ONEDNN_ENABLED is not None)
    if setting == "AVX2 only":
        assert report["capability"] == "AVX2"
        assert report["native"] is False and report["one_row"] is False


# ----------------------------------------------------------------------------------------------
# 2. attention over the filled part of a static cache
# ----------------------------------------------------------------------------------------------


def cache_tensors(length=10, batch=2, heads=4, head_dim=8):
    torch.manual_seed(0)
    key, value = (torch.randn(batch, heads, length, head_dim) for _ in range(2))
    return key, value


@pytest.mark.parametrize("mask_kind", ["float", "bool"])
@pytest.mark.parametrize("position", [[3], [0, 1, 2, 3, 4]])
def test_filled_part_cuts_keys_values_and_mask_after_the_newest_position(position, mask_kind):
    key, value = cache_tensors()
    mask = torch.randn(2, 1, len(position), 10)
    mask = mask > 0 if mask_kind == "bool" else mask
    got_key, got_value, got_mask = filled_part(key, value, mask, torch.tensor(position))
    filled = position[-1] + 1
    assert got_key.shape[2] == got_value.shape[2] == got_mask.shape[-1] == filled
    assert torch.equal(got_key, key[:, :, :filled]) and torch.equal(got_value, value[:, :, :filled])
    assert torch.equal(got_mask, mask[..., :filled])
    # views of the cache, not copies
    assert got_key.data_ptr() == key.data_ptr() and got_value.data_ptr() == value.data_ptr()


def test_filled_part_without_a_mask_cuts_keys_and_values():
    key, value = cache_tensors()
    got_key, got_value, got_mask = filled_part(key, value, None, torch.tensor([5]))
    assert got_mask is None and got_key.shape[2] == got_value.shape[2] == 6


def test_filled_part_leaves_a_dynamic_length_cache_alone():
    key, value = cache_tensors(length=6)
    mask = torch.zeros(2, 1, 1, 6)
    got = filled_part(key, value, mask, torch.tensor([5]))
    assert got[0] is key and got[1] is value and got[2] is mask


@pytest.mark.parametrize("mask", [torch.zeros(2, 1, 1, 7), {"block mask": None}, object()],
                         ids=["wrong last dimension", "mapping", "other object"])
def test_filled_part_leaves_everything_alone_when_it_cannot_cut_the_mask(mask):
    key, value = cache_tensors()
    got = filled_part(key, value, mask, torch.tensor([3]))
    assert got[0] is key and got[1] is value and got[2] is mask


def left_padded_pair():
    ids = torch.randint(1, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :5], mask[1, :5] = 0, 0
    return ids, mask


def greedy(model, **kwargs):
    ids, mask = left_padded_pair()
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=14, min_new_tokens=14, do_sample=False,
                              pad_token_id=0, return_dict_in_generate=True, output_scores=True, output_logits=True,
                              **kwargs)


def recorded_cuts(monkeypatch):
    """(cache length, kept length) of every `filled_part` call."""
    cuts = []
    real = modeling.filled_part

    def recording(key, value, mask, position):
        out = real(key, value, mask, position)
        cuts.append((key.shape[2], out[0].shape[2]))
        return out

    monkeypatch.setattr(modeling, "filled_part", recording)
    return cuts


def static_cache_keys(cache):
    layers = getattr(cache, "layers", None)
    return [layer.keys for layer in layers] if layers is not None else cache.key_cache


def test_static_cache_keeps_the_tokens_and_logits_of_the_dynamic_cache_and_of_no_cache():
    model = random_model()
    static = greedy(model, cache_implementation="static")
    dynamic = greedy(model, cache_implementation="dynamic")
    uncached = greedy(model, use_cache=False)
    assert isinstance(getattr(static, CACHE_FIELD, None) or static.past_key_values, StaticCache)
    assert isinstance(getattr(dynamic, CACHE_FIELD, None) or dynamic.past_key_values, DynamicCache)
    assert static.sequences.tolist() == dynamic.sequences.tolist() == uncached.sequences.tolist()
    assert min(len(set(row[9:].tolist())) for row in static.sequences) >= 3  # varied tokens
    for field in ("scores", "logits"):
        for got, cached, want in zip(getattr(static, field), getattr(dynamic, field), getattr(uncached, field)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(cached, want, atol=1e-5, rtol=1e-5)


def test_a_forward_given_cache_positions_attends_over_the_filled_part_only(monkeypatch):
    """Prompt and two steps into a 40-long static cache, left padding: the logits of no cache, and
    the cache itself keeps its full length (the cut is a view)."""
    cuts = recorded_cuts(monkeypatch)
    model = random_model()
    ids, mask = left_padded_pair()
    cache = StaticCache(config=model.config, max_cache_len=40)
    steps = [ids, torch.tensor([[5], [7]]), torch.tensor([[11], [13]])]
    with torch.no_grad():
        for step, new in enumerate(steps):
            seen = torch.cat(steps[:step + 1], dim=1)
            full_mask = torch.cat([mask, torch.ones(2, seen.shape[1] - 9, dtype=mask.dtype)], dim=1)
            start = seen.shape[1] - new.shape[1]
            got = model(new, attention_mask=full_mask, past_key_values=cache,
                        cache_position=torch.arange(start, seen.shape[1])).logits
            want = model(seen, attention_mask=full_mask, use_cache=False).logits[:, start:]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert cuts == [(40, kept) for kept in (9, 10, 11) for _ in range(model.config.num_hidden_layers)]
    assert all(k.shape[2] == 40 for k in static_cache_keys(cache))


def test_static_cache_generation_attends_over_the_filled_part_only(monkeypatch):
    cuts = recorded_cuts(monkeypatch)
    model = random_model()
    static = greedy(model, cache_implementation="static", max_length=80)
    cache = getattr(static, CACHE_FIELD, None) or static.past_key_values
    length = static_cache_keys(cache)[0].shape[2]
    assert length >= 22 and all(k.shape[2] == length for k in static_cache_keys(cache))  # full length kept
    kept = [kept for total, kept in cuts if total == length]
    assert kept[:: model.config.num_hidden_layers] == list(range(9, 23))


# ----------------------------------------------------------------------------------------------
# 3. one 16-bit query row attends in fp32
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rows, want", [
    (torch.bfloat16, 1, True), (torch.float16, 1, True), (torch.bfloat16, 2, False), (torch.float32, 1, False),
])
def test_attention_in_fp32_for_one_16bit_row(dtype, rows, want, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", BF16): True})
    assert attention_in_fp32(torch.randn(1, 4, rows, 8).to(dtype)) is want


def test_attention_in_fp32_not_for_a_query_that_needs_gradients():
    query = torch.randn(1, 4, 1, 8).to(BF16).requires_grad_()
    assert not attention_in_fp32(query)
    with torch.no_grad():
        assert attention_in_fp32(query)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the size check before the tracing check
def test_attention_in_fp32_not_while_tracing_nor_off_cpu(monkeypatch):
    seen = []

    def step(query):
        seen.append(attention_in_fp32(query))
        return query * 2

    query = torch.randn(1, 4, 1, 8).to(BF16)
    torch.jit.trace(step, (query,), check_trace=False)
    assert seen == [False]
    monkeypatch.setattr(kernels, "plain_ops_required", lambda: True)
    assert not attention_in_fp32(query)
    monkeypatch.undo()
    assert not attention_in_fp32(torch.empty(1, 4, 1, 8, dtype=BF16, device="meta"))


@pytest.mark.parametrize("native, want", [(False, True), (True, False)])
def test_attention_in_fp32_under_autocast_where_16bit_products_are_emulated(native, want, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", BF16): native})
    with torch.autocast("cpu", dtype=BF16):
        assert attention_in_fp32(torch.randn(1, 4, 6, 8)) is want


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_greedy_tokens_with_cache_match_no_cache(seed):
    model = random_model(BF16, seed=seed)
    ids = torch.randint(1, 120, (1, 7), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=10, min_new_tokens=10, do_sample=False, pad_token_id=0,
                                  use_cache=False)
    assert cached.tolist() == uncached.tolist()


def float64_attention(query, key, value, heads):
    """softmax(q k^T / sqrt(d)) v over all keys (one query row after every key: no mask needed)."""
    def split(x):  # (B, T, H) -> (B, nh, T, hs)
        return x.double().view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(query), split(key), split(value)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], -1), weights


def decode_step_record(model, layer, output_attentions=False, **kwargs):
    """qkv outputs and out_proj inputs of one layer over a prompt of 7 and two new tokens."""
    seen = {"qkv": [], "attended": []}
    attention = model.transformer.h[layer].attn
    hooks = [
        attention.qkv_proj.register_forward_hook(lambda m, args, out: seen["qkv"].append(out)),
        attention.out_proj.register_forward_pre_hook(lambda m, args: seen["attended"].append(args[0])),
    ]
    ids = torch.randint(1, 120, (1, 7), generator=torch.Generator().manual_seed(3))
    try:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0,
                                 return_dict_in_generate=True, output_attentions=output_attentions, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, out


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_bf16_decode_step_attention_matches_float64(attention, cache, monkeypatch):
    calls = []
    real = modeling.attention_in_fp32
    monkeypatch.setattr(modeling, "attention_in_fp32", lambda q: calls.append(real(q)) or calls[-1])
    model = random_model(BF16, attention=attention)
    seen, _ = decode_step_record(model, layer=1, cache_implementation=cache)
    assert [x.shape[1] for x in seen["qkv"]] == [7, 1, 1]
    width = model.config.hidden_size
    keys = torch.cat([x[..., width:2 * width] for x in seen["qkv"]], dim=1)
    values = torch.cat([x[..., 2 * width:] for x in seen["qkv"]], dim=1)
    for step, position in ((1, 8), (2, 9)):
        query = seen["qkv"][step][..., :width]
        want, _ = float64_attention(query, keys[:, :position], values[:, :position], model.config.num_attention_heads)
        got = seen["attended"][step]
        assert got.dtype == BF16
        # fp32 attention rounded once to bf16: within a bf16 step of the float64 result
        torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=2**-8)
    assert calls[:model.config.num_hidden_layers] == [False] * model.config.num_hidden_layers  # prompt
    assert all(calls[model.config.num_hidden_layers:])  # decode steps


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_bf16_decode_step_attention_weights_are_bf16_rows_summing_to_one(attention, cache):
    model = random_model(BF16, attention=attention)
    seen, out = decode_step_record(model, layer=0, output_attentions=True, cache_implementation=cache)
    width = model.config.hidden_size
    keys = torch.cat([x[..., width:2 * width] for x in seen["qkv"]], dim=1)
    for step, position in ((1, 8), (2, 9)):
        weights = out.attentions[step][0]  # layer 0: (B, nh, 1, S)
        assert weights.dtype == BF16
        assert weights.shape[:3] == (1, model.config.num_attention_heads, 1) and weights.shape[3] >= position
        torch.testing.assert_close(weights.float().sum(-1), torch.ones(1, 4, 1), atol=1e-2, rtol=0)
        query = seen["qkv"][step][..., :width]
        values = keys  # the weights do not depend on the values
        _, want = float64_attention(query, keys[:, :position], values[:, :position], model.config.num_attention_heads)
        torch.testing.assert_close(weights[..., :position].double(), want, atol=2e-3, rtol=2**-7)
        assert not weights[..., position:].any()  # a static cache's unwritten tail, where not cut off
