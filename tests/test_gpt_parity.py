"""LTG GPT against transformers' own GPT2LMHeadModel, after `hf-ltg convert --from hf-gpt2`."""

import pytest
import torch
from gpt_utils import EOS, VOCAB, reference_gpt2
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from hf_ltg.cli import main

ATOL = 1e-5


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    reference, gpt2_folder = reference_gpt2(tmp)
    assert main(["convert", "--from", "hf-gpt2", gpt2_folder, str(tmp / "ours")]) == 0
    return reference, tmp / "ours", tmp


def load_ours(folder, attn="sdpa"):
    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation=attn).eval()


def load_reference(folder, attn):
    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation=attn).eval()


def padded_batch(pad_side):
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB - 1, (3, 12))
    mask = torch.ones_like(ids)
    for row, n_pad in ((1, 4), (2, 7)):
        if pad_side == "left":
            ids[row, :n_pad], mask[row, :n_pad] = EOS, 0
        else:
            ids[row, -n_pad:], mask[row, -n_pad:] = EOS, 0
    return ids, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_transformers_gpt2_without_padding(converted, attn):
    _, ours_folder, tmp = converted
    ours, reference = load_ours(ours_folder, attn), load_reference(tmp / "gpt2", attn)
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        diff = (ours(ids).logits - reference(ids).logits).abs().max().item()
    assert diff < ATOL


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_logits_match_transformers_gpt2_with_padding(converted, attn, pad_side):
    _, ours_folder, tmp = converted
    ours, reference = load_ours(ours_folder, attn), load_reference(tmp / "gpt2", attn)
    ids, mask = padded_batch(pad_side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask, position_ids=position_ids).logits
        want = reference(ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    assert torch.isfinite(got).all()
    assert (got[real] - want[real]).abs().max().item() < ATOL


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_of_50_tokens_matches_transformers(converted, use_cache):
    _, ours_folder, tmp = converted
    ours, reference = load_ours(ours_folder), load_reference(tmp / "gpt2", "sdpa")
    prompt = torch.randint(0, VOCAB - 1, (1, 8))
    settings = dict(max_new_tokens=50, min_new_tokens=50, do_sample=False, use_cache=use_cache, pad_token_id=EOS)
    got = ours.generate(prompt, **settings)
    want = reference.generate(prompt, **settings)
    assert got.shape == (1, 58)
    assert torch.equal(got, want)


def test_generate_with_cache_matches_without_cache(converted):
    ours = load_ours(converted[1])
    prompt = torch.randint(0, VOCAB - 1, (2, 6))
    settings = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=EOS)
    assert torch.equal(ours.generate(prompt, use_cache=True, **settings), ours.generate(prompt, use_cache=False, **settings))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(converted, attn):
    ours = load_ours(converted[1], attn)
    torch.manual_seed(3)
    prompts = [torch.randint(0, VOCAB - 1, (n,)) for n in (9, 5, 2)]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOS)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    settings = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=EOS)
    batch = ours.generate(ids, attention_mask=mask, **settings)[:, width:]
    for row, p in enumerate(prompts):
        alone = ours.generate(p[None], **settings)[0, len(p):]
        assert torch.equal(batch[row], alone), f"prompt {row} differs when batched"


def test_round_trip_to_hf_gpt2_is_exact(converted, tmp_path):
    reference, ours_folder, tmp = converted
    assert main(["convert", "--to", "hf-gpt2", str(ours_folder), str(tmp_path / "back")]) == 0
    original = load_file(tmp / "gpt2" / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    assert torch.equal(reloaded(ids).logits, reference(ids).logits)


def test_conversion_accepts_a_bare_file_without_transformer_prefix_and_with_mask_buffers(converted, tmp_path):
    reference, _, tmp = converted
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    for i in range(reference.config.n_layer):  # what older GPT-2 files carry
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "pytorch_model.bin")
    config = str(tmp / "gpt2" / "config.json")
    assert main(["convert", "--from", "hf-gpt2", "--config", config, str(tmp_path / "pytorch_model.bin"),
                 str(tmp_path / "ours")]) == 0
    ours = load_ours(tmp_path / "ours")
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        assert (ours(ids).logits - reference(ids).logits).abs().max().item() < ATOL


def test_untied_lm_head_stays_untied(tmp_path):
    reference, folder = reference_gpt2(tmp_path, tie_word_embeddings=False)
    assert not torch.equal(reference.lm_head.weight, reference.transformer.wte.weight)
    assert main(["convert", "--from", "hf-gpt2", folder, str(tmp_path / "ours")]) == 0
    ours = load_ours(tmp_path / "ours")
    assert not ours.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        assert (ours(ids).logits - reference(ids).logits).abs().max().item() < ATOL
