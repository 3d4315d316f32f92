"""GPT-BERT conversion against an implementation of GPT-BERT's own code written here.

`GptBert` below re-implements ltgoslo/gpt-bert's `pretraining/model.py` (and, with `extra=True`,
`pretraining/model_extra.py`: gated attention and DenseFormer layer weighting, the model that
`train_multi_gpu.py` trains) from reading that code: sequence-first `[T, B, D]`, a boolean
attention mask `[B, 1, T, T]` with True = blocked (as its datasets build it: padding rows and
columns blocked, `tril` for causal batches), its module names and therefore its state-dict key
layout (`transformer.attention_layers`, `transformer.mlp_layers`, `transformer.dwa_modules`,
`classifier.nonlinearity`). It shares no code with hf_ltg. Random weights (normal, std 0.1, every
parameter including the relative LayerNorm and the layer weights) are saved in that layout,
converted with `hf-ltg convert --from gpt-bert`, and compared:

- masked mode (`AutoModelForMaskedLM`): the logits at position j equal the original's at j - 1
  (GPT-BERT's masked next-token prediction), bidirectional mask, right padding;
- causal mode (`AutoModelForCausalLM`): the logits at every position equal the original's under
  its causal mask, with right and with left padding; greedy generation equals greedy decoding
  with the original, with and without the KV cache;
- the loss with BERT-style labels equals GPT-BERT's training loss on its shifted targets;
- fill-mask pipeline scores equal the original's softmax at the position before the mask.
fp32 tolerance 1e-4 at real tokens; bf16 tolerance stated in `BF16_TOLERANCE`.
"""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hf_ltg.cli import main as cli_main

TOLERANCE = 1e-4
# bf16 keeps 8 bits of mantissa: the causal logits (|logit| up to ~10 here) of a 2-layer model in
# bf16 stay within 0.15 of the fp32 original's, and their argmax agrees at >= 90% of positions.
BF16_TOLERANCE = 0.15
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<mask>"]  # GPT-BERT's create_tokenizer order: ids 0..4
PAD, CLS, MASK = 3, 1, 4


# ---------------------------------------------------------------- GPT-BERT, from its pretraining code

def log_bucket_positions(relative, bucket_size: int, max_position: int) -> torch.Tensor:
    sign = torch.sign(relative)
    mid = bucket_size // 2
    magnitude = torch.where((relative < mid) & (relative > -mid), mid - 1, relative.abs().clamp(max=max_position - 1))
    log_pos = torch.ceil(torch.log(magnitude / mid) / math.log((max_position - 1) / mid) * (mid - 1)).int() + mid
    return torch.where(magnitude <= mid, relative, log_pos * sign).long()


class Attention(nn.Module):
    def __init__(self, cfg, extra):
        super().__init__()
        d = cfg["hidden_size"]
        self.cfg, self.extra = cfg, extra
        self.heads = cfg["num_attention_heads"]
        self.head_size = d // self.heads
        self.in_proj_qk = nn.Linear(d, 2 * d)
        if extra:
            self.in_proj_vg = nn.Linear(d, 2 * d)
        else:
            self.in_proj_v = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.pre_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"], elementwise_affine=False)
        self.post_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"], elementwise_affine=False)
        m = cfg["max_position_embeddings"]
        relative = torch.arange(m)[:, None] - torch.arange(m)[None, :]
        table = cfg["position_bucket_size"] - 1 + log_bucket_positions(relative, cfg["position_bucket_size"], m)
        self.register_buffer("position_indices", table, persistent=True)
        self.dropout = nn.Dropout(cfg["attention_probs_dropout_prob"])
        self.scale = 1.0 / math.sqrt(3 * self.head_size)

    def forward(self, x, mask, relative):  # x [T, B, D]; mask [B, 1, T, T], True = blocked
        length, batch, d = x.shape
        x = self.pre_layer_norm(x)
        query, key = self.in_proj_qk(x).chunk(2, dim=2)
        if self.extra:
            value, gate = self.in_proj_vg(x).chunk(2, dim=2)
            gate = F.gelu(gate)
        else:
            value = self.in_proj_v(x)
        pos = F.embedding(self.position_indices[:length, :length], self.in_proj_qk(self.dropout(relative)))
        query_pos, key_pos = pos.chunk(2, dim=-1)  # halves first, then heads
        query_pos = query_pos.view(length, length, self.heads, self.head_size)
        key_pos = key_pos.view(length, length, self.heads, self.head_size)
        query = query.reshape(length, batch * self.heads, self.head_size).transpose(0, 1)
        key = key.reshape(length, batch * self.heads, self.head_size).transpose(0, 1)
        value = value.reshape(length, batch * self.heads, self.head_size).transpose(0, 1)
        scores = torch.bmm(query, key.transpose(1, 2) * self.scale).view(batch, self.heads, length, length)
        query = query.view(batch, self.heads, length, self.head_size)
        key = key.view(batch, self.heads, length, self.head_size)
        scores = scores + torch.einsum("bhqd,qkhd->bhqk", query, key_pos * self.scale)
        scores = scores + torch.einsum("bhkd,qkhd->bhqk", key * self.scale, query_pos)
        probs = torch.softmax(scores.masked_fill(mask, float("-inf")), -1).masked_fill(mask, 0.0)
        context = torch.bmm(self.dropout(probs).flatten(0, 1), value)  # [B*H, T, hd]
        context = context.transpose(0, 1).reshape(length, batch, d)
        if self.extra:
            context = context * gate
        return self.dropout(self.out_proj(self.post_layer_norm(context)))


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


class DWAModules(nn.Module):
    def __init__(self, n_blocks):
        super().__init__()
        self.alphas = nn.ParameterList([nn.Parameter(torch.zeros(i + 2)) for i in range(n_blocks)])


class Encoder(nn.Module):
    def __init__(self, cfg, extra):
        super().__init__()
        layers = cfg["num_hidden_layers"]
        self.extra = extra
        self.attention_layers = nn.ModuleList([Attention(cfg, extra) for _ in range(layers)])
        self.mlp_layers = nn.ModuleList([FeedForward(cfg) for _ in range(layers)])
        if extra:
            self.dwa_modules = DWAModules(2 * layers)

    def forward(self, x, mask, relative):
        states = [x]  # the DWA accumulator: embedding output, then every sub-layer output

        def mix(x, block):
            if not self.extra:
                return x
            states.append(x)
            return torch.tensordot(self.dwa_modules.alphas[block], torch.stack(states), dims=1)

        for i, (attention, mlp) in enumerate(zip(self.attention_layers, self.mlp_layers)):
            x = mix(x + attention(x, mask, relative), 2 * i)
            x = mix(x + mlp(x), 2 * i + 1)
        return x


class Embedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embedding = nn.Embedding(cfg["vocab_size"], d)
        self.word_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"], elementwise_affine=False)
        self.dropout = nn.Dropout(cfg["hidden_dropout_prob"])
        self.relative_embedding = nn.Parameter(torch.empty(2 * cfg["position_bucket_size"] - 1, d))
        self.relative_layer_norm = nn.LayerNorm(d, cfg["layer_norm_eps"])

    def forward(self, input_ids):
        return (self.dropout(self.word_layer_norm(self.word_embedding(input_ids))),
                self.relative_layer_norm(self.relative_embedding))


class MaskClassifier(nn.Module):
    def __init__(self, cfg, embedding_weight):
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.nonlinearity = nn.Sequential(
            nn.LayerNorm(d, eps, elementwise_affine=False), nn.Linear(d, d), nn.GELU(),
            nn.LayerNorm(d, eps, elementwise_affine=False), nn.Dropout(cfg["hidden_dropout_prob"]),
            nn.Linear(d, cfg["vocab_size"]),
        )
        self.nonlinearity[-1].weight = embedding_weight


class GptBert(nn.Module):
    def __init__(self, cfg, extra=False):
        super().__init__()
        self.embedding = Embedding(cfg)
        self.transformer = Encoder(cfg, extra)
        self.classifier = MaskClassifier(cfg, self.embedding.word_embedding.weight)

    def forward(self, input_ids, attention_mask):  # [T, B] ids; [B, T, T] bool, True = blocked
        static, relative = self.embedding(input_ids)
        return self.classifier.nonlinearity(self.transformer(static, attention_mask.unsqueeze(1), relative))


# ---------------------------------------------------------------- helpers

def gpt_bert_config(**overrides) -> dict:
    return dict(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1, hidden_size=32, intermediate_size=40,
                max_position_embeddings=64, position_bucket_size=16, num_attention_heads=2, num_hidden_layers=2,
                vocab_size=97, layer_norm_eps=1e-5) | overrides


def random_gpt_bert(cfg, extra, seed=0):
    torch.manual_seed(seed)
    model = GptBert(cfg, extra).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def blocked(keep, causal):
    """GPT-BERT's mask from a [B, T] keep-mask: [B, T, T], True = blocked (padding rows and columns)."""
    allowed = keep[:, :, None] & keep[:, None, :]
    if causal:
        allowed = allowed & torch.ones(keep.size(1), keep.size(1), dtype=torch.bool).tril()
    return ~allowed


def run_original(model, ids, keep, causal):
    with torch.no_grad():
        return model(ids.t(), blocked(keep, causal)).transpose(0, 1)  # [B, T, V]


def write_tokenizer(path, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # GPT-BERT's template: <s> before the text, nothing after.
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", CLS)])
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(path))


def save_original(tmp_path, model, cfg):
    torch.save(model.state_dict(), tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(tmp_path / "tokenizer.json", cfg["vocab_size"])


def convert(tmp_path, model, cfg, name="converted"):
    save_original(tmp_path, model, cfg)
    out = tmp_path / name
    assert cli_main(["convert", "--from", "gpt-bert", "--config", str(tmp_path / "config.json"),
                     "--tokenizer", str(tmp_path / "tokenizer.json"), str(tmp_path / "model.bin"), str(out)]) == 0
    return out


def padded(lengths, vocab_size, left=False, seed=1):
    """Random ids after <s>, padded with <pad>; [B, T] ids and keep-mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(len(SPECIALS), vocab_size, (len(lengths), width), generator=generator)
    ids[:, 0] = CLS
    positions = torch.arange(width)[None, :]
    lengths = torch.tensor(lengths)[:, None]
    keep = positions >= width - lengths if left else positions < lengths
    if left:  # <s> first among the real tokens
        ids = torch.where(positions == width - lengths, torch.full_like(ids, CLS), ids)
    return ids.masked_fill(~keep, PAD), keep


_CONVERTED = {}


def converted_once(extra, tmp_path_factory):
    """(original, converted folder, config, masked-mode model, causal-mode model), built once per file."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if extra not in _CONVERTED:
        cfg = gpt_bert_config()
        original = random_gpt_bert(cfg, extra=extra)
        out = convert(tmp_path_factory.mktemp("gpt_bert"), original, cfg)
        masked = AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
        causal = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        _CONVERTED[extra] = original, out, cfg, masked, causal
    return _CONVERTED[extra]


@pytest.fixture(params=[False, True], ids=["model.py", "model_extra.py"])
def converted(request, tmp_path_factory):
    """Each of GPT-BERT's two model files: model.py and model_extra.py (gate and layer weighting)."""
    return converted_once(request.param, tmp_path_factory)


# ---------------------------------------------------------------- parity

def test_masked_mode_logits_at_a_position_are_the_originals_at_the_position_before(converted):
    original, _, cfg, masked, _ = converted
    ids, keep = padded([30, 17, 6], cfg["vocab_size"])
    ids[0, 5] = ids[1, 9] = MASK
    expected = run_original(original, ids, keep, causal=False)
    with torch.no_grad():
        got = masked(input_ids=ids, attention_mask=keep.long()).logits
    real = keep[:, 1:] & keep[:, :-1]
    difference = (got[:, 1:] - expected[:, :-1])[real].abs().max().item()
    print(f"masked mode: max |logit difference| = {difference:.2e} over {int(real.sum())} positions")
    assert expected[:, :-1][real].abs().max() > 1.0  # not a degenerate comparison
    assert difference < TOLERANCE
    assert torch.all(got[:, 0] == 0)  # nothing precedes <s>


@pytest.mark.parametrize("left", [False, True], ids=["right padding", "left padding"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_causal_mode_logits_are_the_originals_under_its_causal_mask(converted, left, attention):
    from transformers import AutoModelForCausalLM

    original, out, cfg, _, causal = converted
    if attention == "eager":
        causal = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, attn_implementation="eager").eval()
    assert causal.config._attn_implementation == attention
    ids, keep = padded([25, 12, 4], cfg["vocab_size"], left=left)
    expected = run_original(original, ids, keep, causal=True)
    with torch.no_grad():
        got = causal(input_ids=ids, attention_mask=keep.long()).logits
    difference = (got - expected)[keep].abs().max().item()
    print(f"causal mode ({attention}, {'left' if left else 'right'} padding): max |logit difference| = {difference:.2e}")
    assert expected[keep].abs().max() > 1.0
    assert difference < TOLERANCE


def test_in_float64_both_modes_equal_the_original_to_rounding(converted):
    """fp32 differences are rounding, not math: in float64 they vanish (SDPA computes in float64;
    the eager path takes its softmax in float32). At base size (768 x 12, T = 128) the fp32
    difference is ~5e-4 on logits up to 13, the original's own fp32 error against float64 (4e-4)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    original, out, cfg, _, _ = converted
    original = copy.deepcopy(original).double()
    ids, keep = padded([30, 17], cfg["vocab_size"], seed=9)
    load = dict(trust_remote_code=True, dtype=torch.float64, attn_implementation="sdpa")
    masked = AutoModelForMaskedLM.from_pretrained(out, **load).eval()
    causal = AutoModelForCausalLM.from_pretrained(out, **load).eval()
    with torch.no_grad():
        masked_logits = masked(input_ids=ids, attention_mask=keep.long()).logits
        causal_logits = causal(input_ids=ids, attention_mask=keep.long()).logits
    real = keep[:, 1:] & keep[:, :-1]
    bidirectional = run_original(original, ids, keep, causal=False)
    assert (masked_logits[:, 1:] - bidirectional[:, :-1])[real].abs().max() < 1e-10
    assert (causal_logits - run_original(original, ids, keep, causal=True))[keep].abs().max() < 1e-10


def test_both_modes_read_the_same_weights_but_differ(converted):
    _, _, cfg, masked, causal = converted
    for (name, a), b in zip(masked.ltg_bert.state_dict().items(), causal.ltg_bert.state_dict().values()):
        assert torch.equal(a, b), name
    ids, keep = padded([20], cfg["vocab_size"])
    with torch.no_grad():
        bidirectional = masked(input_ids=ids).logits[:, 1:]
        left_to_right = causal(input_ids=ids).logits[:, :-1]
    assert (bidirectional - left_to_right).abs().max() > 1e-2  # the mode is a real choice


def test_masked_loss_with_bert_labels_is_gpt_berts_training_loss(converted):
    """GPT-BERT's MaskedDataset: input = seq[:-1], target = masked-token ids of seq[1:]; the original
    scores the prediction at i against target i. Ours takes labels at the masked positions themselves."""
    original, _, cfg, masked, _ = converted
    ids, keep = padded([24, 24], cfg["vocab_size"], seed=3)
    masked_positions = torch.zeros_like(keep)
    masked_positions[0, [3, 4, 11]] = masked_positions[1, [1, 7, 20, 23]] = True
    labels = ids.masked_fill(~masked_positions, -100)
    inputs = ids.masked_fill(masked_positions, MASK)
    # The original's view: targets shifted left by one, the prediction at i is for token i + 1.
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
    logits = run_original(original, inputs, keep, causal=False)
    expected = F.cross_entropy(logits[targets != -100], targets[targets != -100])
    with torch.no_grad():
        got = masked(input_ids=inputs, attention_mask=keep.long(), labels=labels).loss
    assert abs(got.item() - expected.item()) < TOLERANCE


def test_fill_mask_pipeline_scores_are_the_originals_prediction_for_the_masked_token(converted):
    from transformers import AutoTokenizer, pipeline

    original, out, cfg, masked, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(out)
    unmasker = pipeline("fill-mask", model=masked, tokenizer=tokenizer, top_k=5)
    answers = unmasker("w3 w17 w8 <mask> w40 w2")
    ids = tokenizer("w3 w17 w8 <mask> w40 w2", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == CLS and ids[0, 4] == MASK
    probabilities = run_original(original, ids, torch.ones_like(ids, dtype=torch.bool), causal=False)[0, 3].softmax(-1)
    top = probabilities.topk(5)
    assert [a["token"] for a in answers] == top.indices.tolist()
    assert max(abs(a["score"] - p) for a, p in zip(answers, top.values.tolist())) < 1e-5


# ---------------------------------------------------------------- generation

def greedy_with_original(original, prompt, steps):
    ids = prompt
    for _ in range(steps):
        keep = torch.ones_like(ids, dtype=torch.bool)
        next_id = run_original(original, ids, keep, causal=True)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_generate_with_cache_matches_without_cache_and_the_original(converted):
    original, _, cfg, _, causal = converted
    prompt, _ = padded([7], cfg["vocab_size"], seed=5)
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    with torch.no_grad():
        cached = causal.generate(prompt, attention_mask=torch.ones_like(prompt), use_cache=True, **settings)
        uncached = causal.generate(prompt, attention_mask=torch.ones_like(prompt), use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_with_original(original, prompt, 12))


def test_left_padded_batch_generates_what_each_prompt_generates_alone(converted):
    _, _, cfg, _, causal = converted
    ids, keep = padded([9, 4], cfg["vocab_size"], left=True, seed=6)
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    with torch.no_grad():
        batch = causal.generate(ids, attention_mask=keep.long(), **settings)
        for row in range(2):
            alone = ids[row][keep[row]][None]
            single = causal.generate(alone, attention_mask=torch.ones_like(alone), **settings)
            assert torch.equal(batch[row, -10:], single[0, -10:])


def test_bf16_causal_mode_stays_within_the_stated_tolerance(converted):
    from transformers import AutoModelForCausalLM

    original, out, cfg, _, _ = converted
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.bfloat16).eval()
    ids, keep = padded([20, 9], cfg["vocab_size"], left=True, seed=7)
    expected = run_original(original, ids, keep, causal=True)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=keep.long()).logits.float()
        generated = model.generate(ids, attention_mask=keep.long(), max_new_tokens=5, do_sample=False,
                                   pad_token_id=PAD, eos_token_id=None)
    difference = (got - expected)[keep].abs().max().item()
    agreement = (got.argmax(-1) == expected.argmax(-1))[keep].float().mean().item()
    print(f"bf16 causal: max |logit difference| = {difference:.3f}, argmax agreement {agreement:.1%}")
    assert got.dtype == torch.float32 and model.dtype == torch.bfloat16
    assert difference < BF16_TOLERANCE and agreement >= 0.9
    assert generated.shape == (2, ids.size(1) + 5)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(converted, reentrant):
    """With layer weighting each layer takes the earlier residual states; checkpointing must still reach them."""
    _, out, cfg, _, _ = converted
    from hf_ltg.ltg_bert import LtgBertForMaskedLM

    model = LtgBertForMaskedLM.from_pretrained(out, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ids, keep = padded([16, 11], cfg["vocab_size"], seed=8)
    labels = ids.masked_fill(~keep, -100)
    labels[:, 0] = -100

    def gradients():
        model.zero_grad()
        model(input_ids=ids, attention_mask=keep.long(), labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    checkpointed = gradients()
    assert all(layer.gradient_checkpointing for layer in model.ltg_bert.layers)
    for name, gradient in plain.items():
        assert torch.allclose(checkpointed[name], gradient, atol=1e-6), name


def test_config_refuses_an_unknown_attention_output_norm():
    from hf_ltg.ltg_bert import LtgBertConfig

    with pytest.raises(ValueError, match="attention_output_norm 'before'.*'before_out_proj' for GPT-BERT"):
        LtgBertConfig(attention_output_norm="before")
    with pytest.raises(ValueError, match="masked_next_token must be true or false, got 'yes'"):
        LtgBertConfig(masked_next_token="yes")


# ---------------------------------------------------------------- the folder

def test_converted_folder_records_the_gpt_bert_flags_and_documents_both_modes(converted):
    _, out, _, _, _ = converted
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ltg_bert" and config["masked_next_token"] is True
    assert config["attention_output_norm"] == "before_out_proj"
    assert config["attention_gate"] == config["layer_weighting"]
    assert {"AutoModelForMaskedLM", "AutoModelForCausalLM"} <= set(config["auto_map"])
    card = (out / "README.md").read_text()
    assert "AutoModelForMaskedLM" in card and "AutoModelForCausalLM" in card and "masked_next_token" in card
    assert not list(out.glob("*.bin")) and (out / "model.safetensors").is_file()


def test_exported_folder_keeps_the_masked_and_causal_mode_section(converted, tmp_path):
    from hf_ltg.hub.export import export_checkpoint

    _, out, _, _, _ = converted
    card = (export_checkpoint(out, tmp_path / "exported") / "README.md").read_text()
    assert "## Masked and causal mode" in card and "masked_next_token" in card


@pytest.mark.slow  # doctor loads the folder through every Auto class in a clean process (~30 s on 2 shared cores)
def test_doctor_passes_the_converted_folder(tmp_path_factory):
    from hf_ltg.hub.doctor import diagnose

    _, out, _, _, _ = converted_once(True, tmp_path_factory)  # model_extra.py: the model with every flag on
    report = diagnose(out)
    assert report.ok, report.format()


# ---------------------------------------------------------------- bad input

def convert_cli(tmp_path, state, cfg, capsys):
    torch.save(state, tmp_path / "model.bin")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code = cli_main(["convert", "--from", "gpt-bert", "--config", str(tmp_path / "config.json"),
                     str(tmp_path / "model.bin"), str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    return code, error


@pytest.mark.parametrize("damage, message", [
    ("missing", "lacks the tensor 'transformer.mlp_layers.1.mlp.4.weight'"),
    ("unknown", "holds the tensor 'transformer.attention_layers.2.in_proj_qk.weight'"),
    ("shape", "'transformer.mlp_layers.0.mlp.1.weight' in .* has shape \\(80, 32\\) but the config expects \\(96, 32\\)"),
    ("positions", "'transformer.attention_layers.0.position_indices' .* max_position_embeddings=128"),
    ("not gpt-bert", "is not a GPT-BERT state dict"),
])
def test_a_state_dict_that_does_not_match_the_config_is_one_line_naming_the_first_mismatch(tmp_path, capsys, damage,
                                                                                            message):
    import re

    cfg = gpt_bert_config()
    state = random_gpt_bert(cfg, extra=False).state_dict()
    if damage == "missing":
        del state["transformer.mlp_layers.1.mlp.4.weight"]
    elif damage == "unknown":
        cfg = cfg | {"num_hidden_layers": 2}
        state = random_gpt_bert(cfg | {"num_hidden_layers": 3}, extra=False).state_dict()
    elif damage == "shape":
        cfg = cfg | {"intermediate_size": 48}
    elif damage == "positions":
        cfg = cfg | {"max_position_embeddings": 128}
    else:
        state = {"transformer.h.0.ln_1.weight": torch.ones(4)}
    code, error = convert_cli(tmp_path, state, cfg, capsys)
    print(error)
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("hf-ltg convert: error:") and re.search(message, error)
    assert not (tmp_path / "out").exists()


def wrapper_layout(state):
    """GPT-BERT's state dict under the names of its Hugging Face wrapper (BabyLM 2025 baselines:
    GPTBERTForMaskedLM.model = the encoder with its embedding, lm_head = the classifier)."""
    prefixes = {"embedding.": "model.embedding.", "transformer.": "model.", "classifier.": "lm_head."}
    return {next(new + k[len(old):] for old, new in prefixes.items() if k.startswith(old)): v for k, v in state.items()}


def test_hugging_face_wrapper_layout_converts_to_the_same_model(tmp_path, capsys):
    from safetensors.torch import save_file

    cfg = gpt_bert_config()
    original = random_gpt_bert(cfg, extra=True)
    state = wrapper_layout({k: v.contiguous() for k, v in original.state_dict().items()
                            if k != "classifier.nonlinearity.5.weight"})
    assert "model.dwa_modules.alphas.3" in state and "lm_head.nonlinearity.1.weight" in state
    save_file(state, tmp_path / "model.safetensors")
    wrapper_config = {k: v for k, v in cfg.items() if k != "num_hidden_layers"} | {"num_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(wrapper_config))
    write_tokenizer(tmp_path / "tokenizer.json", cfg["vocab_size"])
    assert cli_main(["convert", "--from", "gpt-bert", "--config", str(tmp_path / "config.json"), str(tmp_path),
                     str(tmp_path / "out")]) == 0
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    ids, keep = padded([14, 6], cfg["vocab_size"])
    with torch.no_grad():
        got = causal(input_ids=ids, attention_mask=keep.long()).logits
    assert (got - run_original(original, ids, keep, causal=True))[keep].abs().max() < TOLERANCE
    assert (tmp_path / "out" / "tokenizer.json").is_file()  # the tokenizer beside the weights came along

    del state["model.mlp_layers.1.mlp.4.weight"]  # errors name the tensor as the file does
    save_file(state, tmp_path / "model.safetensors")
    code = cli_main(["convert", "--from", "gpt-bert", "--config", str(tmp_path / "config.json"), str(tmp_path),
                     str(tmp_path / "out2")])
    assert code == 2 and "lacks the tensor 'model.mlp_layers.1.mlp.4.weight'" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_safetensors_state_dict_converts_too(tmp_path):
    from safetensors.torch import save_file

    from hf_ltg.conversion import convert_gpt_bert
    from hf_ltg.ltg_bert import LtgBertForMaskedLM

    cfg = gpt_bert_config()
    original = random_gpt_bert(cfg, extra=True)
    # safetensors refuses shared tensors: the tied decoder is left out, as it may be.
    state = {k: v.contiguous() for k, v in original.state_dict().items() if k != "classifier.nonlinearity.5.weight"}
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = convert_gpt_bert(tmp_path / "model.safetensors", tmp_path / "out", tmp_path / "config.json")
    model = LtgBertForMaskedLM.from_pretrained(out).eval()
    ids, keep = padded([12], cfg["vocab_size"])
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert (got[:, 1:] - run_original(original, ids, keep, causal=False)[:, :-1]).abs().max() < TOLERANCE
    assert not (out / "tokenizer.json").exists()
    assert "No tokenizer was given" in (out / "README.md").read_text()


def test_peft_ln_tuning_defaults_adapt_the_norms_that_have_parameters_in_gpt_bert_layout():
    from peft import LNTuningConfig, get_peft_model

    from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForCausalLM

    config = LtgBertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, attention_output_norm="before_out_proj")
    model = get_peft_model(LtgBertForCausalLM(config), LNTuningConfig(task_type="CAUSAL_LM"))
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()

    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("relative_layer_norm" in name for name in trained)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
