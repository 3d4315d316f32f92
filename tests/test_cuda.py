"""Both families on a CUDA GPU, against the same models on CPU (issue 19, item 1).

Marked `cuda`: skipped without a GPU (tests/conftest.py), run on the device by
`python benchmarks/gpu_check.py` (`pytest -m cuda tests/test_cuda.py`). With
HF_LTG_CUDA_TEST_DEVICE=cpu the same tests run on CPU against CPU, which checks the tests' own
logic on a machine without a GPU (every comparison is then trivially close).

Tolerances (CPU fp32 is the reference):
- fp32 on the GPU: logits within 1e-4 (abs and rel); one training step's loss within 1e-5 and
  every gradient within 1e-4 of the largest gradient entry of its tensor (TF32 is off: torch's
  default for fp32 matmuls).
- bf16 (weights for inference, autocast for training): logits within 5e-2 abs + 5e-2 rel; loss
  within 2e-2 rel; every gradient tensor with cosine similarity >= 0.99 to the CPU fp32 one.
- greedy tokens, fp32: identical (batch 8, left padding, dynamic and static cache).
"""

import math
import os
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, run_without_hf_ltg

from hf_ltg.gpt import LORA_TARGET_MODULES as GPT_LORA_TARGETS
from hf_ltg.gpt import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.ltg_bert import LORA_TARGET_MODULES as BERT_LORA_TARGETS
from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForCausalLM, LtgBertForMaskedLM

DEVICE = os.environ.get("HF_LTG_CUDA_TEST_DEVICE", "cuda")
pytestmark = [] if DEVICE == "cpu" else [pytest.mark.cuda]
CHECKPOINTS = REPO / "checkpoints"
VOCAB = 256


def gpt_config():
    return LtgGptConfig(vocab_size=VOCAB, max_position_embeddings=128, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)


def bert_config():
    return LtgBertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=128, position_bucket_size=16,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)


# family -> (model class trained with labels, config factory)
FAMILIES = {"gpt": (LtgGptForCausalLM, gpt_config), "ltg-bert": (LtgBertForMaskedLM, bert_config)}


def make_model(family, seed=0):
    cls, config = FAMILIES[family]
    torch.manual_seed(seed)
    model = cls(config())
    with torch.no_grad():  # weights large enough that the outputs are far from uniform
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.1)
    return model


def batch(seed=0, rows=4, length=24):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # one left-padded row
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def copy_to(model, device, dtype=torch.float32):
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.to(device=device, dtype=dtype)


def labels_for(family, ids, mask):
    labels = ids.masked_fill(mask == 0, -100)
    if family == "ltg-bert":  # masked LM: predict every third real token
        labels = labels.clone()
        labels[:, 1::3] = -100
    return labels


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_matches_cpu(family, dtype):
    model = make_model(family).eval()
    ids, mask = batch()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        gpu = copy_to(model, DEVICE, torch.bfloat16 if dtype == "bf16" else torch.float32).eval()
        got = gpu(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits.float().cpu()
    keep = mask.bool()  # padding positions are not compared (their values are not specified)
    tolerance = 1e-4 if dtype == "fp32" else 5e-2
    torch.testing.assert_close(got[keep], want[keep], atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eager_and_sdpa_agree(family, tmp_path):
    make_model(family).save_pretrained(tmp_path)
    cls = FAMILIES[family][0]
    ids, mask = (t.to(DEVICE) for t in batch())
    logits = {}
    for attention in ("eager", "sdpa"):
        model = cls.from_pretrained(tmp_path, attn_implementation=attention).to(DEVICE).eval()
        with torch.no_grad():
            logits[attention] = model(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ training


def training_step(model, ids, mask, labels, autocast_dtype=None):
    """Loss and gradients of one forward/backward in training mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    device = ids.device.type
    with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_step_matches_cpu(family, dtype):
    model = make_model(family)
    ids, mask = batch()
    labels = labels_for(family, ids, mask)
    want_loss, want_grads = training_step(model, ids, mask, labels)

    gpu = copy_to(model, DEVICE)
    autocast = torch.bfloat16 if dtype == "bf16" else None
    on_gpu = [t.to(DEVICE) for t in (ids, mask, labels)]
    got_loss, got_grads = training_step(gpu, *on_gpu, autocast_dtype=autocast)

    assert set(got_grads) == set(want_grads)
    if dtype == "fp32":
        torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=1e-5)
        for name, want in want_grads.items():
            scale = want.abs().max().clamp(min=1e-12)
            assert (got_grads[name] - want).abs().max() <= 1e-4 * scale, name
    else:
        torch.testing.assert_close(got_loss, want_loss, atol=0.0, rtol=2e-2)
        for name, want in want_grads.items():
            if want.abs().max() == 0:
                continue
            cosine = F.cosine_similarity(got_grads[name].flatten(), want.flatten(), dim=0)
            assert cosine >= 0.99, (name, float(cosine))

    # and the fused AdamW step (the Trainer's default optimizer) applies them
    optimizer = torch.optim.AdamW(gpu.parameters(), lr=1e-3, fused=DEVICE == "cuda")
    before = {n: p.detach().clone() for n, p in gpu.named_parameters()}
    optimizer.step()
    moved = [n for n, p in gpu.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_fullgraph_training_step(family):
    """torch.compile(fullgraph=True) of a bf16 autocast training step: no graph break, the loss of
    the eager step, finite gradients, and a second step (fused AdamW in between) lowers the loss."""
    torch._dynamo.reset()
    model = make_model(family).to(DEVICE)
    ids, mask = (t.to(DEVICE) for t in batch())
    labels = labels_for(family, ids, mask)
    eager_loss, _ = training_step(model, ids, mask, labels, torch.bfloat16)

    compiled = torch.compile(model, fullgraph=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=DEVICE == "cuda")
    losses = []
    for _ in range(2):
        model.train()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = compiled(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert math.isclose(losses[0], float(eager_loss), rel_tol=2e-2), (losses, float(eager_loss))
    assert losses[1] < losses[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_peft_lora_trains(family):
    from peft import LoraConfig, get_peft_model

    targets = GPT_LORA_TARGETS if family == "gpt" else BERT_LORA_TARGETS
    model = get_peft_model(make_model(family), LoraConfig(r=4, lora_alpha=8, target_modules=targets)).to(DEVICE)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids, mask = (t.to(DEVICE) for t in batch())
    labels = labels_for(family, ids, mask)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                  fused=DEVICE == "cuda")
    losses = []
    model.train()
    for _ in range(5):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


# ------------------------------------------------------------------ generation


def left_padded_prompts(tokenizer, rows=8):
    texts = ["def add(a, b):", "The quick brown fox", "import os", "A language model",
             "for i in range(10):", "Hello", "The cat sat on the mat and", "x ="][:rows]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True)


def first_difference(got, want):
    rows = (got != want).any(-1).nonzero().flatten().tolist()
    return f"rows {rows} differ; first: {got[rows[0]].tolist()} vs {want[rows[0]].tolist()}" if rows else ""


GENERATORS = {
    "gpt": (LtgGptForCausalLM, CHECKPOINTS / "ltg-gpt-lm"),
    "ltg-bert": (LtgBertForCausalLM, CHECKPOINTS / "ltg-bert-mlm"),  # the encoder under a causal mask
}


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("family", sorted(GENERATORS))
def test_greedy_generate_matches_cpu_fp32(family, cache):
    """GPT: the same tokens with either cache. LTG-BERT takes no static cache (its relative position
    terms need the cache to hold exactly the tokens so far) and says so."""
    from transformers import AutoTokenizer

    cls, folder = GENERATORS[family]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = left_padded_prompts(tokenizer)
    settings = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if cache == "static":
        settings["cache_implementation"] = "static"
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    if family == "ltg-bert" and cache == "static":
        with pytest.raises(ValueError, match="LTG-BERT takes a DynamicCache, got StaticCache"):
            model.to(DEVICE).generate(**{k: v.to(DEVICE) for k, v in inputs.items()}, **settings)
        return
    with torch.no_grad():
        want = model.generate(**inputs, **settings)
        gpu = model.to(DEVICE)
        got = gpu.generate(**{k: v.to(DEVICE) for k, v in inputs.items()}, **settings).cpu()
    assert got.shape == want.shape == (8, inputs["input_ids"].shape[1] + 16)
    assert torch.equal(got, want), first_difference(got, want)


# ------------------------------------------------------------------ shipped checkpoints, int8


@pytest.mark.parametrize("name", ["ltg-gpt-lm", "ltg-gpt-classifier", "ltg-bert-mlm"])
def test_shipped_checkpoint_loads_with_device_map_cuda_without_hf_ltg(name, tmp_path):
    """A clean process that cannot import hf_ltg (nor the carried wheels: PYTHONPATH is dropped, so on
    the device this is the image's own transformers): trust_remote_code + device_map="cuda" puts
    every weight on the GPU, and the outputs equal the same checkpoint on CPU."""
    code = f"""
    import json, torch
    from transformers import AutoConfig, AutoTokenizer
    import transformers
    config = AutoConfig.from_pretrained(CKPT, trust_remote_code=True)
    auto = getattr(transformers, {{"LtgGptForCausalLM": "AutoModelForCausalLM",
                                   "LtgGptForSequenceClassification": "AutoModelForSequenceClassification",
                                   "LtgBertForMaskedLM": "AutoModelForMaskedLM"}}[config.architectures[0]])
    tokenizer = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
    inputs = tokenizer(["def add(a, b): return a + b", "The cat"], return_tensors="pt", padding=True)
    gpu = auto.from_pretrained(CKPT, trust_remote_code=True, device_map={DEVICE!r})
    cpu = auto.from_pretrained(CKPT, trust_remote_code=True)
    devices = sorted({{p.device.type for p in gpu.parameters()}})
    with torch.no_grad():
        got = gpu(**{{k: v.to({DEVICE!r}) for k, v in inputs.items()}}).logits.float().cpu()
        want = cpu(**inputs).logits
    keep = inputs["attention_mask"].bool() if got.dim() == 3 else slice(None)
    print(json.dumps(dict(devices=devices, diff=float((got[keep] - want[keep]).abs().max()))))
    """
    out = run_without_hf_ltg(textwrap.dedent(code), CHECKPOINTS / name, tmp_path, timeout=300)
    import json

    result = json.loads(out.strip().splitlines()[-1])
    assert result["devices"] == [DEVICE]
    assert result["diff"] <= 1e-4, result


def test_int8_inference_runs_on_gpt_and_is_refused_on_ltg_bert():
    """Int8 GPT layers on the GPU compute what they compute on CPU (the same int32 products, or the
    float fallback for shapes without an int8 kernel), and stay near the float model."""
    from hf_ltg.quantization import quantize_model

    model = make_model("gpt").eval()
    ids, mask = batch(rows=8, length=32)  # 8 x 32 = 256 rows: torch._int_mm's CUDA kernel needs > 16
    with torch.no_grad():
        float_logits = model(input_ids=ids, attention_mask=mask).logits
        quantize_model(model, "absmax")
        want = model(input_ids=ids, attention_mask=mask).logits
        got = model.to(DEVICE)(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits.float().cpu()
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)
    assert (want[keep] - float_logits[keep]).abs().max() < 0.1 * float_logits[keep].abs().max()
    # LTG-BERT has no int8 layers: refused with one line naming the supported family
    with pytest.raises(ValueError, match="LTG-BERT checkpoints are not supported"):
        quantize_model(make_model("ltg-bert").to(DEVICE), "absmax")


def test_cuda_paths_leave_the_cpu_kernels_alone():
    """On the GPU, the CPU speed paths (oneDNN linears, 16-bit dropout masks, fp32 products for
    emulated 16-bit autocast) must not be taken: `linear` is F.linear, dropout is F.dropout."""
    from hf_ltg.gpt import kernels_ltg_gpt as kernels

    if DEVICE != "cuda":
        pytest.skip("on CPU these paths are meant to be taken")
    linear = torch.nn.Linear(16, 8).to(DEVICE)
    x = torch.randn(5, 16, device=DEVICE)
    assert torch.equal(kernels.linear(linear, x), F.linear(x, linear.weight, linear.bias))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert not kernels.emulated_16bit_autocast(DEVICE)
        assert torch.equal(kernels.linear(linear, x), F.linear(x, linear.weight, linear.bias))
    torch.manual_seed(3)
    want = F.dropout(x, 0.5, training=True)
    torch.manual_seed(3)
    assert torch.equal(kernels.fast_dropout(x, 0.5, training=True), want)


def test_device_check_plan_is_for_this_file():
    """The device script runs this file with `-m cuda` (kept in step with benchmarks/gpu_check.py)."""
    script = (REPO / "benchmarks" / "gpu_check.py").read_text()
    assert "tests/test_cuda.py" in script and '"-m", "cuda"' in script
    assert Path(__file__).name == "test_cuda.py"
