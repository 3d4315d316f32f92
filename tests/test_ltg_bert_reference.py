"""The port against an implementation of the original LTG-BERT written here from the architecture.

`OriginalBert` follows ltg-bert-architecture.md: sequence-first `[T, B, D]`, boolean padding
mask (True = padding), a persistent `position_indices` bucket table, the original module
names, and both layouts of the query/key position split. It shares no code with hf_ltg.
Its random weights (normal, std 0.1, LayerNorm affine parameters and biases included) are
saved as an original-style state dict, converted with `hf-ltg convert --from ltg-bert`, and
the converted model must give the same masked-LM logits.
"""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hf_ltg.cli import main as cli_main
from hf_ltg.ltg_bert import LtgBertForMaskedLM

TOLERANCE = 1e-5


# ---------------------------------------------------------------- the original, from the architecture

def bucket_table(length: int, bucket_size: int, max_position: int) -> torch.Tensor:
    """position_indices[i, j] for r = i - j, in 0 .. 2b-2 (float32 arithmetic, as the original)."""
    r = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    mid = bucket_size // 2
    magnitude = r.abs().clamp(max=max_position - 1)
    safe = torch.where(magnitude < mid, torch.full_like(magnitude, mid), magnitude).float()
    log_pos = torch.ceil(torch.log(safe / mid) / math.log((max_position - 1) / mid) * (mid - 1)).long() + mid
    bucket = torch.where(magnitude < mid, r, torch.sign(r) * log_pos)
    return bucket_size - 1 + bucket


class Attention(nn.Module):
    def __init__(self, cfg, layout):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        d = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.head_size = d // self.heads
        self.in_proj_qk = nn.Linear(d, 2 * d)
        self.in_proj_v = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.pre_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"], elementwise_affine=False)
        self.post_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"])
        m = cfg["max_position_embeddings"]
        self.register_buffer("position_indices", bucket_table(m, cfg["position_bucket_size"], m), persistent=True)
        self.dropout = nn.Dropout(cfg["attention_probs_dropout_prob"])
        self.scale = 1.0 / math.sqrt(3 * self.head_size)

    def forward(self, x, padding_mask, relative):  # x [T, B, D], padding_mask [B, 1, 1, T] True = pad
        length, batch, d = x.shape
        if self.position_indices.size(0) < length:  # rebuilt for longer inputs; BabyLM passes 512 as M
            m = 512 if self.layout == "babylm" else self.cfg["max_position_embeddings"]
            self.position_indices = bucket_table(length, self.cfg["position_bucket_size"], m)
        x = self.pre_layer_norm(x)
        q, k = self.in_proj_qk(x).chunk(2, dim=2)
        v = self.in_proj_v(x)
        pos = self.in_proj_qk(self.dropout(relative))  # [2b-1, 2D]
        pos = pos[self.position_indices[:length, :length]]  # [T, T, 2D]
        if self.layout == "babylm":
            query_pos, key_pos = pos.chunk(2, dim=-1)
            query_pos = query_pos.reshape(length, length, self.heads, self.head_size)
            key_pos = key_pos.reshape(length, length, self.heads, self.head_size)
        else:
            query_pos, key_pos = pos.reshape(length, length, self.heads, 2 * self.head_size).chunk(2, dim=-1)
        q = q.reshape(length, batch, self.heads, self.head_size).permute(1, 2, 0, 3)  # [B, H, T, hd]
        k = k.reshape(length, batch, self.heads, self.head_size).permute(1, 2, 0, 3)
        v = v.reshape(length, batch, self.heads, self.head_size).permute(1, 2, 0, 3)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k * self.scale)
        scores = scores + torch.einsum("bhqd,qkhd->bhqk", q, key_pos * self.scale)
        scores = scores + torch.einsum("bhkd,qkhd->bhqk", k * self.scale, query_pos)
        scores = scores.masked_fill(padding_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).masked_fill(padding_mask, 0.0)
        context = torch.einsum("bhqk,bhkd->qbhd", self.dropout(probs), v).reshape(length, batch, d)
        return self.dropout(self.post_layer_norm(self.out_proj(context)))


class GeGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, i, eps = cfg["hidden_size"], cfg["intermediate_size"], cfg["layer_norm_eps"]
        self.mlp = nn.Sequential(
            nn.LayerNorm(d, eps, elementwise_affine=False), nn.Linear(d, 2 * i, bias=False), GeGLU(),
            nn.LayerNorm(i, eps, elementwise_affine=False), nn.Linear(i, d, bias=False),
            nn.Dropout(cfg["hidden_dropout_prob"]),
        )

    def forward(self, x):
        return self.mlp(x)


class EncoderLayer(nn.Module):
    def __init__(self, cfg, layout):
        super().__init__()
        self.attention = Attention(cfg, layout)
        self.mlp = FeedForward(cfg)

    def forward(self, x, padding_mask, relative):
        x = x + self.attention(x, padding_mask, relative)
        return x + self.mlp(x)


class Encoder(nn.Module):
    def __init__(self, cfg, layout):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(cfg, layout) for _ in range(cfg["num_hidden_layers"])])


class Embedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embedding = nn.Embedding(cfg["vocab_size"], d)
        self.word_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"], elementwise_affine=False)
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        self.relative_embedding = nn.Parameter(torch.empty(2 * cfg["position_bucket_size"] - 1, d))
        self.relative_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"])


class MaskClassifier(nn.Module):
    def __init__(self, cfg, layout, embedding_weight):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        norm = nn.LayerNorm(d, eps, elementwise_affine=False)
        middle = [dropout, norm] if layout == "bnc" else [norm, dropout]
        self.nonlinearity = nn.Sequential(
            nn.LayerNorm(d, eps, elementwise_affine=False), nn.Linear(d, d), nn.GELU(), *middle,
            nn.Linear(d, cfg["vocab_size"]),
        )
        self.nonlinearity[5].weight = embedding_weight


class OriginalBert(nn.Module):
    def __init__(self, cfg, layout):
        super().__init__()
        self.embedding = Embedding(cfg)
        self.transformer = Encoder(cfg, layout)
        self.classifier = MaskClassifier(cfg, layout, self.embedding.word_embedding.weight)

    def forward(self, input_ids, padding_mask):  # input_ids [T, B]; padding_mask [B, T], True = pad
        emb = self.embedding
        x = emb.dropout(emb.word_layer_norm(emb.word_embedding(input_ids)))
        relative = emb.relative_layer_norm(emb.relative_embedding)
        mask = padding_mask[:, None, None, :]
        for layer in self.transformer.layers:
            x = layer(x, mask, relative)
        return self.classifier.nonlinearity(x)  # [T, B, V]


# ---------------------------------------------------------------- the comparison

def original_config(max_position: int, bucket_size: int) -> dict:
    return dict(
        vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
        max_position_embeddings=max_position, position_bucket_size=bucket_size, layer_norm_eps=1e-7,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )


def random_original(cfg, layout, seed=0):
    torch.manual_seed(seed)
    model = OriginalBert(cfg, layout).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def convert(tmp_path, model, cfg, layout, keep_buffers):
    state = model.state_dict()
    if not keep_buffers:
        state = {k: v for k, v in state.items() if not k.endswith("position_indices")}
    assert ("classifier.nonlinearity.5.weight" in state) and state["classifier.nonlinearity.5.weight"].data_ptr() == \
        state["embedding.word_embedding.weight"].data_ptr()  # saved tied, as the original does
    torch.save(state, tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "converted"
    assert cli_main(["convert", "--from", "ltg-bert", "--config", str(tmp_path / "config.json"), "--layout", layout,
                     str(tmp_path / "model.bin"), str(out)]) == 0
    return LtgBertForMaskedLM.from_pretrained(out).eval()


def padded_batch(lengths, vocab_size, seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (len(lengths), max(lengths)), generator=generator)
    keep = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~keep, 3), keep


@pytest.mark.parametrize(
    "layout, max_position, bucket_size, lengths, keep_buffers",
    [
        ("babylm", 64, 16, [40, 23, 7], True),  # within the table, padded
        ("bnc", 64, 16, [40, 23, 7], False),
        ("babylm", 512, 32, [520, 301], False),  # beyond the stored 512 x 512 table, padded
        ("bnc", 512, 32, [520, 301], True),
    ],
)
def test_converted_original_gives_the_same_masked_lm_logits(tmp_path, layout, max_position, bucket_size, lengths,
                                                             keep_buffers):
    cfg = original_config(max_position, bucket_size)
    original = random_original(cfg, layout)
    ported = convert(tmp_path, original, cfg, layout, keep_buffers)
    assert ported.config.position_layout == layout
    ids, keep = padded_batch(lengths, cfg["vocab_size"])

    with torch.no_grad():
        expected = original(ids.t(), ~keep).transpose(0, 1)  # [B, T, V]
        got = ported(input_ids=ids, attention_mask=keep.long()).logits
    difference = (got - expected).abs().max().item()
    print(f"{layout} M={max_position} T={max(lengths)}: max |logit difference| = {difference:.2e}")
    assert expected.abs().max() > 1.0  # not a degenerate comparison
    assert difference < TOLERANCE


def test_the_two_layouts_differ_so_the_flag_matters(tmp_path):
    cfg = original_config(64, 16)
    original = random_original(cfg, "bnc")
    ported = convert(tmp_path, original, cfg, "babylm", keep_buffers=False)  # the wrong layout
    ids, keep = padded_batch([30], cfg["vocab_size"])
    with torch.no_grad():
        expected = original(ids.t(), ~keep).transpose(0, 1)
        got = ported(input_ids=ids).logits
    assert (got - expected).abs().max() > 1e-2


def test_converter_rejects_position_tables_of_another_config(tmp_path):
    cfg = original_config(64, 16)
    original = random_original(cfg, "babylm")
    torch.save(original.state_dict(), tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 128}))
    from hf_ltg.conversion import convert_ltg_bert

    with pytest.raises(ValueError, match="position_indices.*max_position_embeddings=128"):
        convert_ltg_bert(tmp_path / "model.bin", tmp_path / "out", tmp_path / "config.json")
    assert not (tmp_path / "out").exists()


def test_converter_names_the_tensor_and_both_shapes_on_a_mismatch(tmp_path, capsys):
    cfg = original_config(64, 16)
    original = random_original(cfg, "babylm")
    torch.save(original.state_dict(), tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 48}))
    code = cli_main(["convert", "--from", "ltg-bert", "--config", str(tmp_path / "config.json"),
                     str(tmp_path / "model.bin"), str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2
    assert "transformer.layers.0.mlp.mlp.1.weight" in error and "(80, 32)" in error and "(96, 32)" in error
    assert not (tmp_path / "out").exists()


def test_converter_carries_the_tokenizer_and_its_special_ids(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    cfg = original_config(64, 16)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(cfg["vocab_size"] - 5)]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    torch.save(random_original(cfg, "babylm").state_dict(), tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from hf_ltg.conversion import convert_ltg_bert

    out = convert_ltg_bert(tmp_path / "model.bin", tmp_path / "out", tmp_path / "config.json")
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded("w3 w7")["input_ids"] == [8, 12]
    assert loaded.mask_token == "[MASK]" and loaded.pad_token_id == 0
    config = LtgBertForMaskedLM.from_pretrained(out).config
    assert (config.pad_token_id, config.unk_token_id, config.cls_token_id, config.sep_token_id,
            config.mask_token_id) == (0, 1, 2, 3, 4)


def test_converter_rejects_a_file_of_another_format(tmp_path):
    from safetensors.torch import save_file

    from hf_ltg.conversion import convert_ltg_bert

    save_file({"transformer.wte.weight": torch.zeros(10, 4), "transformer.h.0.ln_1.weight": torch.ones(4)},
              tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(original_config(64, 16)))
    with pytest.raises(ValueError, match="not an original LTG-BERT state dict"):
        convert_ltg_bert(tmp_path / "model.safetensors", tmp_path / "out", tmp_path / "config.json")


@pytest.mark.parametrize("layers, message", [(3, "lacks the tensor 'transformer.layers.2"),
                                             (1, "does not account for, e.g. \\['transformer.layers.1")])
def test_converter_rejects_a_config_with_another_number_of_layers(tmp_path, layers, message):
    from hf_ltg.conversion import convert_ltg_bert

    cfg = original_config(64, 16)
    torch.save(random_original(cfg, "babylm").state_dict(), tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": layers}))
    with pytest.raises(ValueError, match=message):
        convert_ltg_bert(tmp_path / "model.bin", tmp_path / "out", tmp_path / "config.json")
    assert not (tmp_path / "out").exists()
