"""Tiny GPT configs and reference models for the GPT tests."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB = 99
EOS = 98


def tiny_gpt2_config(**overrides) -> GPT2Config:
    values = dict(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS)
    values.update(overrides)
    return GPT2Config(**values)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (LayerNorm gains and biases included) non-trivial random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            param.copy_(1.0 + noise if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                        or name.endswith("ln_f.weight") else noise)
    return model


def reference_gpt2(tmp_path, **overrides) -> tuple[GPT2LMHeadModel, str]:
    """A random transformers GPT2LMHeadModel saved to tmp_path/'gpt2'."""
    torch.manual_seed(0)
    model = randomize_(GPT2LMHeadModel(tiny_gpt2_config(**overrides))).eval()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder)
    return model, str(folder)
