"""`hf-ltg convert --from from-scratch` against a "GPT from scratch" model written here.

The reference below follows the GPTModel of *Build a Large Language Model (From Scratch)* as
described in shared/docs/gpt-reference.md: its own LayerNorm (scale/shift, biased variance),
tanh-GELU, separate W_query/W_key/W_value, a persistent causal-mask buffer, an untied out_head.
"""

import json
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_ltg.cli import main

CFG = {"vocab_size": 97, "context_length": 24, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}


class BookLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.eps = 1e-5
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class BookGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


class BookAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["emb_dim"]
        self.n_heads, self.head_dim = cfg["n_heads"], d // cfg["n_heads"]
        self.W_query = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.W_key = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.W_value = nn.Linear(d, d, bias=cfg["qkv_bias"])
        self.out_proj = nn.Linear(d, d)
        self.register_buffer("mask", torch.triu(torch.ones(cfg["context_length"], cfg["context_length"]), diagonal=1))

    def forward(self, x):
        b, t, d = x.shape

        def heads(y):
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.W_query(x)), heads(self.W_key(x)), heads(self.W_value(x))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask.bool()[:t, :t], -torch.inf)
        weights = torch.softmax(scores / self.head_dim**0.5, dim=-1)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class BookBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["emb_dim"]
        self.att = BookAttention(cfg)
        self.ff = nn.Module()
        self.ff.layers = nn.Sequential(nn.Linear(d, 4 * d), BookGELU(), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = BookLayerNorm(d), BookLayerNorm(d)

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.ff.layers(self.norm2(x))


class BookGPTModel(nn.Module):
    def __init__(self, cfg, num_classes=None):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.trf_blocks = nn.Sequential(*[BookBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = BookLayerNorm(cfg["emb_dim"])
        if num_classes is None:
            self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        else:
            self.out_head = nn.Linear(cfg["emb_dim"], num_classes)

    def forward(self, ids):
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(ids.shape[1]))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def book_model(num_classes=None, qkv_bias=True):
    torch.manual_seed(0)
    model = BookGPTModel({**CFG, "qkv_bias": qkv_bias}, num_classes).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if name.endswith("scale") else 0.0) + 0.2 * torch.randn_like(p))
    return model


def convert(tmp_path, model, qkv_bias=True, suffix=".pth"):
    (tmp_path / "cfg.json").write_text(json.dumps({**CFG, "qkv_bias": qkv_bias}))
    weights = tmp_path / f"model{suffix}"
    torch.save(model.state_dict(), weights)
    code = main(["convert", "--from", "from-scratch", "--config", str(tmp_path / "cfg.json"), str(weights),
                 str(tmp_path / "out")])
    assert code == 0
    return tmp_path / "out"


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_converted_causal_lm_matches_the_book_model(tmp_path, qkv_bias):
    book = book_model(qkv_bias=qkv_bias)
    assert "trf_blocks.0.att.mask" in book.state_dict()  # the persistent buffer users' files carry
    ours = AutoModelForCausalLM.from_pretrained(convert(tmp_path, book, qkv_bias), trust_remote_code=True).eval()
    assert not ours.config.tie_word_embeddings
    ids = torch.randint(0, CFG["vocab_size"], (2, 24))
    with torch.no_grad():
        assert (ours(ids).logits - book(ids)).abs().max().item() < 1e-5
    prompt = ids[:1, :4]
    generated = ours.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    tokens = prompt
    for _ in range(12):  # the book's own greedy loop
        with torch.no_grad():
            tokens = torch.cat([tokens, book(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_converted_classifier_matches_the_book_classifier_on_the_last_token(tmp_path):
    book = book_model(num_classes=2)
    ours = AutoModelForSequenceClassification.from_pretrained(convert(tmp_path, book), trust_remote_code=True).eval()
    assert ours.score.bias is not None and ours.config.num_labels == 2
    ids = torch.randint(0, CFG["vocab_size"], (3, 10))
    with torch.no_grad():
        got = ours(ids, attention_mask=torch.ones_like(ids)).logits
        assert (got - book(ids)[:, -1, :]).abs().max().item() < 1e-5


def test_config_that_does_not_match_names_the_tensor_and_both_shapes(tmp_path, capsys):
    book = book_model()
    (tmp_path / "cfg.json").write_text(json.dumps({**CFG, "emb_dim": 64}))
    torch.save(book.state_dict(), tmp_path / "model.pth")
    code = main(["convert", "--from", "from-scratch", "--config", str(tmp_path / "cfg.json"),
                 str(tmp_path / "model.pth"), str(tmp_path / "out")])
    assert code == 2
    assert "'trf_blocks.0.att.W_query.weight' has shape (32, 32) but the config expects (64, 64)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_config_keys_and_missing_config_are_reported(tmp_path, capsys):
    torch.save(book_model().state_dict(), tmp_path / "model.pth")
    (tmp_path / "cfg.json").write_text(json.dumps({"vocab_size": 97}))
    assert main(["convert", "--from", "from-scratch", "--config", str(tmp_path / "cfg.json"),
                 str(tmp_path / "model.pth"), str(tmp_path / "out")]) == 2
    assert "lacks the key(s) ['context_length', 'emb_dim', 'n_heads', 'n_layers']" in capsys.readouterr().err
    assert main(["convert", "--from", "from-scratch", str(tmp_path / "model.pth"), str(tmp_path / "out")]) == 2
    assert "needs --config" in capsys.readouterr().err


def test_a_gpt2_file_given_as_from_scratch_is_rejected(tmp_path, capsys):
    torch.save({"transformer.wte.weight": torch.zeros(3, 3)}, tmp_path / "gpt2.bin")
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    assert main(["convert", "--from", "from-scratch", "--config", str(tmp_path / "cfg.json"),
                 str(tmp_path / "gpt2.bin"), str(tmp_path / "out")]) == 2
    assert "is not a 'GPT from scratch' state dict" in capsys.readouterr().err
