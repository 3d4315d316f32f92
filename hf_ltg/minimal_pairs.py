"""Minimal-pair evaluation (BLiMP's JSONL format): does the model score the good sentence higher?

Each line of a pair file is a JSON object with `sentence_good` and `sentence_bad`; the optional
fields `linguistics_term`, `phenomenon`, `field` and `UID` group the pairs. Real BLiMP files
(one per paradigm) are read unchanged. A sentence's score is its causal log-likelihood (every
token given the ones before it, the first given BOS) or its masked pseudo-log-likelihood (every
token masked in turn in `[CLS] sentence [SEP]`): see `hf_ltg.scoring`. A pair counts as right
when the good sentence scores strictly higher.

`SHIPPED_PAIRS` is a small pair file written for this project (50 pairs: subject-verb and
determiner-noun agreement, irregular past tenses and plurals, anaphor agreement, argument structure).
"""

import json
from collections import defaultdict
from pathlib import Path

SHIPPED_PAIRS = Path(__file__).with_name("minimal_pairs.jsonl")
SENTENCE_FIELDS = ("sentence_good", "sentence_bad")
GROUP_FIELDS = ("linguistics_term", "phenomenon", "field", "UID")
MODES = ("causal", "masked")


def read_pairs(paths) -> list[dict]:
    """Every pair of the JSONL files, each with `file` and `line` added; a ValueError naming the
    file, line and field for the first line that is not a pair."""
    pairs = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"No pair file at {path}; pass BLiMP-style JSONL files "
                                    f"(sentence_good, sentence_bad), e.g. {SHIPPED_PAIRS}.")
        before = len(pairs)
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number} is not valid JSON ({error.msg}); each line must be one "
                                     "JSON object with sentence_good and sentence_bad.") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}, line {number} is a JSON {type(row).__name__}, not an object with "
                                     "sentence_good and sentence_bad.")
                for field in SENTENCE_FIELDS:
                    if field not in row:
                        raise ValueError(f"{path}, line {number} has no field '{field}'; every line needs "
                                         f"{' and '.join(SENTENCE_FIELDS)} (BLiMP's JSONL format).")
                    if not isinstance(row[field], str) or not row[field].strip():
                        raise ValueError(f"{path}, line {number}: '{field}' must be a non-empty string, "
                                         f"got {row[field]!r}.")
                pairs.append({**row, "file": str(path), "line": number})
        if len(pairs) == before:
            raise ValueError(f"{path} holds no pairs; each line must be a JSON object with sentence_good and "
                             "sentence_bad.")
    return pairs


def default_group_field(pairs) -> str | None:
    """The first of GROUP_FIELDS that every pair has, or None."""
    return next((f for f in GROUP_FIELDS if all(f in pair for pair in pairs)), None)


def score_sentences(model, tokenizer, sentences, mode: str, batch_size: int, progress=None) -> list[float]:
    """Causal log-likelihood or masked pseudo-log-likelihood of each sentence (natural log)."""
    from .scoring import causal_prefix, causal_scores, pseudo_log_likelihood_scores, special_tokens_around

    ids = [tokenizer(sentence, add_special_tokens=False)["input_ids"] for sentence in sentences]
    if mode == "causal":
        prefix = causal_prefix(tokenizer)
        scores = causal_scores(model, [(prefix, tokens) for tokens in ids], batch_size, progress=progress)
    else:
        before, after = special_tokens_around(tokenizer)
        scores = pseudo_log_likelihood_scores(model, [(before, tokens, after) for tokens in ids],
                                              tokenizer.mask_token_id, batch_size, progress=progress)
    return [score.log_likelihood for score in scores]


def load_models(model_dir, modes, tokenizer) -> dict:
    """{mode: model}; a ValueError when the checkpoint cannot score in a mode."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    models = {}
    for mode in modes:
        auto_class = AutoModelForCausalLM if mode == "causal" else AutoModelForMaskedLM
        if mode == "masked" and tokenizer.mask_token_id is None:
            raise ValueError(f"{model_dir} has no mask token, so it cannot be scored by masked pseudo-log-likelihood; "
                             "use --mode causal.")
        try:
            models[mode] = auto_class.from_pretrained(model_dir, dtype="float32").eval()
        except ValueError as error:
            if "Unrecognized configuration class" not in str(error):
                raise
            head = "causal-LM" if mode == "causal" else "masked-LM"
            other = "masked" if mode == "causal" else "causal"
            raise ValueError(f"{model_dir} has no {head} head ({auto_class.__name__} cannot load it); "
                             f"use --mode {other}.") from None
    return models


def default_modes(tokenizer) -> tuple[str, ...]:
    """Both modes where the tokenizer has a mask token (LTG-BERT), else causal only."""
    return MODES if tokenizer.mask_token_id is not None else ("causal",)


def evaluate(model_dir, pairs, modes=None, batch_size: int = 32, group_by: str | None = None,
             progress=None) -> dict:
    """Score every pair (from `read_pairs`) in each mode (default: `default_modes`) and return the
    accuracies and per-pair scores (see `summarise`). `progress(n)` is called as sentences finish."""
    from .tokenization import load_tokenizer

    if group_by is not None and any(group_by not in pair for pair in pairs):
        first = next(pair for pair in pairs if group_by not in pair)
        raise ValueError(f"{first['file']}, line {first['line']} has no field '{group_by}' to group by; "
                         f"choose a field every line has (BLiMP's: {', '.join(GROUP_FIELDS)}).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive integer, got {batch_size!r}.")
    tokenizer = load_tokenizer(model_dir)
    for pair in pairs:
        for field in SENTENCE_FIELDS:
            if not tokenizer(pair[field], add_special_tokens=False)["input_ids"]:
                raise ValueError(f"{pair['file']}, line {pair['line']}: '{field}' {pair[field]!r} has no tokens under "
                                 f"the tokenizer of {model_dir}; give it some text.")
    models = load_models(model_dir, modes or default_modes(tokenizer), tokenizer)
    sentences = [pair[field] for pair in pairs for field in SENTENCE_FIELDS]
    scores = {}
    for mode, model in models.items():
        values = score_sentences(model, tokenizer, sentences, mode, batch_size, progress)
        scores[mode] = list(zip(values[0::2], values[1::2]))
    return summarise(pairs, scores, group_by or default_group_field(pairs), model=str(model_dir))


def summarise(pairs, scores: dict, group_by: str | None, **about) -> dict:
    """`scores` is {mode: [(good, bad) log-likelihood per pair]}. Accuracy counts good > bad."""
    groups = defaultdict(lambda: defaultdict(int))
    rows = []
    for index, pair in enumerate(pairs):
        group = str(pair[group_by]) if group_by else "all"
        groups[group]["pairs"] += 1
        row = {"file": pair["file"], "line": pair["line"], "group": group}
        for mode, values in scores.items():
            good, bad = values[index]
            groups[group][mode] += good > bad
            row[mode] = {"good": good, "bad": bad, "correct": good > bad}
        rows.append(row)
    return {
        **about,
        "files": sorted({pair["file"] for pair in pairs}),
        "modes": list(scores),
        "group_by": group_by,
        "pairs": len(pairs),
        "accuracy": {mode: sum(r[mode]["correct"] for r in rows) / len(rows) for mode in scores},
        "groups": {group: {"pairs": counts["pairs"], **{mode: counts[mode] / counts["pairs"] for mode in scores}}
                   for group, counts in sorted(groups.items())},
        "scores": rows,
    }


def format_table(results: dict) -> str:
    """Accuracy per group and overall, one column per mode."""
    modes = results["modes"]
    width = max([len("overall"), *(len(g) for g in results["groups"])])
    lines = [f"{(results['group_by'] or 'group'):<{width}}  {'pairs':>6}" + "".join(f"  {m:>7}" for m in modes)]
    for group, row in results["groups"].items():
        lines.append(f"{group:<{width}}  {row['pairs']:>6}" + "".join(f"  {row[m]:>7.1%}" for m in modes))
    lines.append(f"{'overall':<{width}}  {results['pairs']:>6}"
                 + "".join(f"  {results['accuracy'][m]:>7.1%}" for m in modes))
    return "\n".join(lines)
