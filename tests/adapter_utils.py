"""Tiny GPT models and helpers for the adapter tests."""

import torch

from hf_ltg import LtgGptConfig

VOCAB = 99
EOS = 98
NUM_VIRTUAL_TOKENS = 4


def tiny_config(**overrides) -> LtgGptConfig:
    values = dict(vocab_size=VOCAB, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    values.update(overrides)
    return LtgGptConfig(**values)


def saved_base(model_class, folder, seed=0, std=0.2, **overrides):
    """Save a randomly initialised `model_class` to `folder` and load it back from there.

    Loading from the folder records it as `name_or_path`, so a saved adapter names a base
    model that `AutoPeftModel*` can find. The larger init std gives varied greedy tokens.
    """
    torch.manual_seed(seed)
    model = model_class(tiny_config(initializer_range=std, **overrides))
    model.save_pretrained(folder)
    return model_class.from_pretrained(folder).eval()


def perturb_adapter_(peft_model, seed=0, std=0.2):
    """Move every trainable tensor away from its initial value (LoRA's B starts at zero, a
    no-op), so that comparisons involving the adapter can fail."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * std)
    return peft_model


def prompts(batch=2, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, EOS, (batch, length), generator=generator)
    return input_ids, torch.ones_like(input_ids)
