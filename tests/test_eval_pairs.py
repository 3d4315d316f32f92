"""`hf-ltg eval-pairs`: minimal-pair accuracy equals a direct computation; bad pair files are one-line errors."""

import json

import pytest
import torch
from helpers import REPO
from scoring_reference import causal_log_likelihood, pseudo_log_likelihood
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from hf_ltg.cli import main
from hf_ltg.minimal_pairs import GROUP_FIELDS, SHIPPED_PAIRS, read_pairs

GPT = REPO / "checkpoints" / "ltg-gpt-lm"
BERT = REPO / "checkpoints" / "ltg-bert-mlm"

# BLiMP's own line format (every field of a blimp/data/*.jsonl line), two paradigms.
PAIRS = [
    ("The dog barks.", "The dog bark.", "subject_verb_agreement", "regular_plural_subject_verb_agreement_1"),
    ("The dogs bark.", "The dogs barks.", "subject_verb_agreement", "regular_plural_subject_verb_agreement_1"),
    ("This book is old.", "These book is old.", "determiner_noun_agreement", "determiner_noun_agreement_1"),
    ("Those cats sleep.", "That cats sleep.", "determiner_noun_agreement", "determiner_noun_agreement_1"),
    ("She saw herself.", "She saw himself.", "anaphor_agreement", "anaphor_gender_agreement"),
]


def write_pairs(path, pairs=PAIRS):
    lines = [json.dumps({"sentence_good": good, "sentence_bad": bad, "field": "morphology", "linguistics_term": term,
                         "UID": uid, "simple_LM_method": True, "one_prefix_method": False, "two_prefix_method": False,
                         "lexically_identical": False, "pairID": str(i)})
             for i, (good, bad, term, uid) in enumerate(pairs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def direct_scores(folder, mode, sentences):
    """Each sentence scored alone: causally after the BOS token, or masked in [CLS] sentence [SEP]."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    auto_class = AutoModelForCausalLM if mode == "causal" else AutoModelForMaskedLM
    model = auto_class.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    scores = []
    for sentence in sentences:
        ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
        if mode == "causal":
            bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            scores.append(causal_log_likelihood(model, [bos, *ids], 1)[0])
        else:
            framed = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
            scores.append(pseudo_log_likelihood(model, framed, range(1, len(framed) - 1), tokenizer.mask_token_id)[0])
    return scores


def expected_accuracy(folder, mode, pairs=PAIRS):
    good = direct_scores(folder, mode, [p[0] for p in pairs])
    bad = direct_scores(folder, mode, [p[1] for p in pairs])
    correct = [g > b for g, b in zip(good, bad)]
    groups = {}
    for (_, _, term, _), right in zip(pairs, correct):
        groups.setdefault(term, []).append(right)
    return sum(correct) / len(correct), {t: sum(v) / len(v) for t, v in groups.items()}, good, bad


@pytest.mark.parametrize("folder, mode", [(BERT, "both"), (GPT, "causal")], ids=["ltg_bert-both", "ltg_gpt-causal"])
def test_accuracy_per_group_and_overall_equals_scoring_each_sentence_alone(folder, mode, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("HF_LTG_PROGRESS", "1")  # the bar, also off a terminal
    pairs_file = write_pairs(tmp_path / "pairs.jsonl")

    code = main(["eval-pairs", str(folder), str(pairs_file), "--mode", mode, "--batch-size", "3",
                 "--output", str(tmp_path / "results.json")])

    assert code == 0
    captured = capsys.readouterr()
    assert "scoring sentences" in captured.err  # the progress bar
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["group_by"] == "linguistics_term" and results["pairs"] == len(PAIRS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "results.json"]  # no temporary file left
    for name in (["causal", "masked"] if mode == "both" else [mode]):
        overall, groups, good, bad = expected_accuracy(folder, name)
        assert results["accuracy"][name] == pytest.approx(overall)
        assert {g: row[name] for g, row in results["groups"].items()} == pytest.approx(groups)
        assert [row[name]["good"] for row in results["scores"]] == pytest.approx(good, abs=1e-4)
        assert [row[name]["bad"] for row in results["scores"]] == pytest.approx(bad, abs=1e-4)
        assert f"{overall:.1%}" in captured.out.splitlines()[-2].split()  # the 'overall' row of the table
    assert captured.out.splitlines()[-2].startswith("overall")


def test_default_mode_is_both_for_a_masked_lm_and_causal_for_a_causal_lm(tmp_path, capsys):
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:2])
    assert main(["eval-pairs", str(BERT), str(pairs_file)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-2:] == ["causal", "masked"]
    assert main(["eval-pairs", str(GPT), str(pairs_file)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "causal"


@pytest.mark.parametrize("line, message", [
    ({"sentence_good": "The dog barks."}, "line 2 has no field 'sentence_bad'"),
    ({"sentence_bad": "The dog bark."}, "line 2 has no field 'sentence_good'"),
    ({"sentence_good": "", "sentence_bad": "x"}, "line 2: 'sentence_good' must be a non-empty string"),
    ("not json", "line 2 is not valid JSON"),
    ({"sentence_good": "The dog barks.", "sentence_bad": "\u200b"}, "line 2: 'sentence_bad' '\\u200b' has no tokens"),
    (["a", "b"], "line 2 is a JSON list"),
])
def test_a_bad_line_is_one_error_naming_file_line_and_field_and_nothing_is_written(line, message, tmp_path, capsys):
    good = json.dumps({"sentence_good": "The dog barks.", "sentence_bad": "The dog bark."})
    bad = line if isinstance(line, str) else json.dumps(line)
    (tmp_path / "pairs.jsonl").write_text(f"{good}\n{bad}\n")

    code = main(["eval-pairs", str(BERT), str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "out.json")])

    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"hf-ltg eval-pairs: error: {tmp_path / 'pairs.jsonl'}, {message}")
    assert "\n" not in err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "masked"], "has no mask token, so it cannot be scored by masked pseudo-log-likelihood; use --mode causal"),
    (["--group-by", "phenomenon"], "line 1 has no field 'phenomenon' to group by"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--output", "missing/results.json"], "the folder missing does not exist"),
])
def test_impossible_requests_are_one_line_errors_with_the_fix(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs_file = write_pairs(tmp_path / "pairs.jsonl", PAIRS[:1])

    assert main(["eval-pairs", str(GPT), str(pairs_file), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_the_shipped_pairs_are_blimp_lines_with_groups_and_differ_in_each_pair():
    pairs = read_pairs([SHIPPED_PAIRS])
    assert 40 <= len(pairs) <= 60
    assert all(all(field in pair for field in GROUP_FIELDS if field != "phenomenon") for pair in pairs)
    assert all(pair["sentence_good"] != pair["sentence_bad"] for pair in pairs)
    assert len({pair["linguistics_term"] for pair in pairs}) >= 4
