"""`hf-ltg convert FOLDER OUT` (no flags) on LTG's Hugging Face release folders, against the releases' own code.

The modeling files below are written here from reading the releases (not from hf_ltg):
- NorBERT3 `modeling_norbert.py`, two revisions: the ltg/norbert3-* Hub file splits the projected
  position table heads first (`pos.view(-1, self.num_heads, 2*self.head_size).chunk(2, dim=2)`), the
  2023-03 copy vendored in ltgoslo/ltg-bert (`modeling_ltgbert.py` there, Norbert classes) halves first
  (`pos.view(-1, 2, self.num_heads, self.head_size).chunk(2, dim=1)`); both set the masked-LM logits of
  the special and unused ids to -inf (`subword_prediction[:, :, :106+1] = float("-inf")`; here `:20+1`).
- The BabyLM LTG-BERT wrapper `modeling_ltgbert.py` (`LtgbertForMaskedLM`), halves first as in
  ltgoslo/ltg-bert `babylm/train/model.py`, with its -inf line.
- GPT-BERT's BabyLM wrapper `modeling_ltgbert.py` (as in ddalakas/ag-gpt-bert `eval_pos/`): encoder
  `attention_layers` / `mlp_layers` / `dwa_modules`, gated value `in_proj_vg`, a LayerNorm without
  parameters before `out_proj`, `LtgbertForCausalLM` (`config.is_decoder`: padding | triu mask), and a
  masked LM whose logits at position i predict token i + 1 (its -inf line commented out).
Each is sequence-first `[T, B, D]` with a boolean padding mask (True = blocked), as the releases are.
A tiny random model of each is saved in the release's folder layout (config.json with the release's
field names, `architectures`, `auto_map`; configuration and modeling files; `.bin` or safetensors;
a tokenizer), converted with no flags, loaded through every Auto class in a process without hf_ltg,
and compared at real tokens of a padded batch (1e-4, fp32) and by fill-mask top-5. The same files
serve `--verify`, which runs them.
"""

import json
import sys
import types

import pytest
import torch
from helpers import run_without_hf_ltg

from hf_ltg.cli import main as cli_main

TOLERANCE = 1e-4
CFG = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
           max_position_embeddings=64, position_bucket_size=16, layer_norm_eps=1e-7, hidden_dropout_prob=0.1,
           attention_probs_dropout_prob=0.1)
SUPPRESSED = 21  # the releases' -inf over ids 0..20 (specials and [unused*] here; 0..106 in NorBERT3's vocabulary)
HEADS = ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
         "ForMultipleChoice")

# ------------------------------------------------------------------ the releases' files, written from reading them

CONFIGURATION = '''
from transformers import PretrainedConfig


class {config_class}(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=64, position_bucket_size=16, layer_norm_eps=1e-7,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.position_bucket_size = position_bucket_size
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
'''

COMMON = '''
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput

from .{config_module} import {config_class}


def make_log_bucket_position(relative_pos, bucket_size, max_position):
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where((relative_pos < mid) & (relative_pos > -mid), mid - 1,
                          torch.abs(relative_pos).clamp(max=max_position - 1))
    log_pos = torch.ceil(torch.log(abs_pos / mid) / math.log((max_position - 1) / mid) * (mid - 1)).int() + mid
    return torch.where(abs_pos <= mid, relative_pos, log_pos * sign).long()


class GeGLU(nn.Module):
    def forward(self, x):
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate, approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, i, eps = config.hidden_size, config.intermediate_size, config.layer_norm_eps
        self.mlp = nn.Sequential(
            nn.LayerNorm(d, eps=eps, elementwise_affine=False), nn.Linear(d, 2 * i, bias=False), GeGLU(),
            nn.LayerNorm(i, eps=eps, elementwise_affine=False), nn.Linear(i, d, bias=False),
            nn.Dropout(config.hidden_dropout_prob),
        )

    def forward(self, x):
        return self.mlp(x)


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_embedding = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, config.hidden_size))
        self.relative_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids):
        return (self.dropout(self.word_layer_norm(self.word_embedding(input_ids))),
                self.relative_layer_norm(self.relative_embedding))


class MaskClassifier(nn.Module):
    def __init__(self, config, subword_embedding):
        super().__init__()
        self.nonlinearity = nn.Sequential(
            nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=False),
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=False),
            nn.Dropout(config.hidden_dropout_prob),
            nn.Linear(subword_embedding.size(1), subword_embedding.size(0)),
        )
        self.nonlinearity[-1].weight = subword_embedding

    def forward(self, x):
        return self.nonlinearity(x)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.in_proj_qk = nn.Linear(config.hidden_size, 2 * config.hidden_size, bias=True)
        self.{value_proj} = nn.Linear(config.hidden_size, {value_width} * config.hidden_size, bias=True)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine=False)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps, elementwise_affine={affine})
        m = config.max_position_embeddings
        position_indices = torch.arange(m).unsqueeze(1) - torch.arange(m).unsqueeze(0)
        position_indices = make_log_bucket_position(position_indices, config.position_bucket_size, m)
        self.register_buffer("position_indices", config.position_bucket_size - 1 + position_indices, persistent=True)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.scale = 1.0 / math.sqrt(3 * self.head_size)

    def forward(self, hidden_states, attention_mask, relative_embedding):
        key_len, batch_size, _ = hidden_states.size()
        query_len = key_len
        hidden_states = self.pre_layer_norm(hidden_states)
        query, key = self.in_proj_qk(hidden_states).chunk(2, dim=2)  # shape: [T, B, D]
        {value_line}
        query = query.reshape(query_len, batch_size * self.num_heads, self.head_size).transpose(0, 1)
        key = key.reshape(key_len, batch_size * self.num_heads, self.head_size).transpose(0, 1)
        value = value.reshape(key_len, batch_size * self.num_heads, self.head_size).transpose(0, 1)
        attention_scores = torch.bmm(query, key.transpose(1, 2) * self.scale)

        {split}
        query = query.view(batch_size, self.num_heads, query_len, self.head_size)
        key = key.view(batch_size, self.num_heads, query_len, self.head_size)
        attention_c_p = torch.einsum("bhqd,khd->bhqk", query, key_pos.squeeze(1) * self.scale)
        attention_p_c = torch.einsum("bhkd,qhd->bhqk", key * self.scale, query_pos.squeeze(1))
        position_indices = self.position_indices[:query_len, :key_len].expand(batch_size, self.num_heads, -1, -1)
        attention_c_p = attention_c_p.gather(3, position_indices)
        attention_p_c = attention_p_c.gather(2, position_indices)
        attention_scores = attention_scores.view(batch_size, self.num_heads, query_len, key_len)
        attention_scores = attention_scores + attention_c_p + attention_p_c

        attention_probs = torch.softmax(attention_scores.masked_fill(attention_mask, float("-inf")), -1)
        attention_probs = self.dropout(attention_probs.masked_fill(attention_mask, 0.0))
        context = torch.bmm(attention_probs.flatten(0, 1), value)  # shape: [B*H, Q, D]
        context = context.transpose(0, 1).reshape(context.size(1), -1, self.hidden_size)  # shape: [Q, B, H*D]
        {output_lines}
        return self.dropout(context)
'''

SPLITS = {
    "hub": "pos = self.in_proj_qk(self.dropout(relative_embedding))  # shape: [2T-1, 2D]\n"
           "        query_pos, key_pos = pos.view(-1, self.num_heads, 2*self.head_size).chunk(2, dim=2)",
    "2023-03": "pos = self.in_proj_qk(self.dropout(relative_embedding))  # shape: [2T-1, 2D]\n"
               "        query_pos, key_pos = pos.view(-1, 2, self.num_heads, self.head_size).chunk(2, dim=1)",
    "wrapper": "query_pos, key_pos = self.in_proj_qk(self.dropout(relative_embedding)).chunk(2, dim=-1)\n"
               "        query_pos = query_pos.view(-1, self.num_heads, self.head_size)\n"
               "        key_pos = key_pos.view(-1, self.num_heads, self.head_size)",
    # A revision the converter does not know: heads first, written another way.
    "unknown": "pos = self.in_proj_qk(self.dropout(relative_embedding))\n"
               "        query_pos, key_pos = torch.split(pos.reshape(-1, self.num_heads, 2 * self.head_size), "
               "self.head_size, dim=2)",
}

LTG_BERT_MODELS = '''

class EncoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = FeedForward(config)

    def forward(self, x, padding_mask, relative_embedding):
        x = x + self.attention(x, padding_mask, relative_embedding)
        return x + self.mlp(x)


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, attention_mask, relative_embedding):
        for layer in self.layers:
            x = layer(x, attention_mask, relative_embedding)
        return x


class {prefix}PreTrainedModel(PreTrainedModel):
    config_class = {config_class}
    base_model_prefix = "{base_prefix}"

    def _init_weights(self, module):
        pass  # everything is already initialized


class {prefix}Model({prefix}PreTrainedModel):
    def __init__(self, config, add_mlm_layer=False):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)
        self.classifier = MaskClassifier(config, self.embedding.word_embedding.weight) if add_mlm_layer else None

    def get_contextualized_embeddings(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            attention_mask = ~attention_mask.bool()
        attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        static_embeddings, relative_embedding = self.embedding(input_ids.t())
        return self.transformer(static_embeddings, attention_mask, relative_embedding).transpose(0, 1)


class {prefix}ForMaskedLM({prefix}Model):
    def __init__(self, config):
        super().__init__(config, add_mlm_layer=True)

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        subword_prediction = self.classifier(self.get_contextualized_embeddings(input_ids, attention_mask))
        {suppression}
        return MaskedLMOutput(logits=subword_prediction)
'''

GPT_BERT_MODELS = '''

class DWAModules(nn.Module):
    def __init__(self, n_blocks):
        super().__init__()
        self.alphas = nn.ParameterList([nn.Parameter(torch.zeros(i + 2)) for i in range(n_blocks)])


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention_layers = nn.ModuleList([Attention(config) for _ in range(config.num_hidden_layers)])
        self.mlp_layers = nn.ModuleList([FeedForward(config) for _ in range(config.num_hidden_layers)])
        self.dwa_modules = DWAModules(config.num_hidden_layers * 2)

    def forward(self, x, attention_mask, relative_embedding):
        states = [x]  # DenseFormer: every block's output joins a weighted average over all states so far
        for i, (attention_layer, mlp_layer) in enumerate(zip(self.attention_layers, self.mlp_layers)):
            states.append(x + attention_layer(x, attention_mask, relative_embedding))
            x = sum(a * s for a, s in zip(self.dwa_modules.alphas[2 * i], states))
            states.append(x + mlp_layer(x))
            x = sum(a * s for a, s in zip(self.dwa_modules.alphas[2 * i + 1], states))
        return x


class LtgbertPreTrainedModel(PreTrainedModel):
    config_class = LtgbertConfig

    def _init_weights(self, module):
        pass


class LtgbertModel(LtgbertPreTrainedModel):
    def __init__(self, config, add_mlm_layer=False):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)
        self.classifier = MaskClassifier(config, self.embedding.word_embedding.weight) if add_mlm_layer else None

    def get_contextualized_embeddings(self, input_ids, attention_mask=None):
        seq_length = input_ids.size(1)
        if attention_mask is None:
            attention_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        else:
            attention_mask = ~attention_mask.bool()
        if getattr(self.config, "is_decoder", False):  # transformers 5 configs have no default
            attention_mask = attention_mask.unsqueeze(1).unsqueeze(2) | torch.triu(
                torch.ones(seq_length, seq_length, dtype=torch.bool, device=input_ids.device), 1).unsqueeze(0).unsqueeze(0)
        else:
            attention_mask = attention_mask.unsqueeze(1).unsqueeze(2)
        static_embeddings, relative_embedding = self.embedding(input_ids.t())
        return self.transformer(static_embeddings, attention_mask, relative_embedding).transpose(0, 1)


class LtgbertForMaskedLM(LtgbertModel):
    def __init__(self, config):
        super().__init__(config, add_mlm_layer=True)

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        subword_prediction = self.classifier(self.get_contextualized_embeddings(input_ids, attention_mask))
        # subword_prediction[:, :, :16+1] = float("-inf")
        return MaskedLMOutput(logits=subword_prediction)  # position i predicts token i + 1


class LtgbertForCausalLM(LtgbertModel):
    def __init__(self, config):
        config.is_decoder = True
        super().__init__(config, add_mlm_layer=True)

    def forward(self, input_ids=None, attention_mask=None, return_dict=None, **kwargs):
        subword_prediction = self.classifier(self.get_contextualized_embeddings(input_ids, attention_mask))
        return CausalLMOutput(logits=subword_prediction)
'''

# kind -> (prefix, configuration module, config class, modeling module, split, architectures)
KINDS = {
    "norbert3-hub": ("Norbert", "configuration_norbert", "NorbertConfig", "modeling_norbert", "hub"),
    "norbert3-2023-03": ("Norbert", "configuration_norbert", "NorbertConfig", "modeling_norbert", "2023-03"),
    "babylm-ltg-bert": ("Ltgbert", "configuration_ltgbert", "LtgbertConfig", "modeling_ltgbert", "wrapper"),
    "gpt-bert": ("Ltgbert", "configuration_ltgbert", "LtgbertConfig", "modeling_ltgbert", "wrapper"),
    "norbert3-unknown": ("Norbert", "configuration_norbert", "NorbertConfig", "modeling_norbert", "unknown"),
    # the BNC LTG-BERT wrapper (ltg/bnc-bert-span*): heads first as the NorBERT3 Hub file, no -inf in its head
    "bnc-bert-span": ("LtgBert", "configuration_ltgbert", "LtgBertConfig", "modeling_ltgbert", "hub"),
}
UNSUPPRESSED_KINDS = {"bnc-bert-span"}


def release_sources(kind: str) -> tuple[str, str]:
    prefix, config_module, config_class, _, split = KINDS[kind]
    gpt_bert = kind == "gpt-bert"
    configuration = CONFIGURATION.format(config_class=config_class, model_type=prefix.lower())
    modeling = COMMON.format(
        config_module=config_module, config_class=config_class, split=SPLITS[split],
        value_proj="in_proj_vg" if gpt_bert else "in_proj_v", value_width=2 if gpt_bert else 1,
        affine=not gpt_bert,
        value_line=("value, gate = self.in_proj_vg(hidden_states).chunk(2, dim=2)\n        gate = F.gelu(gate)"
                    if gpt_bert else "value = self.in_proj_v(hidden_states)"),
        output_lines=("context = context * gate\n        context = self.out_proj(self.post_layer_norm(context))"
                      if gpt_bert else "context = self.post_layer_norm(self.out_proj(context))"),
    )
    modeling += GPT_BERT_MODELS if gpt_bert else LTG_BERT_MODELS.format(
        prefix=prefix, config_class=config_class, base_prefix="norbert3" if prefix == "Norbert" else "ltgbert",
        suppression="" if kind in UNSUPPRESSED_KINDS else 'subword_prediction[:, :, :20+1] = float("-inf")')
    return configuration, modeling


def reference_module(kind: str):
    """The release's code as a module of the test (the relative import resolved in one namespace)."""
    configuration, modeling = release_sources(kind)
    _, config_module, config_class, *_ = KINDS[kind]
    module = types.ModuleType(f"reference_{kind.replace('-', '_')}")
    sys.modules[module.__name__] = module
    exec(configuration + modeling.replace(f"from .{config_module} import {config_class}\n", ""), module.__dict__)
    return module


def randomise(model, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * (0.3 if "relative_embedding" in name else 0.1)
            if name.endswith("relative_layer_norm.weight") or name.endswith("post_layer_norm.weight"):
                noise = noise + 1.0
            if ".alphas." in name:
                noise = noise + torch.nn.functional.one_hot(torch.tensor(parameter.numel() - 1), parameter.numel())
            parameter.copy_(noise)
    return model.eval()


SPECIALS = {"gpt-bert": ["<unk>", "<s>", "</s>", "<pad>", "<mask>"]}
DEFAULT_SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]


def write_tokenizer(folder, kind):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    unk, cls, sep, pad, mask = SPECIALS.get(kind, DEFAULT_SPECIALS)
    words = [unk, cls, sep, pad, mask] + [f"[unused{i}]" for i in range(SUPPRESSED - 5)]
    words += [f"w{i}" for i in range(CFG["vocab_size"] - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{cls} $A {sep}", special_tokens=[(cls, 1), (sep, 2)])
    tokenizer.save(str(folder / "tokenizer.json"))
    roles = dict(unk_token=unk, cls_token=cls, sep_token=sep, pad_token=pad, mask_token=mask)
    (folder / "special_tokens_map.json").write_text(json.dumps(roles))
    (folder / "tokenizer_config.json").write_text(json.dumps({**roles, "tokenizer_class": "PreTrainedTokenizerFast"}))


def make_release(folder, kind: str, weights: str = "bin", tokenizer: bool = True, seed: int = 0):
    """A tiny release of `kind` in its Hub folder layout; returns the reference masked (and causal) model."""
    prefix, config_module, config_class, modeling_module, _ = KINDS[kind]
    folder.mkdir(parents=True)
    configuration, modeling = release_sources(kind)
    (folder / f"{config_module}.py").write_text(configuration)
    (folder / f"{modeling_module}.py").write_text(modeling)
    heads = HEADS + (("ForCausalLM",) if kind == "gpt-bert" else ())
    auto_map = {"AutoConfig": f"{config_module}.{config_class}"}
    for head in heads:
        auto = "AutoModel" if head == "Model" else f"AutoModel{head}"
        auto_map[auto] = f"{modeling_module}.{prefix}{head}"
    config = {"architectures": [f"{prefix}ForMaskedLM"], "auto_map": auto_map, **CFG,
              "output_all_encoded_layers": True, "torch_dtype": "float32", "transformers_version": "4.52.4"}
    if kind == "gpt-bert":
        config |= {"layer_norm_eps": 1e-5, "temperature": 1.0}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    module = reference_module(kind)
    reference_config = getattr(module, config_class)(**{k: v for k, v in config.items() if k in CFG})
    masked = randomise(getattr(module, f"{prefix}ForMaskedLM")(reference_config), seed)
    state = masked.state_dict()
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in state.items() if k != "classifier.nonlinearity.5.weight"}
        if weights == "sharded":
            names = sorted(state)
            shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                      "model-00002-of-00002.safetensors": names[len(names) // 2:]}
            for shard, keys in shards.items():
                save_file({k: state[k] for k in keys}, folder / shard)
            weight_map = {k: shard for shard, keys in shards.items() for k in keys}
            (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        else:
            save_file(state, folder / "model.safetensors")
    if tokenizer:
        write_tokenizer(folder, kind)
    models = {"masked": masked}
    if kind == "gpt-bert":
        import copy

        causal = module.LtgbertForCausalLM(copy.deepcopy(reference_config)).eval()
        causal.load_state_dict(masked.state_dict())
        models["causal"] = causal
    return models


def padded_batch(lengths=(20, 13), seed=1):
    generator = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.randint(SUPPRESSED, CFG["vocab_size"], (len(lengths), length), generator=generator)
    ids[:, 0] = 1  # [CLS] / <s>
    ids[0, 7] = ids[1, 5] = 4  # [MASK]
    keep = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    ids[~keep] = 3  # [PAD]
    return ids, keep


def reference_logits(model, ids, keep):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=keep.long()).logits


def convert(folder, out, *flags):
    return cli_main(["convert", *flags, str(folder), str(out)])


# ------------------------------------------------------------------ every kind, no flags, without hf_ltg

ISOLATED = """
import json
import torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForMultipleChoice,
                          AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, pipeline)
classes = {}
for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification,
             AutoModelForQuestionAnswering, AutoModelForMultipleChoice, AutoModelForCausalLM):
    classes[auto.__name__] = type(auto.from_pretrained(CKPT, trust_remote_code=True)).__name__
assert type(AutoConfig.from_pretrained(CKPT, trust_remote_code=True)).__name__ == "LtgBertConfig"
batch = torch.load(BATCH)
masked = AutoModelForMaskedLM.from_pretrained(CKPT, trust_remote_code=True).eval()
causal = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True).eval()
with torch.no_grad():
    out = {"masked": masked(input_ids=batch["ids"], attention_mask=batch["mask"]).logits,
           "causal": causal(input_ids=batch["ids"], attention_mask=batch["mask"]).logits}
torch.save(out, RESULT)
tokenizer = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
unmasker = pipeline("fill-mask", model=masked, tokenizer=tokenizer)
answers = unmasker(TEXT.replace("MASK", tokenizer.mask_token), top_k=5)
print(json.dumps({"classes": classes, "top5": [a["token"] for a in answers],
                  "text_ids": tokenizer(TEXT.replace("MASK", tokenizer.mask_token))["input_ids"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind, weights", [("norbert3-hub", "safetensors"), ("norbert3-2023-03", "bin"),
                                           ("babylm-ltg-bert", "bin"), ("gpt-bert", "safetensors"),
                                           ("bnc-bert-span", "bin")])
def test_release_converts_with_no_flags_and_every_auto_class_matches_without_hf_ltg(tmp_path, capsys, kind, weights):
    models = make_release(tmp_path / f"release-{kind}", kind, weights)
    assert convert(tmp_path / f"release-{kind}", tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "dropped config fields hf_ltg does not read: output_all_encoded_layers" in printed
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LtgBertForMaskedLM"]
    assert all(v.startswith(("modeling_ltg_bert.", "configuration_ltg_bert.")) for v in config["auto_map"].values())
    assert len(config["auto_map"]) == 8 and "output_all_encoded_layers" not in config

    ids, keep = padded_batch()
    torch.save({"ids": ids, "mask": keep.long()}, tmp_path / "batch.pt")
    text = "w3 w9 MASK w17 w5"
    code = f"BATCH = {str(tmp_path / 'batch.pt')!r}\nRESULT = {str(tmp_path / 'result.pt')!r}\nTEXT = {text!r}\n"
    result = json.loads(run_without_hf_ltg(code + ISOLATED, tmp_path / "out", tmp_path).strip().splitlines()[-1])
    assert set(result["classes"].values()) == {f"LtgBert{h}" for h in HEADS + ("ForCausalLM",)}
    got = torch.load(tmp_path / "result.pt")

    expected = reference_logits(models["masked"], ids, keep)
    text_ids = torch.tensor([result["text_ids"]])
    reference_text = reference_logits(models["masked"], text_ids, torch.ones_like(text_ids, dtype=torch.bool))[0]
    mask_position = result["text_ids"].index(4)
    if kind == "gpt-bert":  # the release predicts token i + 1 at i; the converted folder predicts token i at i
        real = keep[:, 1:]
        assert (got["masked"][:, 1:][real] - expected[:, :-1][real]).abs().max() < TOLERANCE
        assert (got["causal"][keep] - reference_logits(models["causal"], ids, keep)[keep]).abs().max() < TOLERANCE
        reference_top5 = reference_text[mask_position - 1].topk(5).indices
    else:
        assert torch.equal(torch.isneginf(got["masked"][keep]), torch.isneginf(expected[keep]))
        # the release's masking is there to match (the BNC wrapper has none)
        assert torch.isneginf(expected[keep][:, :SUPPRESSED]).all() == (kind not in UNSUPPRESSED_KINDS)
        finite = torch.isfinite(expected[keep])
        assert (got["masked"][keep][finite] - expected[keep][finite]).abs().max() < TOLERANCE
        reference_top5 = reference_text[mask_position].topk(5).indices
    assert result["top5"] == reference_top5.tolist()


@pytest.mark.parametrize("kind, weights", [("norbert3-hub", "bin"), ("norbert3-2023-03", "safetensors"),
                                           ("babylm-ltg-bert", "safetensors"), ("gpt-bert", "bin"),
                                           ("norbert3-hub", "sharded"), ("bnc-bert-span", "safetensors")])
def test_each_weights_format_converts_to_the_releases_logits(tmp_path, kind, weights):
    from hf_ltg.ltg_bert import LtgBertForCausalLM, LtgBertForMaskedLM

    models = make_release(tmp_path / "release", kind, weights, seed=3)
    assert convert(tmp_path / "release", tmp_path / "out") == 0
    ids, keep = padded_batch()
    got = reference_logits(LtgBertForMaskedLM.from_pretrained(tmp_path / "out"), ids, keep)
    expected = reference_logits(models["masked"], ids, keep)
    if kind == "gpt-bert":
        assert (got[:, 1:][keep[:, 1:]] - expected[:, :-1][keep[:, 1:]]).abs().max() < TOLERANCE
        causal = reference_logits(LtgBertForCausalLM.from_pretrained(tmp_path / "out"), ids, keep)
        assert (causal[keep] - reference_logits(models["causal"], ids, keep)[keep]).abs().max() < TOLERANCE
    else:
        finite = torch.isfinite(expected[keep])
        assert (got[keep][finite] - expected[keep][finite]).abs().max() < TOLERANCE
        assert torch.equal(torch.isneginf(got[keep]), ~finite)


def test_the_two_norbert3_revisions_differ_so_reading_the_code_matters(tmp_path):
    from hf_ltg.ltg_bert import LtgBertForMaskedLM

    hub = make_release(tmp_path / "hub", "norbert3-hub", seed=5)["masked"]
    old = make_release(tmp_path / "old", "norbert3-2023-03", seed=5)["masked"]
    ids, keep = padded_batch()
    hub_logits, old_logits = reference_logits(hub, ids, keep), reference_logits(old, ids, keep)
    finite = torch.isfinite(hub_logits[keep])
    assert (hub_logits[keep][finite] - old_logits[keep][finite]).abs().max() > 0.1  # same weights, other outputs
    assert convert(tmp_path / "hub", tmp_path / "hub-out") == 0 and convert(tmp_path / "old", tmp_path / "old-out") == 0
    assert LtgBertForMaskedLM.from_pretrained(tmp_path / "hub-out").config.position_layout == "bnc"
    assert LtgBertForMaskedLM.from_pretrained(tmp_path / "old-out").config.position_layout == "babylm"


def test_converted_folder_keeps_the_tokenizer_and_says_where_it_came_from(tmp_path):
    from transformers import AutoTokenizer

    from hf_ltg.ltg_bert import LtgBertConfig

    make_release(tmp_path / "release", "gpt-bert", "safetensors")
    assert convert(tmp_path / "release", tmp_path / "out") == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert (tokenizer.mask_token, tokenizer.pad_token, tokenizer.cls_token) == ("<mask>", "<pad>", "<s>")
    config = LtgBertConfig.from_pretrained(tmp_path / "out")
    assert (config.mask_token_id, config.pad_token_id, config.cls_token_id, config.sep_token_id) == (4, 3, 1, 2)
    assert config.masked_next_token and config.attention_gate and config.layer_weighting
    assert config.masked_lm_suppressed_token_ids == []  # the release's -inf line is commented out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "GPT-BERT (BabyLM)" in card and "How positions line up" in card and "i + 1" in card
    assert "--verify" in card  # the check that was (not) run


def test_a_folder_without_tokenizer_converts_weights_and_config_and_says_so(tmp_path, capsys):
    make_release(tmp_path / "release", "norbert3-hub", tokenizer=False)
    assert convert(tmp_path / "release", tmp_path / "out") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "no tokenizer" in line]
    assert len(lines) == 1
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "tokenizer.json").exists()


# ------------------------------------------------------------------ --verify

def test_verify_runs_the_releases_code_and_prints_the_figure(tmp_path, capsys):
    make_release(tmp_path / "release-verify", "gpt-bert", "bin")
    assert convert(tmp_path / "release-verify", tmp_path / "out", "--verify") == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("--verify"))
    assert float(line.split("modeling_ltgbert.py ")[1].split()[0]) < TOLERANCE
    assert "largest logit difference from the release's own code" in (tmp_path / "out" / "README.md").read_text()


def test_unknown_revision_is_refused_and_verify_refuses_the_wrong_override(tmp_path, capsys):
    make_release(tmp_path / "release-unknown", "norbert3-unknown")
    assert convert(tmp_path / "release-unknown", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "modeling_norbert.py" in error and "torch.split(pos.reshape" in error and "--layout" in error
    assert not (tmp_path / "out").exists()

    assert convert(tmp_path / "release-unknown", tmp_path / "out", "--layout", "babylm", "--verify") == 2
    error = capsys.readouterr().err
    assert "--verify" in error and "OUT was not written" in error and not (tmp_path / "out").exists()

    assert convert(tmp_path / "release-unknown", tmp_path / "out", "--layout", "bnc", "--verify") == 0


def test_a_layout_that_contradicts_the_modeling_file_is_refused(tmp_path, capsys):
    make_release(tmp_path / "release", "norbert3-hub")
    # What the README once advised for NorBERT3; the Hub file splits heads first.
    assert convert(tmp_path / "release", tmp_path / "out", "--from", "ltg-bert", "--layout", "babylm") == 2
    assert "contradicts modeling_norbert.py" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ bad input: one line, nothing written

def _no_weights(folder):
    (folder / "pytorch_model.bin").unlink()


def _missing_shard(folder):
    (folder / "model-00002-of-00002.safetensors").unlink()


def _not_ltg(folder):
    config = json.loads((folder / "config.json").read_text())
    config.pop("auto_map")
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_norbert.py").rename(folder / "modeling_bert.py")


def _norbert4(folder):
    config = {"architectures": ["GptBertForMaskedLM"], "num_layers": 2,
              "auto_map": {"AutoConfig": "configuration_gptbert.GptBertConfig",
                           "AutoModelForMaskedLM": "modeling_gptbert.GptBertForMaskedLM"}}
    (folder / "config.json").write_text(json.dumps(config))


def _elc_bert(folder):
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["ElcBertForMaskedLM"]
    config["auto_map"] = {"AutoModelForMaskedLM": "modeling_elc_bert.ElcBertForMaskedLM"}
    (folder / "config.json").write_text(json.dumps(config))


def _elc_bert_code(folder):  # an ELC-BERT folder under the BabyLM wrapper's names: its code tells
    with (folder / "modeling_norbert.py").open("a") as file:
        file.write("\n\nclass EncoderLayer2(nn.Module):\n    def __init__(self, n):\n        super().__init__()\n"
                   "        self.prev_layer_weights = nn.Parameter(torch.zeros(n + 1))\n")


def _unread_masking(folder):  # -inf written some way the converter cannot read: its top-k would differ
    code = (folder / "modeling_norbert.py").read_text()
    (folder / "modeling_norbert.py").write_text(code.replace(
        'subword_prediction[:, :, :20+1] = float("-inf")', 'subword_prediction[..., [0, 3, 9]] = float("-inf")'))


@pytest.mark.parametrize("damage, weights, message", [
    (_no_weights, "bin", "holds no weights"),
    (_missing_shard, "sharded", "model-00002-of-00002.safetensors is missing"),
    (_not_ltg, "bin", "is no LTG release hf-ltg knows: its config.json names ['BertForMaskedLM']"),
    (_norbert4, "bin", "NorBERT4"),  # recognised as NorBERT4 (converted where hf_ltg has the converter)
    (_elc_bert, "bin", "is an ELC-BERT release"),
    (_elc_bert_code, "bin", "is an ELC-BERT release"),
    (_unread_masking, "bin", "sets masked-LM logits to -inf in a way the converter does not read"),
])
def test_bad_release_folders_get_one_line_and_nothing_is_written(tmp_path, capsys, damage, weights, message):
    make_release(tmp_path / "release", "norbert3-hub", weights)
    damage(tmp_path / "release")
    assert convert(tmp_path / "release", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error
    assert not (tmp_path / "out").exists()


def test_masked_lm_suppressed_ids_default_to_none_and_mask_only_the_masked_lm_head():
    from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForCausalLM, LtgBertForMaskedLM

    small = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24)
    assert LtgBertConfig().masked_lm_suppressed_token_ids == []
    torch.manual_seed(0)
    plain = LtgBertForMaskedLM(LtgBertConfig(**small)).eval()
    masked = LtgBertForMaskedLM(LtgBertConfig(**small, masked_lm_suppressed_token_ids=[0, 1, 2, 7])).eval()
    masked.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 40, (1, 6))
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, masked(input_ids=ids).logits
    assert torch.isneginf(b[..., [0, 1, 2, 7]]).all() and torch.isfinite(a).all()
    keep = [i for i in range(40) if i not in (0, 1, 2, 7)]
    assert torch.equal(a[..., keep], b[..., keep])
    causal = LtgBertForCausalLM(masked.config)
    with torch.no_grad():
        assert torch.isfinite(causal(input_ids=ids).logits).all()
    with pytest.raises(ValueError, match="masked_lm_suppressed_token_ids"):
        LtgBertConfig(**small, masked_lm_suppressed_token_ids=[40])


def test_norbert4_without_its_converter_is_not_yet_supported(tmp_path, capsys, monkeypatch):
    make_release(tmp_path / "release", "norbert3-hub")
    _norbert4(tmp_path / "release")
    monkeypatch.setitem(sys.modules, "hf_ltg.conversion.norbert4", None)  # as before that converter existed
    assert convert(tmp_path / "release", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "NorBERT4 is a different architecture" in error
    assert "not yet support" in error and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (("--layout", "bnc"), "--layout means nothing for GPT-BERT (BabyLM)"),
    (("--from", "hf-gpt2", "--verify"), "--verify is for LTG-BERT checkpoints and releases, not --from hf-gpt2"),
])
def test_layout_and_verify_only_where_they_mean_something(tmp_path, capsys, flags, message):
    make_release(tmp_path / "release", "gpt-bert")
    assert convert(tmp_path / "release", tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_hf_ltg_checkpoint_is_not_converted_again(tmp_path, capsys):
    make_release(tmp_path / "release", "norbert3-hub")
    assert convert(tmp_path / "release", tmp_path / "out") == 0
    assert convert(tmp_path / "out", tmp_path / "again") == 2
    assert "already an hf_ltg checkpoint (ltg_bert)" in capsys.readouterr().err


def test_doctor_passes_a_converted_release_whose_masked_lm_suppresses_special_ids(tmp_path):
    from hf_ltg.hub import diagnose

    make_release(tmp_path / "release", "norbert3-hub", weights="safetensors")
    assert convert(tmp_path / "release", tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["masked_lm_suppressed_token_ids"]

    report = diagnose(tmp_path / "out")

    assert report.ok, report.format()
    passed = {c.name for c in report.checks if c.status == "PASS"}
    assert {"AutoModelForMaskedLM loads and runs", "pipeline fill-mask"} <= passed
