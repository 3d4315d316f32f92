"""NorBERT4: hf_ltg's family against the release's own code (its padded path) on the same weights, one process.

    python benchmarks/bench_norbert4.py                 # NorBERT4-base shape (4 min on 2 quiet CPU cores)
    python benchmarks/bench_norbert4.py --quick         # a tiny model, a few steps (CI, 5 s)
    python benchmarks/bench_norbert4.py --skip train --decode 64   # a shorter run

The release (ltg/norbert4-*, `modeling_gptbert.py`, mirrored in ltgoslo/NorBERT under
`norbert4/huggingface_prototype/`) runs either flash-attn's varlen kernel (CUDA only) or its padded
path; `Release*` below is a faithful reimplementation of the padded path's computation, module for
module: `CastedLinearIn` / `MultiCastedLinearOrthoIn` multiply every weight by `(scale + 1)` at every
forward, `RotaryPositionalEmbeddings` tables, the window mask `tril(w).triu(-w)` (causal:
`tril().triu(-w)`) made at every forward, `bmm` scores, its `MaskedSoftmax` autograd function, the
LM head over every position and the soft cap. Its causal LM refuses a KV cache (`assert
past_key_values is None`, `assert not use_cache`), so `generate` recomputes the whole sequence for
every token: `release_greedy` does exactly that (without `generate`'s own overhead, which favours
the release). On CUDA the release casts fp32 activations to bf16 by itself; that cast is kept.

Weights: a random state dict in the release's layout, converted to the family with the project's
converter (`hf_ltg.conversion.norbert4.norbert4_model`), so both sides hold the same numbers. Ours
runs with `window_edge="padded"` (|i - j| <= w, the padded path's window; the family's default is the
flash path's |i - j| <= w - 1), so both compute the same function, which the agreement column checks
(max |logit difference| of the forward, greedy tokens identical).

Measured, contestants alternated (A B A B ...), medians over the timed repeats:
- forward: masked-mode MLM logits of `--batch` x `--seq` tokens (no_grad), tokens/s;
- training step: forward + backward + AdamW on the MLM loss (15 % of the tokens labelled), tokens/s;
- decoding: batch-1 greedy causal decoding of each `--decode` length after a `--prompt`-token prompt,
  new tokens/s: ours `generate()` with its KV cache, the release recomputing everything.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

# NorBERT4-base's config.json (ltg/norbert4-base), and a tiny one for --quick.
SIZES = {
    "base": dict(vocab_size=51200, hidden_size=640, intermediate_size=1664, num_layers=24, num_attention_heads=10,
                 query_key_head_size=64, value_head_size=64, max_sequence_length=16384, local_global_ratio=4,
                 global_window_length=8192, local_window_length=256),
    "tiny": dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_layers=4, num_attention_heads=2,
                 query_key_head_size=32, value_head_size=32, max_sequence_length=512, local_global_ratio=2,
                 global_window_length=48, local_window_length=16),
}
COMMON = dict(layer_norm_eps=1e-7, embedding_dropout=0.1, attention_dropout=0.0, hidden_dropout=0.0,
              classifier_dropout=0.2, pad_token_id=0, unk_token_id=1, bos_token_id=2, eos_token_id=3, mask_token_id=4,
              rope_theta=160000, deterministic_flash_attn=False, architectures=["GptBertForMaskedLM"])


# --------------------------------------------------------------------------- the release's padded path

def gelu_new(x):  # transformers.activations.gelu_new, which the release imports
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class CastedLinearIn(nn.Linear):
    def __init__(self, in_features, out_features, bias):
        super().__init__(in_features, out_features, bias=bias)
        self.scale = nn.Parameter(torch.ones(in_features))

    def forward(self, x):
        return F.linear(x, (self.weight * (self.scale + 1.0).unsqueeze(0)).type_as(x),
                        bias=self.bias.type_as(x) if self.bias is not None else None)


class MultiCastedLinearOrthoIn(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(n, in_features)) for n in out_features])
        self.scale = nn.Parameter(torch.ones(in_features))

    def forward(self, x):
        return F.linear(x, (torch.cat(list(self.weights), dim=0) * (self.scale + 1.0).unsqueeze(0)).type_as(x))


class ReleaseEmbedding(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.word_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"], elementwise_affine=False, bias=False)
        self.word_scale = nn.Parameter(torch.zeros(c["hidden_size"]))
        self.dropout = nn.Dropout(c["embedding_dropout"])

    def forward(self, input_ids):
        return self.dropout(self.word_norm(self.word_embedding(input_ids)) * (self.word_scale + 1.0))


class ReleaseRotary(nn.Module):
    def __init__(self, c, theta):
        super().__init__()
        d = c["query_key_head_size"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        embedding = torch.einsum("n, d -> nd", torch.arange(c["max_sequence_length"], dtype=torch.float32), inv_freq)
        embedding = torch.cat([embedding, embedding], dim=-1).unsqueeze(0)
        self.register_buffer("cos_matrix", embedding.cos(), persistent=False)
        self.register_buffer("sin_matrix", embedding.sin(), persistent=False)

    def forward(self, x):
        hidden = x.float()
        seq_len = x.shape[2]
        cos, sin = self.cos_matrix[:, None, :seq_len, :], self.sin_matrix[:, None, :seq_len, :]
        half = x.size(-1) // 2
        rotated = torch.cat([-hidden[:, :, :, half:], hidden[:, :, :, :half]], dim=-1)
        return (hidden * cos + rotated * sin).type_as(x)


class MaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, dim):
        ctx.dim = dim
        x.masked_fill_(mask, float("-inf"))
        x = torch.softmax(x, ctx.dim)
        x.masked_fill_(mask, 0.0)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad_output):
        (output,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad_output, output, ctx.dim, output.dtype), None, None


class ReleaseAttention(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.is_causal = False  # the release: config.is_decoder (GptBertForCausalLM sets it)
        self.d_qk, self.d_v, self.heads = c["query_key_head_size"], c["value_head_size"], c["num_attention_heads"]
        eps, D = c["layer_norm_eps"], c["hidden_size"]
        self.q_out_dim = self.d_qk * self.heads
        self.qk_proj = MultiCastedLinearOrthoIn(D, [self.q_out_dim, self.q_out_dim])
        self.v_proj = CastedLinearIn(D, self.d_v * self.heads, bias=False)
        self.out_proj = CastedLinearIn(self.d_v * self.heads, D, bias=False)
        self.pre_v_norm = nn.LayerNorm(D, eps=eps, elementwise_affine=False)
        self.pre_qk_norm = nn.LayerNorm(D, eps=eps, elementwise_affine=False)
        self.inter_norm = nn.LayerNorm(self.d_v * self.heads, eps=eps, elementwise_affine=False)
        self.q_norm = nn.LayerNorm(self.d_qk, eps=eps, elementwise_affine=False, bias=False)
        self.k_norm = nn.LayerNorm(self.d_qk, eps=eps, elementwise_affine=False, bias=False)
        self.k_scale = nn.Parameter(torch.ones(self.heads, self.d_qk))
        self.q_scale = nn.Parameter(torch.ones(self.heads, self.d_qk))
        self.attention_dropout = nn.Dropout(c["attention_dropout"])
        self.dropout = nn.Dropout(c["hidden_dropout"])
        is_global = (layer_idx + 1) % c["local_global_ratio"] == 0
        self.rope_embedding = ReleaseRotary(c, 160_000 if is_global else 10_000)
        self.window_length = c["global_window_length"] if is_global else c["local_window_length"]
        self.scale = 1.0 / math.sqrt(self.d_qk)

    def _get_window_mask(self, query_length, key_length, device):
        mask = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
        if self.is_causal:
            mask = mask.tril().triu(diagonal=-self.window_length)
        else:
            mask = mask.tril(diagonal=self.window_length).triu(diagonal=-self.window_length)
        return mask.view(1, 1, query_length, key_length)

    def attention_operation(self, query, key, value, padding_mask):
        batch_size, _, query_length, _ = query.size()
        key_length = key.size(2)
        with torch.no_grad():
            window_mask = self._get_window_mask(query_length, key_length, query.device)
            attention_mask = padding_mask & window_mask if padding_mask is not None else window_mask
        scores = torch.bmm(query.flatten(0, 1), key.transpose(-1, -2).flatten(0, 1)) * self.scale
        scores = scores.view(batch_size, self.heads, query_length, key_length)
        probs = self.attention_dropout(MaskedSoftmax.apply(scores, ~attention_mask, -1))
        output = torch.bmm(probs.flatten(0, 1), value.flatten(0, 1))
        return output.view(batch_size, self.heads, query_length, self.d_v)

    def forward(self, hidden_layer, qk_layer, padding_info):
        batch_size = hidden_layer.size(0)
        hidden_layer = self.pre_v_norm(hidden_layer.float()).type_as(hidden_layer)
        qk_layer = self.pre_qk_norm(qk_layer.float()).type_as(qk_layer)
        query, key = self.qk_proj(qk_layer).tensor_split([self.q_out_dim], dim=-1)
        value = self.v_proj(hidden_layer)
        query_length, key_length = query.size(1), key.size(1)
        query = query.reshape(batch_size, query_length, self.heads, self.d_qk).transpose(1, 2)
        key = key.reshape(batch_size, key_length, self.heads, self.d_qk).transpose(1, 2)
        value = value.reshape(batch_size, key_length, self.heads, self.d_v).transpose(1, 2)
        query = ((self.q_scale + 1.0).unsqueeze(1).unsqueeze(0) * self.q_norm(query.float())).type_as(query)
        key = ((self.k_scale + 1.0).unsqueeze(1).unsqueeze(0) * self.k_norm(key.float())).type_as(key)
        query, key = self.rope_embedding(query), self.rope_embedding(key)
        output = self.attention_operation(query, key, value, padding_info)
        output = output.transpose(1, 2).flatten(2, 3)
        output = self.inter_norm(output.float()).type_as(output)
        return self.dropout(self.out_proj(output))


class ReleaseFeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps, D, inner = c["layer_norm_eps"], c["hidden_size"], c["intermediate_size"]
        self.pre_norm = nn.LayerNorm(D, eps=eps, elementwise_affine=False)
        self.up_proj = MultiCastedLinearOrthoIn(D, [inner, inner])
        self.inter_norm = nn.LayerNorm(inner, eps=eps, elementwise_affine=False)
        self.down_proj = CastedLinearIn(inner, D, bias=False)
        self.dropout = nn.Dropout(c["hidden_dropout"])

    def forward(self, x):
        x = self.pre_norm(x.float()).type_as(x)
        x, gate = self.up_proj(x).chunk(2, dim=-1)
        x = x * gelu_new(gate)
        x = self.inter_norm(x.float()).type_as(x)
        return self.dropout(self.down_proj(x))


class ReleaseLayer(nn.Module):
    def __init__(self, c, layer_idx):
        super().__init__()
        self.attention = ReleaseAttention(c, layer_idx)
        self.mlp = ReleaseFeedForward(c)
        self.lambdas_v = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.lambdas_qk = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.lambdas_mlp = nn.Parameter(torch.tensor([1.0, 1.0, 0.0]))
        self.lambdas_out = nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 0.0]))

    @staticmethod
    def normalize_lambda(lambdas):
        return lambdas / (lambdas.abs().mean() + 1e-6)

    def forward(self, hidden_layer, embeddings, padding_info):
        lv, lqk = self.normalize_lambda(self.lambdas_v), self.normalize_lambda(self.lambdas_qk)
        lm, lo = self.normalize_lambda(self.lambdas_mlp), self.normalize_lambda(self.lambdas_out)
        attention_output = self.attention(lv[0] * hidden_layer + lv[1] * embeddings,
                                          lqk[0] * hidden_layer + lqk[1] * embeddings, padding_info)
        mlp_layer = self.mlp(lm[0] * attention_output + lm[1] * hidden_layer + lm[2] * embeddings)
        return lo[0] * mlp_layer + lo[1] * attention_output + lo[2] * hidden_layer + lo[3] * embeddings


class ReleaseEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([ReleaseLayer(c, i) for i in range(c["num_layers"])])


class ReleaseLMClassifier(nn.Module):
    def __init__(self, c):
        super().__init__()
        eps, D = c["layer_norm_eps"], c["hidden_size"]
        self.pre_norm = nn.LayerNorm(D, eps=eps, elementwise_affine=False)
        self.projection = CastedLinearIn(D, D, bias=False)
        self.post_norm = nn.LayerNorm(D, eps=eps, elementwise_affine=False)
        self.emb2vocab = CastedLinearIn(D, c["vocab_size"], bias=True)

    def forward(self, x):
        x = self.pre_norm(x.float()).type_as(x)
        x = gelu_new(self.projection(x))
        x = self.post_norm(x.float()).type_as(x)
        return self.emb2vocab(x)


class ReleaseGptBert(nn.Module):
    """GptBertForMaskedLM (causal=False) / GptBertForCausalLM (causal=True) on the padded path."""

    def __init__(self, c):
        super().__init__()
        self.config = c
        self.causal = False
        self.embedding = ReleaseEmbedding(c)
        self.encoder = ReleaseEncoder(c)
        self.classifier = ReleaseLMClassifier(c)
        self.classifier.emb2vocab.weight = self.embedding.word_embedding.weight  # tied (_tied_weights_keys)

    def set_causal(self, causal: bool) -> None:
        """GptBertForCausalLM (True) or GptBertForMaskedLM (False) on the same weights."""
        self.causal = causal
        for layer in self.encoder.layers:
            layer.attention.is_causal = causal

    def forward(self, input_ids, attention_mask=None, labels=None):
        batch_size, seq_length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, seq_length, dtype=torch.bool, device=input_ids.device)
        padding_info = attention_mask.bool().unsqueeze(1).unsqueeze(2)
        static_embeddings = self.embedding(input_ids)
        original_dtype = static_embeddings.dtype
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported() and static_embeddings.dtype == torch.float32:
            static_embeddings = static_embeddings.bfloat16()  # the release's own cast on CUDA
        hidden, embeddings = static_embeddings, static_embeddings
        for layer in self.encoder.layers:
            hidden = layer(hidden, embeddings, padding_info)
        hidden = hidden.to(original_dtype)
        prediction = 30 * torch.sigmoid(self.classifier(hidden) / 7.5)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(prediction[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        if self.causal:
            return loss, prediction
        bos = torch.zeros(batch_size, 1, self.config["vocab_size"], dtype=prediction.dtype, device=prediction.device)
        bos[:, :, self.config["bos_token_id"]] = 1.0
        return loss, torch.cat([bos, prediction[:, :-1]], dim=1)


def release_state_dict(c, seed=0):
    """Random weights in the release's layout (scales and mixing weights away from their start)."""
    g = torch.Generator().manual_seed(seed)
    D, inner, H, V = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["vocab_size"]
    dqk, dv = c["query_key_head_size"], c["value_head_size"]
    std = math.sqrt(2.0 / (5.0 * D))

    def r(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    t = {"embedding.word_embedding.weight": r(V, D), "embedding.word_scale": r(D, s=0.1)}
    for i in range(c["num_layers"]):
        p = f"encoder.layers.{i}"
        t.update({
            f"{p}.attention.qk_proj.weights.0": r(H * dqk, D), f"{p}.attention.qk_proj.weights.1": r(H * dqk, D),
            f"{p}.attention.qk_proj.scale": r(D, s=0.1), f"{p}.attention.v_proj.weight": r(H * dv, D),
            f"{p}.attention.v_proj.scale": r(D, s=0.1), f"{p}.attention.out_proj.weight": r(D, H * dv),
            f"{p}.attention.out_proj.scale": r(H * dv, s=0.1), f"{p}.attention.q_scale": r(H, dqk, s=0.2),
            f"{p}.attention.k_scale": r(H, dqk, s=0.2), f"{p}.mlp.up_proj.weights.0": r(inner, D),
            f"{p}.mlp.up_proj.weights.1": r(inner, D), f"{p}.mlp.up_proj.scale": r(D, s=0.1),
            f"{p}.mlp.down_proj.weight": r(D, inner), f"{p}.mlp.down_proj.scale": r(inner, s=0.1),
            f"{p}.lambdas_v": torch.tensor([1.0, 0.0]) + r(2, s=0.3),
            f"{p}.lambdas_qk": torch.tensor([1.0, 0.0]) + r(2, s=0.3),
            f"{p}.lambdas_mlp": torch.tensor([1.0, 1.0, 0.0]) + r(3, s=0.3),
            f"{p}.lambdas_out": torch.tensor([1.0, 1.0, 1.0, 0.0]) + r(4, s=0.3),
        })
    t.update({"classifier.projection.weight": r(D, D), "classifier.projection.scale": r(D, s=0.1),
              "classifier.emb2vocab.weight": t["embedding.word_embedding.weight"],
              "classifier.emb2vocab.bias": r(V, s=0.5), "classifier.emb2vocab.scale": r(D, s=0.1)})
    return t


# --------------------------------------------------------------------------- timing

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(contestants: dict, warmup: int, repeats: int, device) -> dict:
    """{name: fn} -> {name: median seconds}, the contestants in turn (A B A B ...)."""
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def release_greedy(model, prompt, new_tokens):
    """The release's causal generation: the whole sequence through the model for every new token."""
    ids = prompt
    for _ in range(new_tokens):
        _, logits = model(ids)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1]:]


@torch.no_grad()
def our_greedy(model, prompt, new_tokens):
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                         do_sample=False)
    return out[:, prompt.shape[1]:]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def load_average() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "n/a"


def fmt(value):
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


# --------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, short sequences, one repeat (CI)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights and activations of both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512, help="forward and training length (local window: 256)")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--decode", default="64,256", help="comma list of new-token counts (batch 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of forward and training")
    parser.add_argument("--decode-repeats", type=int, default=1, help="timed repeats of each decoding length")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: forward, train, decode")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.prompt, args.decode, args.warmup, args.repeats = 2, 64, 8, "16,48", 1, 1
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]

    import transformers

    from hf_ltg.conversion.norbert4 import norbert4_model
    from hf_ltg.norbert4 import Norbert4ForCausalLM

    c = {**SIZES["tiny" if args.quick else "base"], **COMMON}
    tensors = release_state_dict(c)
    release = ReleaseGptBert(c)
    missing, unexpected = release.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"classifier.emb2vocab.weight"}, (missing, unexpected)
    ours, _ = norbert4_model(tensors, c)
    ours.config.window_edge = "padded"  # the release's padded path keeps |i - j| <= w
    release, ours = release.to(device=device, dtype=dtype).eval(), ours.to(device=device, dtype=dtype).eval()
    ours_causal = Norbert4ForCausalLM(ours.config).to(device=device, dtype=dtype).eval()
    ours_causal.load_state_dict(ours.state_dict())
    ours_causal.generation_config.eos_token_id = None  # decode the full length, as the release's loop does
    ours_causal.generation_config.pad_token_id = c["pad_token_id"]
    n_params = sum(p.numel() for p in ours.parameters())

    print(f"bench_norbert4: NorBERT4-{'tiny' if args.quick else 'base'} shape, {n_params / 1e6:.1f}M parameters, "
          f"{args.dtype}, device {device} ({cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name()}), "
          f"{args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"ours: {ours.config._attn_implementation} attention; load average {load_average()}", flush=True)

    rows = []
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, c["vocab_size"], (args.batch, args.seq), generator=g).to(device)
    ids[:, 0] = c["bos_token_id"]
    mask = torch.ones_like(ids)
    tokens = args.batch * args.seq

    if "forward" not in skip:
        with torch.no_grad():
            theirs, mine = release(ids, mask)[1], ours(ids, attention_mask=mask).logits
            diff = (theirs.float() - mine.float()).abs().max().item()
            times = alternate({"release": lambda: release(ids, mask), "ours": lambda: ours(ids, attention_mask=mask)},
                              args.warmup, args.repeats, device)
        rows.append(dict(row=f"forward (masked) B={args.batch} T={args.seq}", unit="tok/s",
                         release=tokens / times["release"], ours=tokens / times["ours"],
                         agreement=f"max |logit diff| {diff:.1e}"))
        print(rows[-1], flush=True)

    if "train" not in skip:
        labels = torch.full_like(ids, -100)
        chosen = torch.rand(ids.shape, generator=g).to(device) < 0.15
        chosen[:, 0] = False
        labels[chosen] = ids[chosen]
        optimizers = {}

        def step(name):
            model = release if name == "release" else ours
            model.train()
            if name not in optimizers:
                optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-5)
            loss = release(ids, mask, labels)[0] if name == "release" else ours(ids, attention_mask=mask,
                                                                                  labels=labels).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            model.eval()

        # the losses agree before any step (dropout off in eval mode)
        with torch.no_grad():
            theirs_loss = release(ids, mask, labels)[0].item()
            loss_diff = abs(theirs_loss - ours(ids, attention_mask=mask, labels=labels).loss.item())
        times = alternate({"release": lambda: step("release"), "ours": lambda: step("ours")},
                          args.warmup, args.repeats, device)
        del optimizers
        rows.append(dict(row=f"training step (MLM, AdamW) B={args.batch} T={args.seq}", unit="tok/s",
                         release=tokens / times["release"], ours=tokens / times["ours"],
                         agreement=f"|loss diff| {loss_diff:.1e}"))
        print(rows[-1], flush=True)
        # the training steps moved the two copies apart: restore the common weights for decoding
        release.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}, strict=False)
        ours_reloaded, _ = norbert4_model(tensors, c)
        ours_causal.load_state_dict(ours_reloaded.to(device=device, dtype=dtype).state_dict())

    if "decode" not in skip:
        release.set_causal(True)
        prompt = ids[:1, :args.prompt]
        for new_tokens in [int(n) for n in args.decode.split(",") if n]:
            generated = {}  # the tokens of the last timed run of each

            def decode(name, n=new_tokens, generated=generated):
                generated[name] = (release_greedy(release, prompt, n) if name == "release"
                                   else our_greedy(ours_causal, prompt, n))

            times = alternate({"release": lambda: decode("release"), "ours": lambda: decode("ours")},
                              0, args.decode_repeats, device)
            same = torch.equal(generated["release"], generated["ours"])
            rows.append(dict(row=f"decode b1, {new_tokens} new tokens after {args.prompt}", unit="tok/s",
                             release=new_tokens / times["release"], ours=new_tokens / times["ours"],
                             agreement="greedy tokens identical" if same else "greedy tokens DIFFER"))
            print(rows[-1], flush=True)
        release.set_causal(False)

    print(f"\nbench_norbert4 results (load average at the end {load_average()}):")
    header = ("", "unit", "release (padded path)", "ours", "ours/release", "agreement")
    table = [header] + [(r["row"], r["unit"], fmt(r["release"]), fmt(r["ours"]), f"{r['ours'] / r['release']:.2f}x",
                         r["agreement"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "device": str(device), "dtype": args.dtype,
                                               "threads": args.threads, "cpu": cpu_name(),
                                               "load_average": load_average(), "pid": os.getpid()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
