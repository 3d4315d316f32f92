"""LTG's Hugging Face releases, converted from the folder exactly as users hold it.

A release folder holds `config.json` (with the release's own `architectures` and `auto_map`), the
release's `modeling_*.py` / `configuration_*.py`, `pytorch_model.bin` and/or `model.safetensors`
(sharded too) and usually a tokenizer. The folder says everything a conversion needs: `KINDS` is
the table of release kinds, tried in order; each recognises its folders from `config.json` and the
modeling file and converts them (or says why it cannot). A new kind is one more `ReleaseKind` row.

The weights alone do not say everything: NorBERT3's `modeling_norbert.py` exists in two revisions
whose position projections split differently (heads first on the Hub, `layout="bnc"`; halves first
in the 2023-03 copy vendored in ltgoslo/ltg-bert, `layout="babylm"`), with identical tensor names
and shapes. The revision is read from the code text (`position_layout`); an unknown one is an error
naming what was found and the `--layout` override. Likewise the masked-LM head's `-inf` over the
special and unused ids is read from the code (`suppressed_token_ids`).

`verify` runs the release's own code from the folder (trust_remote_code: the user's own folder) on
a fixed padded batch and refuses to write OUT unless the logits agree within `VERIFY_TOLERANCE`.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import atomic_directory
from ..ltg_bert.configuration_ltg_bert import POSITION_LAYOUTS
from .common import read_json_config

VERIFY_TOLERANCE = 1e-4


@dataclass
class Release:
    """What a folder shows of itself: its config, the class and module names it refers to, its modeling file."""

    folder: Path
    config: dict
    classes: set = field(default_factory=set)  # class names in `architectures` and `auto_map`
    modules: set = field(default_factory=set)  # module names in `auto_map` (`modeling_norbert`, ...)
    modeling_file: Path | None = None
    code: str = ""  # the modeling file's text, comments dropped

    @classmethod
    def read(cls, folder, config_override=None) -> "Release":
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a folder; `hf-ltg convert SRC OUT` without --from takes an LTG release folder "
                f"(config.json, modeling file, weights); for a bare state dict name its format with --from."
            )
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} has no config.json, so it is no Hugging Face release; for an original training-code "
                f"state dict use --from ltg-bert or --from gpt-bert with --config CFG.json."
            )
        config = read_json_config(config_override or folder / "config.json")
        if not isinstance(config, dict):
            raise ValueError(f"{config_override or folder / 'config.json'} holds a {type(config).__name__}, not a "
                             f"JSON object of config fields.")
        release = cls(folder, config)
        release.classes.update(name for name in config.get("architectures") or () if isinstance(name, str))
        for reference in (config.get("auto_map") or {}).values():
            for ref in reference if isinstance(reference, (list, tuple)) else (reference,):
                if isinstance(ref, str) and "." in ref:
                    module, name = ref.split("--")[-1].rsplit(".", 1)
                    release.modules.add(module)
                    release.classes.add(name)
        candidates = [folder / f"{m}.py" for m in sorted(release.modules) if m.startswith("modeling_")]
        candidates += sorted(folder.glob("modeling_*.py"))
        release.modeling_file = next((p for p in candidates if p.is_file()), None)
        if release.modeling_file is not None:
            release.code = "\n".join(line.split("#", 1)[0] for line in release.modeling_file.read_text().splitlines())
        return release

    def has_module(self, name: str) -> bool:
        return name in self.modules or (self.folder / f"{name}.py").is_file()


@dataclass(frozen=True)
class ReleaseKind:
    name: str
    hub_ids: str  # the Hub id pattern, for the README table and messages
    modeling_file: str
    what_convert_does: str
    matches: Callable[[Release], bool]
    convert: Callable  # (release, out, options) -> (Path, notes)


@dataclass
class Options:
    layout: str | None = None  # --layout override
    verify: bool = False
    notes: list = field(default_factory=list)  # one-line messages for the user


# ------------------------------------------------------------------ reading the code

_SPACE = re.compile(r"\s+")
# The expression that splits the projected relative-position table into query- and key-position parts,
# as the release files write it (whitespace removed).
_SPLITS = {
    "bnc": ("view(-1,self.num_heads,2*self.head_size).chunk(2,dim=2)",  # heads first: ltg/norbert3-* on the Hub
            "view(-1,self.num_heads,2*self.head_size).chunk(2,dim=-1)"),
    "babylm": ("view(-1,2,self.num_heads,self.head_size).chunk(2,dim=1)",  # halves first: NorBERT3 2023-03
               "in_proj_qk(self.dropout(relative_embedding)).chunk(2,dim=-1)",  # BabyLM wrappers, GPT-BERT
               "pos.chunk(2,dim=-1)"),  # ltgoslo/ltg-bert babylm/train/model.py
}
_SUPPRESSION = re.compile(r"""\w*(?:prediction|logits)\[:,:,:(\d+)(?:\+(\d+))?\]=float\(["']-inf["']\)""")
_ANY_SUPPRESSION = re.compile(r"""\w*(?:prediction|logits)\[.*\]=float\(["']-inf["']\)""")  # one line


_LAYOUT_WORDS = {"bnc": "heads first", "babylm": "halves first"}


def position_layout(release: Release) -> str | None:
    """'bnc' or 'babylm' from the modeling file's split expression; None when it shows neither or both."""
    code = _SPACE.sub("", release.code)
    found = {layout for layout, patterns in _SPLITS.items() if any(p in code for p in patterns)}
    return found.pop() if len(found) == 1 else None


def _split_lines(release: Release) -> str:
    lines = [line.strip() for line in release.code.splitlines()
             if "query_pos" in line.split("=", 1)[0] and "=" in line]  # assignments to query_pos
    return "; ".join(lines[:3]) or "no line assigning query_pos"


def suppressed_token_ids(release: Release) -> list[int]:
    """The ids the release's masked-LM head sets to -inf (`subword_prediction[:, :, :106+1] = float("-inf")`)."""
    lines = [_SPACE.sub("", line) for line in release.code.splitlines()]
    ends = {int(a) + int(b or 0) for line in lines for a, b in _SUPPRESSION.findall(line)}
    unread = sum(bool(_ANY_SUPPRESSION.search(line)) and not _SUPPRESSION.search(line) for line in lines)
    if len(ends) > 1 or unread:  # -inf written into logits some other way: refuse rather than guess
        raise ValueError(
            f"{release.modeling_file} sets masked-LM logits to -inf in a way the converter does not read "
            f"(found ends {sorted(ends)}); its fill-mask answers would differ. Please report the file."
        )
    return list(range(ends.pop())) if ends else []


def _layout(release: Release, kind: str, options: Options) -> str:
    detected = position_layout(release)
    if options.layout is not None:
        if detected is not None and detected != options.layout:  # would convert to wrong logits
            raise ValueError(
                f"--layout {options.layout} contradicts {release.modeling_file.name}, whose code splits the position "
                f"projection {_LAYOUT_WORDS[detected]} (layout {detected}); drop --layout, the folder says which.")
        return options.layout
    if detected is None:
        name = release.modeling_file.name if release.modeling_file else "no modeling_*.py"
        raise ValueError(
            f"{kind}: cannot tell the position-projection layout from {name} (found: {_split_lines(release)}); "
            f"it is a revision the converter does not know. Pass --layout bnc (heads first) or --layout babylm "
            f"(halves first) to say which, and check with --verify."
        )
    return detected


# ------------------------------------------------------------------ weights and tokenizer

def read_weights(folder: Path) -> tuple[dict, str]:
    """The state dict of a release folder (safetensors preferred; shards through their index) and the file name."""
    from safetensors.torch import load_file

    for index_name, load in (("model.safetensors.index.json", load_file),
                             ("pytorch_model.bin.index.json", _load_pickle)):
        if (folder / index_name).is_file():
            try:
                shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
            except (ValueError, KeyError, AttributeError) as error:
                raise ValueError(f"{folder / index_name} is not a shard index (no weight_map): {error}") from error
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{folder} lacks the shard(s) {missing} that {index_name} lists; download every shard.")
            tensors = {}
            for shard in shards:
                tensors.update(load(folder / shard))
            return tensors, index_name
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return (load_file(folder / name) if name.endswith(".safetensors") else _load_pickle(folder / name)), name
    raise FileNotFoundError(
        f"{folder} holds no weights: expected model.safetensors, pytorch_model.bin or a sharded index; it holds "
        f"{sorted(p.name for p in folder.iterdir())}."
    )


def _load_pickle(path: Path) -> dict:
    from ..checkpoint import load_state_dict

    return load_state_dict(path)  # weights_only=True


SPECIAL_ROLES = {  # role -> names tried in the vocabulary when the tokenizer files name none
    "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "pad": ("[PAD]", "<pad>"),
    "mask": ("[MASK]", "<mask>"),
}


def read_tokenizer(folder: Path):
    """The release's tokenizer (tokenizer.json, with the special tokens its special_tokens_map.json /
    tokenizer_config.json name, else the usual names found in its vocabulary), or None."""
    if not (folder / "tokenizer.json").is_file():
        return None
    from transformers import PreTrainedTokenizerFast

    named = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the second wins, as in transformers
        if (folder / name).is_file():
            data = read_json_config(folder / name)
            for role in (*SPECIAL_ROLES, "bos", "eos"):
                value = data.get(f"{role}_token")
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    named[f"{role}_token"] = value
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    except Exception as error:
        raise ValueError(f"{folder / 'tokenizer.json'} is not a readable tokenizers file: {error}") from error
    vocab = tokenizer.get_vocab()
    for role, names in SPECIAL_ROLES.items():
        found = next((n for n in names if n in vocab), None)
        if f"{role}_token" not in named and found is not None:
            named[f"{role}_token"] = found
    named = {role: token for role, token in named.items() if token in vocab}
    tokenizer.add_special_tokens(named)
    return tokenizer


def _token_ids(tokenizer) -> dict:
    if tokenizer is None:
        return {}
    ids = {}
    for role in ("unk", "cls", "sep", "pad", "mask", "bos", "eos"):
        token = getattr(tokenizer, f"{role}_token", None)
        if token is not None:
            ids[f"{role}_token_id"] = tokenizer.convert_tokens_to_ids(token)
    ids.setdefault("bos_token_id", ids.get("cls_token_id"))
    ids.setdefault("eos_token_id", ids.get("sep_token_id"))
    return ids


# ------------------------------------------------------------------ converters

def _convert_ltg_bert_release(kind_name: str):
    def convert(release: Release, out, options: Options):
        from .common import ltg_bert_config
        from .ltg_bert import ltg_bert_model

        layout = _layout(release, kind_name, options)
        suppressed = suppressed_token_ids(release)
        if release.modeling_file is None:
            options.notes.append(f"{release.folder} has no modeling file: the release's masked-LM masking of special "
                                 f"ids is unknown, so none is applied")
        tensors, weights_name = read_weights(release.folder)
        tokenizer = read_tokenizer(release.folder)
        config, dropped = ltg_bert_config(release.config, **_token_ids(tokenizer), position_layout=layout,
                                          masked_lm_suppressed_token_ids=_within(suppressed, release))
        model = ltg_bert_model(tensors, config, release.folder / weights_name)
        return _finish(release, kind_name, model, tokenizer, dropped, out, options,
                       revision=f"position projection split {_LAYOUT_WORDS[layout]} (layout {layout})")
    return convert


def _convert_gpt_bert_release(release: Release, out, options: Options):
    from .gpt_bert import gpt_bert_model

    name = "GPT-BERT (BabyLM)"
    if options.layout is not None:
        raise ValueError(f"--layout means nothing for {name}: its code has one layout (halves first); drop it.")
    if release.modeling_file is not None and position_layout(release) != "babylm":
        raise ValueError(
            f"{name}: {release.modeling_file} splits the position projection in a way the converter does not know "
            f"(found: {_split_lines(release)}); GPT-BERT's code splits it halves first. Please report the file.")
    tensors, weights_name = read_weights(release.folder)
    tokenizer = read_tokenizer(release.folder)
    suppressed = _within(suppressed_token_ids(release), release)
    model, extra, dropped = gpt_bert_model(tensors, release.config, _token_ids(tokenizer),
                                           release.folder / weights_name, f"{release.folder / 'config.json'}",
                                           masked_lm_suppressed_token_ids=suppressed)
    return _finish(release, name, model, tokenizer, dropped, out, options,
                   revision="gated attention and layer weighting" if extra else "plain attention", gpt_bert=True)


def _within(ids: list[int], release: Release) -> list[int]:
    vocab = release.config.get("vocab_size")
    return [i for i in ids if not isinstance(vocab, int) or i < vocab]


def _refuse(message: str):
    def convert(release, out, options):
        raise ValueError(message.format(folder=release.folder))
    return convert


def _convert_norbert4(release: Release, out, options: Options):
    import importlib

    try:  # NorBERT4's converter (hf_ltg/conversion/norbert4.py) plugs in here where it exists
        norbert4 = importlib.import_module(f"{__package__}.norbert4")
    except ImportError:
        norbert4 = None
    if norbert4 is None or not hasattr(norbert4, "convert_norbert4_release"):
        raise ValueError(f"{release.folder} is a NorBERT4 release (modeling_gptbert.py, GptBert*): NorBERT4 is a "
                         f"different architecture that hf-ltg convert does not yet support.")
    return norbert4.convert_norbert4_release(release, out, options)


def _names(release: Release) -> str:
    return " ".join(sorted(release.classes | release.modules)).lower()


def _is_gpt_bert(release: Release) -> bool:
    return (release.has_module("modeling_ltgbert")
            and ("LtgbertForCausalLM" in release.classes or "attention_layers" in release.code))


KINDS = [
    ReleaseKind(
        "NorBERT4", "ltg/norbert4-*", "modeling_gptbert.py",
        "`ltg_norbert4` (hf_ltg/conversion/norbert4.py): the release's scaled weights folded in fp32; masked and "
        "causal mode on the same weights; its LM, sequence/token-classification and QA heads",
        lambda r: r.has_module("modeling_gptbert") or r.has_module("configuration_gptbert")
        or any(c.startswith("GptBert") for c in r.classes),
        _convert_norbert4),
    ReleaseKind(
        "ELC-BERT", "lgcharpe/ELC_BERT_*", "modeling_elc_bert.py",
        "refused: its layer weighting has no ltg_bert field",
        lambda r: "elc" in _names(r) or any(r.folder.glob("modeling_elc*.py")) or "prev_layer_weights" in r.code,
        _refuse("{folder} is an ELC-BERT release: every ELC-BERT layer reads a softmax-weighted sum of all earlier "
                "layers' outputs (prev_layer_weights), which no ltg_bert config field reproduces, so it is not "
                "converted.")),
    ReleaseKind(
        "GPT-BERT (BabyLM)", "ltg/gpt-bert-babylm-*", "modeling_ltgbert.py (LtgbertForCausalLM)",
        "`ltg_bert` with GPT-BERT's flags; masked mode shifted to BERT positions, causal mode as released",
        _is_gpt_bert, _convert_gpt_bert_release),
    ReleaseKind(
        "NorBERT3", "ltg/norbert3-{xs,small,base,large}, ltg/norbert3-*-base", "modeling_norbert.py",
        "`ltg_bert`; layout from the code (Hub file: heads first = bnc; 2023-03 copy: halves first = babylm); "
        "special/unused ids masked as released",
        lambda r: r.has_module("modeling_norbert") or any(c.startswith("Norbert") for c in r.classes),
        _convert_ltg_bert_release("NorBERT3")),
    ReleaseKind(
        "LTG-BERT (BabyLM, BNC)", "ltg/ltg-bert-babylm, babylm/ltgbert-*, ltg/bnc-bert-span*",
        "modeling_ltgbert.py (LtgbertForMaskedLM, LtgBertForMaskedLM)",
        "`ltg_bert`; layout from the code (BabyLM wrapper: halves first = babylm; BNC wrapper: heads first = bnc); "
        "special ids masked as released (the BNC wrapper masks none)",
        lambda r: r.has_module("modeling_ltgbert") or any(c.startswith("Ltgbert") for c in r.classes),
        _convert_ltg_bert_release("LTG-BERT (BabyLM, BNC)")),
]


def detect(release: Release) -> ReleaseKind:
    kind = next((k for k in KINDS if k.matches(release)), None)
    if kind is None and (release.config.get("model_type") in ("ltg_bert", "ltg_gpt", "norbert4")
                         or release.has_module("modeling_ltg_bert") or release.has_module("modeling_ltg_gpt")):
        raise ValueError(f"{release.folder} is already an hf_ltg checkpoint ({release.config.get('model_type')}); "
                         f"there is nothing to convert (load it, or `hf-ltg export` it).")
    if kind is None:
        raise ValueError(
            f"{release.folder} is no LTG release hf-ltg knows: its config.json names "
            f"{sorted(release.classes) or 'no architectures or auto_map'} and the folder holds "
            f"{release.modeling_file.name if release.modeling_file else 'no modeling_*.py'}; known: "
            f"{', '.join(k.name for k in KINDS)}. For another format name it with --from."
        )
    return kind


def convert_release(src, out, layout: str | None = None, verify: bool = False, config_path=None) -> tuple[Path, list]:
    """Convert the LTG release folder `src` into the hf_ltg checkpoint folder `out`; returns the folder and
    one-line notes for the user (dropped config fields, a missing tokenizer, the --verify figure)."""
    if layout is not None and layout not in POSITION_LAYOUTS:
        raise ValueError(f"Unknown --layout {layout!r}; use one of {POSITION_LAYOUTS}.")
    release = Release.read(src, config_path)
    kind = detect(release)
    options = Options(layout=layout, verify=verify)
    path = kind.convert(release, out, options)
    return path, options.notes


# ------------------------------------------------------------------ writing, verifying

def _finish(release: Release, kind_name: str, model, tokenizer, dropped, out, options: Options, revision: str,
            gpt_bert: bool = False) -> Path:
    check = checked(release, tokenizer, dropped, options, lambda: verify(release, model, gpt_bert))
    card = model_card(release, kind_name, model.config, revision, check, gpt_bert, tokenizer is not None, Path(out).name)
    return write_converted(model, tokenizer, out, card)


def checked(release: Release, tokenizer, dropped, options: Options, verify_logits) -> str:
    """What every release kind says after building its model: dropped fields, a missing tokenizer and, with
    `--verify`, `verify_logits()` (refusing above `VERIFY_TOLERANCE`, before OUT exists). Returns the model
    card's line about the check."""
    if dropped:
        options.notes.append(f"dropped config fields hf_ltg does not read: {', '.join(dropped)}")
    if tokenizer is None:
        options.notes.append(f"{release.folder} has no tokenizer.json: converted weights and config only; copy the "
                             f"release's tokenizer files into the output before use")
    if not options.verify:
        return "not run (convert with --verify to compare with the release's own code)"
    figure = verify_logits()
    source = release.modeling_file.name if release.modeling_file is not None else "the release's code"
    options.notes.append(f"--verify: largest logit difference from {source} {figure:.2e} (limit {VERIFY_TOLERANCE:g})")
    if not figure <= VERIFY_TOLERANCE:
        raise ValueError(
            f"--verify: the converted model's logits differ from the release's own code ({source}) "
            f"by {figure:.3g} > {VERIFY_TOLERANCE:g}; OUT was not written. A --layout or --config override that "
            f"does not fit the release does this; drop it.")
    return f"`hf-ltg convert --verify`: largest logit difference from the release's own code {figure:.2e}"


def write_converted(model, tokenizer, out, card: str) -> Path:
    """The converted folder, written atomically: weights, config and code, the tokenizer if any, the card."""
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            from ..tokenization import save_tokenizer

            save_tokenizer(tokenizer, tmp, model.config)
        (tmp / "README.md").write_text(card)
    return Path(out)


def verify_batch(config) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed right-padded batch of two rows: [CLS] ... [MASK] ... [SEP], and a shorter one."""
    generator = torch.Generator().manual_seed(0)
    length = min(12, config.max_position_embeddings)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=generator)
    keep = torch.ones(2, length, dtype=torch.bool)
    keep[1, length - 4:] = False
    if config.cls_token_id is not None:
        ids[:, 0] = config.cls_token_id
    if config.mask_token_id is not None:
        ids[:, 4] = config.mask_token_id
    if config.pad_token_id is not None:
        ids[~keep] = config.pad_token_id
    return ids, keep


def verify(release: Release, model, gpt_bert: bool) -> float:
    """Largest |logit difference| between `model` and the release's own code, at real tokens of `verify_batch`
    (masked mode; GPT-BERT also causal mode, and its masked logits one position later in ours)."""
    import copy

    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = release.config.get("auto_map") or {}
    try:
        their_config = AutoConfig.from_pretrained(release.folder, trust_remote_code=True)
        masked_class = get_class_from_dynamic_module(auto_map["AutoModelForMaskedLM"], release.folder)
        causal_class = get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], release.folder) \
            if gpt_bert else None
    except Exception as error:
        raise ValueError(f"--verify could not load the release's own code from {release.folder}: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    tensors, _ = read_weights(release.folder)
    ids, keep = verify_batch(model.config)
    mask = keep.long()

    def theirs(cls):
        their = cls(copy.deepcopy(their_config))
        missing, unexpected = their.load_state_dict(tensors, strict=False)
        missing = [m for m in missing if not m.endswith(("position_indices", "nonlinearity.5.weight"))]
        if missing or unexpected:
            raise ValueError(f"--verify: the release's {cls.__name__} does not take the folder's weights "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
        try:
            with torch.no_grad():
                return their.eval()(input_ids=ids, attention_mask=mask, return_dict=True).logits.float()
        except Exception as error:  # the release's code, on this transformers release
            raise ValueError(f"--verify: the release's {cls.__name__} failed here ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); convert without --verify, or "
                             f"with the transformers release its code was written for.") from error

    with torch.no_grad():
        ours = model.eval()(input_ids=ids, attention_mask=mask).logits.float()
    reference = theirs(masked_class)
    if gpt_bert:  # the release predicts token i + 1 at position i; ours at i + 1
        figure = _difference(ours[:, 1:], reference[:, :-1], keep[:, 1:])
        from ..ltg_bert import LtgBertForCausalLM

        causal = LtgBertForCausalLM(model.config)
        causal.load_state_dict(model.state_dict())
        with torch.no_grad():
            ours_causal = causal.eval()(input_ids=ids, attention_mask=mask).logits.float()
        return max(figure, _difference(ours_causal, theirs(causal_class), keep))
    return _difference(ours, reference, keep)


def _difference(ours, theirs, keep) -> float:
    ours, theirs = ours[keep], theirs[keep]
    if not torch.equal(torch.isneginf(ours), torch.isneginf(theirs)):
        return float("inf")  # -inf (suppressed ids) in different places
    finite = torch.isfinite(theirs)
    return (ours[finite] - theirs[finite]).abs().max().item()


def model_card(release: Release, kind_name: str, config, revision: str, check: str, gpt_bert: bool,
               has_tokenizer: bool, name: str) -> str:
    kind = next(k for k in KINDS if k.name == kind_name)
    suppressed = config.masked_lm_suppressed_token_ids
    card = f"""---
library_name: transformers
pipeline_tag: fill-mask
tags:
- hf_ltg
- ltg_bert
- custom_code
---

# {name}

Converted by `hf-ltg convert` from a {kind_name} release folder (`{release.folder.name}`; Hub ids
{kind.hub_ids}; its `{release.modeling_file.name if release.modeling_file else kind.modeling_file}`: {revision}) into an
`ltg_bert` checkpoint: {config.num_hidden_layers} layers, hidden size {config.hidden_size},
{config.num_attention_heads} heads, vocabulary {config.vocab_size}. Every Auto class loads with
`trust_remote_code=True` from this folder's own `configuration_ltg_bert.py` / `modeling_ltg_bert.py`.

Check against the release: {check}.
"""
    if suppressed:
        card += (f"\nAs the release does, the masked-LM head gives ids {suppressed[0]}..{suppressed[-1]} (special and "
                 f"unused tokens) a logit of -inf (`masked_lm_suppressed_token_ids`), so fill-mask never answers them.\n")
    if gpt_bert:
        card += """
## How positions line up

The release's masked-LM returns, at position i, its prediction for token i + 1 (GPT-BERT's masked
next-token prediction). This folder keeps BERT's convention instead (`masked_next_token: true`): the
logits at position i are the prediction for token i, taken from hidden state i - 1, so fill-mask reads
them at the `[MASK]` and gives what the release predicts for it; position 0 (`[CLS]`) has zero logits.
Release logits `[:, i]` = these `[:, i + 1]`. `AutoModelForCausalLM` is the release's causal model:
logits at position i predict token i + 1, as there.
"""
    if not has_tokenizer:
        card += "\nThe release folder had no tokenizer: copy its tokenizer files here before use.\n"
    card += """
## Security: remote code

`trust_remote_code=True` runs this folder's `configuration_ltg_bert.py` and `modeling_ltg_bert.py`, which
import only `torch` and `transformers`; read them, and pin the revision you reviewed. The weights are
safetensors.
"""
    return card
