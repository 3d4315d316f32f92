"""The fast paths of LtgGptForCausalLM compute what the plain paths compute.

Training with labels skips the full logits (chunked cross-entropy); CPU dropout draws 16-bit
random numbers. Both are checked against references written here or transformers' GPT-2.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from gpt_utils import VOCAB, randomize_, tiny_gpt2_config
from torch import nn
from transformers import GPT2LMHeadModel

from hf_ltg.conversion.gpt2 import _strip_prefix, config_from_gpt2, gpt2_to_ltg_state_dict
from hf_ltg.gpt import LtgGptForCausalLM
from hf_ltg.gpt import kernels_ltg_gpt as kernels
from hf_ltg.gpt.kernels_ltg_gpt import ChunkedLinearCrossEntropy, fast_dropout


def pair_without_dropout():
    """transformers' GPT2LMHeadModel and ours with the same weights, dropout off."""
    torch.manual_seed(0)
    reference = randomize_(GPT2LMHeadModel(tiny_gpt2_config()))
    ours = LtgGptForCausalLM(config_from_gpt2(reference.config.to_dict()))
    gpt2 = _strip_prefix(reference.state_dict())
    mapped, _ = gpt2_to_ltg_state_dict(gpt2, reference.config.n_layer)
    ours.load_state_dict(mapped, strict=False)
    return reference, ours


def labels_with_ignored(ids):
    labels = ids.clone()
    labels[0, :4] = -100
    return labels


def test_training_loss_and_gradients_match_transformers_gpt2():
    reference, ours = pair_without_dropout()
    ids = torch.randint(0, VOCAB, (3, 24))
    labels = labels_with_ignored(ids)
    want = reference.train()(ids, labels=labels).loss
    want.backward()
    got = ours.train()(ids, labels=labels)
    got.loss.backward()
    assert got.logits is None
    assert torch.allclose(got.loss, want, atol=1e-5)
    assert torch.allclose(ours.lm_head.weight.grad, reference.lm_head.weight.grad, atol=1e-5)
    assert torch.allclose(ours.transformer.h[0].attn.qkv_proj.weight.grad,
                          reference.transformer.h[0].attn.c_attn.weight.grad.t(), atol=1e-5)


def test_training_loss_divides_by_num_items_in_batch_like_transformers():
    reference, ours = pair_without_dropout()
    ids = torch.randint(0, VOCAB, (2, 16))
    count = torch.tensor(40)
    want = reference.train()(ids, labels=ids, num_items_in_batch=count).loss
    got = ours.train()(ids, labels=ids, num_items_in_batch=count).loss
    assert torch.allclose(got, want, atol=1e-5)


def test_eval_mode_and_a_hooked_head_still_return_logits_with_the_loss():
    _, ours = pair_without_dropout()
    ids = torch.randint(0, VOCAB, (2, 10))
    evaluated = ours.eval()(ids, labels=ids)
    assert evaluated.logits.shape == (2, 10, VOCAB)
    ours.train().lm_head.register_forward_hook(lambda module, args, output: None)
    hooked = ours(ids, labels=ids)
    assert hooked.logits.shape == (2, 10, VOCAB)
    assert torch.allclose(hooked.loss, evaluated.loss, atol=1e-6)


@pytest.mark.parametrize("vocab", [50, 17_000])  # 17,000: under bf16, the weight gradient in three slices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_full_logits_over_several_chunks(dtype, vocab):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(vocab, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (37,))
    targets[::5] = -100
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        want = F.cross_entropy((hidden @ weight.t()).float(), targets)
        divisor = (targets != -100).sum()
        got = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, divisor, 8, True)  # 5 chunks
    want_grads = torch.autograd.grad(want, (hidden, weight))
    got_grads = torch.autograd.grad(got * 3.0, (hidden, weight))  # a non-unit upstream gradient
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, want, atol=tolerance)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.float32
        assert torch.allclose(g, 3.0 * w, atol=tolerance * 3, rtol=tolerance)


@pytest.mark.parametrize("vocab", [50, 17_000])  # 17,000: the weight gradient in three vocabulary slices
def test_chunked_cross_entropy_on_bf16_weights_without_autocast(vocab):
    torch.manual_seed(0)
    hidden = torch.randn(29, 16, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, 16, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, vocab, (29,))
    targets[::4] = -100
    want = F.cross_entropy((hidden @ weight.t()).float(), targets)
    got = ChunkedLinearCrossEntropy.apply(hidden, weight, targets, (targets != -100).sum(), 8, True)  # 4 chunks
    want_grads = torch.autograd.grad(want, (hidden, weight))
    got_grads = torch.autograd.grad(got, (hidden, weight))
    assert torch.allclose(got, want, atol=2e-2)
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.bfloat16
        assert torch.allclose(g.float(), w.float(), atol=2e-2, rtol=2e-2)


def test_fast_dropout_drops_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 3e-3  # about 6 standard deviations
    assert abs(y.mean().item() - 1.0) < 5e-3
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient: the same mask and scale
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x


@pytest.mark.parametrize("padded", [False, True])
def test_generate_with_static_cache_matches_dynamic_cache(padded):
    _, ours = pair_without_dropout()
    ours.eval()
    ids = torch.randint(0, VOCAB - 1, (2, 10))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, attention_mask=mask, pad_token_id=VOCAB - 1)
    dynamic = ours.generate(ids, **settings)
    static = ours.generate(ids, cache_implementation="static", **settings)
    assert torch.equal(static, dynamic)


@pytest.mark.skipif(kernels._ONEDNN_LINEAR is None, reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_onednn_inference_linear_matches_f_linear(dtype, atol):
    torch.manual_seed(0)
    layer = nn.Linear(48, 80).to(dtype)
    for shape in [(1, 48), (3, 1, 48), (2, 7, 48)]:
        x = torch.randn(shape, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias), atol=atol, rtol=0)


def test_onednn_linear_serves_inference_and_fp32_training_only(monkeypatch):
    calls = []

    def spy(x, weight, bias, *args):
        calls.append(tuple(x.shape))
        return x @ weight.t() + (0 if bias is None else bias)

    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", spy)
    # as on a machine whose probes passed (16-bit products native, so bf16 takes F.linear below)
    monkeypatch.setattr(kernels, "_PROBED", {(name, torch.float32): True for name in ("onednn_linear", "onednn_training_linear")}
                        | {("native_16bit_matmul", torch.bfloat16): True, ("onednn_linear", torch.bfloat16): False})
    monkeypatch.setattr(kernels, "onednn_gradients_are_faster", lambda: True)  # as with AVX-512
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        kernels.linear(layer, x)
    assert calls == [(2, 8)]
    kernels.linear(layer, x).sum().backward()  # fp32 training: forward and the weight gradient (x needs none)
    assert calls == [(2, 8), (2, 8), (4, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert kernels.linear(layer, x).dtype == torch.bfloat16  # autocast decides the dtype, as for nn.Linear
        with torch.no_grad():
            kernels.linear(layer, x)
    kernels.linear(layer.bfloat16(), x.bfloat16().requires_grad_())  # bf16 training: F.linear
    with torch.no_grad():
        kernels.linear(layer.double(), x.double())  # a dtype oneDNN's path does not take
    assert len(calls) == 3
    hook = layer.float().register_forward_hook(lambda *args: None)
    with torch.no_grad():
        kernels.linear(layer, x)  # hooked (llm-compressor, accelerate): the module's own forward
    hook.remove()
    assert len(calls) == 3
    with torch.no_grad():
        kernels.linear(layer, x)
    assert len(calls) == 4


@pytest.mark.skipif(kernels._ONEDNN_LINEAR is None, reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("gradients", ["oneDNN", "MKL"])
@pytest.mark.parametrize("trainable", ["all", "input and bias", "bias only", "input only"])
def test_onednn_training_linear_gradients_match_f_linear(trainable, gradients, monkeypatch):
    monkeypatch.setattr(kernels, "onednn_gradients_are_faster", lambda: gradients == "oneDNN")
    torch.manual_seed(0)
    layer = nn.Linear(48, 80)
    reference = nn.Linear(48, 80)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 7, 48)
    grad_out = torch.randn(2, 7, 80)
    results = []
    for module, forward in ((layer, kernels.linear), (reference, lambda module, x: module(x))):
        module.weight.requires_grad_(trainable == "all")
        module.bias.requires_grad_(trainable != "input only")
        inputs = x.clone().requires_grad_(trainable in ("all", "input and bias", "input only"))
        out = forward(module, inputs)
        out.backward(grad_out)
        results.append((out, inputs.grad, module.weight.grad, module.bias.grad))
    for got, want in zip(*results):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_greedy_decoding_through_onednn_matches_the_plain_path(monkeypatch):
    _, ours = pair_without_dropout()
    ours.eval()
    ids = torch.randint(0, VOCAB, (2, 5))
    settings = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        fast_logits = ours(ids).logits
        fast = ours.generate(ids, **settings)
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", None)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, fast_logits, atol=1e-5, rtol=0)
        assert torch.equal(ours.generate(ids, **settings), fast)


needs_packing = pytest.mark.skipif(kernels._ONEDNN_PACK is None, reason="this torch build cannot reorder weights")


@needs_packing
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.05)])
def test_packed_weight_matches_f_linear_and_follows_weight_changes(dtype, atol):
    """Where packing passed its probe, the reordered copy is used and remade on weight changes;
    where it did not (bf16 on an AVX2-only CPU), the same layer gives F.linear's results unpacked."""
    torch.manual_seed(0)
    layer = nn.Linear(48, 80).to(dtype)
    kernels.pack_cpu_weights(layer)
    packs = kernels.onednn_packing_works(dtype)
    with torch.no_grad():
        for shape in [(1, 48), (5, 48), (2, 7, 48)]:
            x = torch.randn(shape, dtype=dtype)
            torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias), atol=atol, rtol=0)
        assert (kernels._PACKED_WEIGHTS[layer] is not None) == packs
        packed = kernels._PACKED_WEIGHTS[layer][1] if packs else None
        layer.weight.mul_(-2.0)  # an in-place change (an optimizer step, load_state_dict) is seen
        torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias), atol=2 * atol, rtol=0)
        if packs:
            assert kernels._PACKED_WEIGHTS[layer][1] is not packed
        layer.weight = nn.Parameter(torch.randn(80, 48, dtype=dtype))  # so is a new tensor
        torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias), atol=atol, rtol=0)


@needs_packing
def test_pack_cpu_weights_keeps_decoding_and_frees_the_copies():
    _, ours = pair_without_dropout()
    ours.eval()
    ids = torch.randint(0, VOCAB, (2, 5))
    settings = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    plain = ours.generate(ids, **settings)
    linears = [m for m in ours.modules() if type(m) is nn.Linear]
    assert ours.pack_cpu_weights() is ours
    packed = ours.generate(ids, **settings)
    assert torch.equal(packed, plain)
    assert all(m in kernels._PACKED_WEIGHTS for m in linears)  # the tied head included
    copy.deepcopy(ours)  # the opaque copies live outside the modules
    ours.train()(ids, labels=ids).loss.backward()  # training never uses them
    ours.pack_cpu_weights(False)
    assert not any(m in kernels._PACKED_WEIGHTS for m in linears)
    assert torch.equal(ours.eval().generate(ids, **settings), plain)


def test_pack_cpu_weights_without_onednn_says_so(monkeypatch):
    _, ours = pair_without_dropout()
    monkeypatch.setattr(kernels, "_ONEDNN_PACK", None)
    with pytest.raises(RuntimeError, match="_reorder_linear_weight"):
        ours.pack_cpu_weights()
    ours.pack_cpu_weights(False)  # turning it off always works


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_compiled_formulation_matches_the_eager_one(dtype):
    """`_compiled` (no buffers, no slice writes) is what compiled graphs run; checked here in eager."""
    torch.manual_seed(0)
    h, w = torch.randn(37, 16, dtype=dtype), torch.randn(17_000, 16, dtype=dtype)
    targets = torch.randint(0, 17_000, (37,))
    targets[::5] = -100
    scale = (targets != -100).float() / (targets != -100).sum()
    targets = targets.clamp(min=0)[:, None]
    eager = ChunkedLinearCrossEntropy._eager(h, w, targets, scale, 8, True, torch.float32)
    compiled = ChunkedLinearCrossEntropy._compiled(h, w, targets, scale, 8, True, torch.float32)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    assert compiled[2].dtype == torch.float32


def relative_difference(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_compiled_training_step_fullgraph_matches_eager_with_dropout(dtype, tolerance):
    """torch.compile(fullgraph=True) compiles the training forward (no graph break), and with the
    same seed draws the same dropout masks as eager mode, so loss and gradients agree; another
    seed gives gradients that differ by far more than the tolerance."""
    torch.manual_seed(0)
    config = config_from_gpt2(tiny_gpt2_config(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1).to_dict())
    model = LtgGptForCausalLM(config).train()
    ids = torch.randint(0, VOCAB, (2, 16))
    compiled = torch.compile(model, fullgraph=True)
    blocks = model.transformer.h
    params = [model.lm_head.weight, blocks[0].attn.qkv_proj.weight, blocks[1].mlp.fc_in.weight]

    def step(forward, seed):
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(input_ids=ids, labels=ids).loss
        return loss, torch.autograd.grad(loss, params)

    eager_loss, eager_grads = step(model, 1)
    compiled_loss, compiled_grads = step(compiled, 1)
    _, other_grads = step(compiled, 2)
    assert relative_difference(compiled_loss, eager_loss) < tolerance
    for got, want, other in zip(compiled_grads, eager_grads, other_grads):
        assert relative_difference(got, want) < tolerance
        assert relative_difference(other, want) > 0.2  # other masks


def test_linear_under_torch_func_transforms():
    """torch.func.grad and vmap see plain F.linear (an autograd.Function would need vmap rules)."""
    torch.manual_seed(0)

    class Layer(nn.Module):  # calls its nn.Linear as the GPT blocks do
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(6, 3)

        def forward(self, x):
            return kernels.linear(self.proj, x)

    layer = Layer()
    params = {name: p.detach() for name, p in layer.named_parameters()}
    x = torch.randn(5, 6)

    def loss(params, x):
        return torch.func.functional_call(layer, params, (x,)).square().sum()

    grads = torch.func.grad(loss)(params, x)
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x[:, None])
    torch.testing.assert_close(per_sample["proj.weight"].sum(0), grads["proj.weight"], atol=1e-5, rtol=1e-5)
    want = torch.autograd.grad(loss(dict(layer.named_parameters()), x), layer.proj.weight)[0]
    torch.testing.assert_close(grads["proj.weight"], want, atol=1e-5, rtol=1e-5)
