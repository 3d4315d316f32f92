"""Tiny checkpoints for the hub tests (export, doctor, push)."""

import torch

from hf_ltg import (
    LtgGptConfig,
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
)
from hf_ltg.checkpoint import save_checkpoint

HEADS = {
    "causal-lm": LtgGptForCausalLM,
    "sequence-classification": LtgGptForSequenceClassification,
    "token-classification": LtgGptForTokenClassification,
}


def tiny_gpt(tokenizer, head="causal-lm", seed=0, **overrides):
    """A randomly initialised tiny LTG GPT (dropout off) whose special ids match `tokenizer`."""
    eos = tokenizer.eos_token_id
    values = dict(vocab_size=len(tokenizer), max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                  id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    values.update(overrides)
    torch.manual_seed(seed)
    return HEADS[head](LtgGptConfig(**values)).eval()


def save_tiny_gpt(folder, tokenizer, head="causal-lm", seed=0, **overrides):
    """Write a tiny checkpoint the way hf_ltg writes every checkpoint; returns the model."""
    model = tiny_gpt(tokenizer, head, seed, **overrides)
    save_checkpoint(model, folder, tokenizer=tokenizer)
    return model


def sample_ids(tokenizer, text="The quick brown fox jumps over the lazy dog."):
    return tokenizer(text, return_tensors="pt")["input_ids"]


def save_tiny_ltg_bert(folder):
    """A tiny LTG-BERT masked LM with a WordPiece tokenizer, written as hf_ltg writes checkpoints."""
    from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
    from hf_ltg.tokenization import train_tokenizer

    texts = ["The cat sat on the mat.", "A language model predicts tokens.", "Norway has fjords."] * 10
    tokenizer = train_tokenizer(iterator=texts, vocab_size=200, kind="wordpiece", min_frequency=1)
    ids = {name: tokenizer.convert_tokens_to_ids(f"[{name.upper()}]") for name in ("pad", "cls", "sep", "mask", "unk")}
    config = LtgBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, position_bucket_size=8, pad_token_id=ids["pad"], bos_token_id=ids["cls"],
        eos_token_id=ids["sep"], cls_token_id=ids["cls"], sep_token_id=ids["sep"], mask_token_id=ids["mask"],
        unk_token_id=ids["unk"],
    )
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config).eval()
    save_checkpoint(model, folder, tokenizer=tokenizer)
    return model, tokenizer
