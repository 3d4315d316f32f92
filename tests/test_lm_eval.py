"""lm-eval on hf_ltg checkpoints: the stock `hf` model (causal route) and hf_ltg's `ltg-mlm` (masked PLL).

A tiny multiple-choice task and a tiny rolling-loglikelihood task are written by the tests; lm-eval's
per-sample log-likelihoods must equal a direct computation written here with plain loops.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import REPO, run_without_hf_ltg
from scoring_reference import causal_log_likelihood, pseudo_log_likelihood
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

pytest.importorskip("lm_eval")

GPT = REPO / "checkpoints" / "ltg-gpt-lm"
BERT = REPO / "checkpoints" / "ltg-bert-mlm"

CHOICES = [
    {"context": "The cat sat on the", "choices": ["mat.", "dog sat on the log."], "label": 0},
    {"context": "A language model predicts the next", "choices": ["token.", "fjord."], "label": 0},
    {"context": "Hugging Face pipelines load models with the", "choices": ["Auto classes.", "cat."], "label": 0},
]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Transformers use attention to mix information."]


def write_tasks(folder):
    """tiny_mc (multiple choice, ' ' between context and choice) and tiny_roll (loglikelihood_rolling)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in CHOICES))
    (folder / "roll.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    common = "dataset_path: json\ntest_split: test\n"
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n"
    )
    (folder / "tiny_roll.yaml").write_text(
        f"task: tiny_roll\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'roll.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n"
    )
    return folder


def split_pair(tokenizer, context, continuation):
    """Context and continuation ids without special tokens, the continuation cut from the whole text."""
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert whole[:len(context_ids)] == context_ids
    return context_ids, whole[len(context_ids):]


def expected_causal(folder):
    """lm-eval's requests scored directly: each choice after ' ' given the context (no BOS), each
    text given the BOS token (lm-eval's prefix for rolling log-likelihoods)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    choices = []
    for doc in CHOICES:
        row = []
        for choice in doc["choices"]:
            context, continuation = split_pair(tokenizer, doc["context"], " " + choice)
            row.append(causal_log_likelihood(model, context + continuation, len(context))[0])
        choices.append(row)
    bos = tokenizer.bos_token_id
    rolling = [causal_log_likelihood(model, [bos] + tokenizer(t, add_special_tokens=False)["input_ids"], 1)[0]
               for t in TEXTS]
    return choices, rolling


def expected_pll(folder):
    """Each choice's tokens masked one at a time in [CLS] context choice [SEP]; each text's tokens in [CLS] text [SEP]."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    choices = []
    for doc in CHOICES:
        row = []
        for choice in doc["choices"]:
            context, continuation = split_pair(tokenizer, doc["context"], " " + choice)
            ids = [cls, *context, *continuation, sep]
            positions = range(1 + len(context), 1 + len(context) + len(continuation))
            row.append(pseudo_log_likelihood(model, ids, positions, mask)[0])
        choices.append(row)
    rolling = []
    for text in TEXTS:
        ids = [cls, *tokenizer(text, add_special_tokens=False)["input_ids"], sep]
        rolling.append(pseudo_log_likelihood(model, ids, range(1, len(ids) - 1), mask)[0])
    return choices, rolling


def accuracy(choices):
    return sum(max(range(len(row)), key=row.__getitem__) == doc["label"] for row, doc in zip(choices, CHOICES)) / len(CHOICES)


def assert_close(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-4), (got, expected)


@pytest.mark.slow  # a fresh process importing lm-eval and datasets, two checkpoints: ~20 s of CPU
def test_stock_hf_model_scores_gpt_and_ltg_bert_as_causal_lms_without_hf_ltg(tmp_path, monkeypatch):
    tasks = write_tasks(tmp_path / "tasks")
    shutil.copytree(BERT, tmp_path / "bert")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    code = f"""
    import json
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path={str(tasks)!r}, include_defaults=False)  # indexing lm-eval's own tasks takes seconds
    # LTG-BERT's tokenizer frames every text in [CLS] ... [SEP]; add_bos_token=False keeps the
    # [SEP] out of contexts and continuations (lm-eval still puts [CLS] before rolling texts).
    runs = {{"gpt": f"pretrained={{CKPT}},trust_remote_code=True",
            "bert": "pretrained={tmp_path / 'bert'},trust_remote_code=True,add_bos_token=False"}}
    out = {{}}
    for name, model_args in runs.items():
        results = lm_eval.simple_evaluate(model="hf", model_args=model_args + ",dtype=float32", tasks=["tiny_mc", "tiny_roll"],
                                          task_manager=manager, log_samples=True, batch_size=2, device="cpu")
        samples = results["samples"]
        out[name] = {{
            "choices": [[float(r[0][0]) for r in s["resps"]] for s in sorted(samples["tiny_mc"], key=lambda s: s["doc_id"])],
            "rolling": [float(s["resps"][0][0]) for s in sorted(samples["tiny_roll"], key=lambda s: s["doc_id"])],
            "acc": results["results"]["tiny_mc"]["acc,none"],
        }}
    print("RESULT", json.dumps(out))
    """
    stdout = run_without_hf_ltg(textwrap.dedent(code), GPT, tmp_path)
    out = json.loads(stdout.split("RESULT ", 1)[1])

    for name, folder in (("gpt", GPT), ("bert", BERT)):
        choices, rolling = expected_causal(folder)
        for got, expected in zip(out[name]["choices"], choices):
            assert_close(got, expected)
        assert_close(out[name]["rolling"], rolling)
        assert out[name]["acc"] == pytest.approx(accuracy(choices))


@pytest.mark.slow  # a fresh process importing lm-eval and datasets: ~15 s of CPU
def test_ltg_mlm_model_on_lm_evals_command_line_scores_pseudo_log_likelihoods(tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "datasets"),
               HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-m", "hf_ltg.lm_eval", "--model", "ltg-mlm", "--model_args", f"pretrained={BERT}",
         "--tasks", "tiny_mc", "tiny_roll", "--include_path", str(tasks), "--batch_size", "4",
         "--log_samples", "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_pseudo_log_likelihoods_in(tmp_path / "out")


@pytest.mark.slow  # lm-eval's command line indexes its thousands of task files first: ~10 s of CPU
def test_hf_ltg_lm_eval_command_runs_lm_evals_command_line_with_ltg_mlm(tmp_path, monkeypatch, capsys):
    from hf_ltg.cli import main

    tasks = write_tasks(tmp_path / "tasks")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))

    assert main(["lm-eval", "run", "--model", "ltg-mlm", "--model_args", f"pretrained={BERT}", "--tasks", "tiny_mc",
                 "tiny_roll", "--include_path", str(tasks), "--batch_size", "4", "--log_samples",
                 "--output_path", str(tmp_path / "out")]) == 0

    assert "tiny_mc" in capsys.readouterr().out  # lm-eval's results table
    assert_pseudo_log_likelihoods_in(tmp_path / "out")


def test_hf_ltg_lm_eval_without_arguments_says_what_to_type(capsys):
    from hf_ltg.cli import main

    assert main(["lm-eval"]) == 2
    assert "error: give lm-eval's arguments, its sub-command first: hf-ltg lm-eval run --model ltg-mlm" in \
        capsys.readouterr().err


def assert_pseudo_log_likelihoods_in(out):
    """lm-eval's samples and accuracy in `out` equal masking each token with a plain loop."""
    def samples(task):
        [path] = out.rglob(f"samples_{task}_*.jsonl")
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])

    choices, rolling = expected_pll(BERT)
    for sample, expected in zip(samples("tiny_mc"), choices):
        assert_close([float(r[0][0]) for r in sample["resps"]], expected)
    assert_close([float(s["resps"][0][0]) for s in samples("tiny_roll")], rolling)
    [results_file] = out.rglob("results_*.json")
    assert json.loads(results_file.read_text())["results"]["tiny_mc"]["acc,none"] == pytest.approx(accuracy(choices))


def ltg_mlm(**model_args):
    from lm_eval.api.registry import get_model

    import hf_ltg.lm_eval  # noqa: F401  (registers ltg-mlm)

    return get_model("ltg-mlm")(pretrained=str(BERT), batch_size=7, device="cpu", **model_args)


def requests(kind, arguments):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=0) for args in arguments]


def test_ltg_mlm_scores_long_texts_in_windows_and_empty_contexts_in_cls_sep():
    tokenizer = AutoTokenizer.from_pretrained(BERT, trust_remote_code=True)
    model = AutoModelForMaskedLM.from_pretrained(BERT, trust_remote_code=True, dtype=torch.float32).eval()
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    lm = ltg_mlm(max_length=8)  # windows of 6 tokens between [CLS] and [SEP]

    [rolling] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(TEXTS[0],)]))
    [(empty_context, _)] = lm.loglikelihood(requests("loglikelihood", [("", "The cat sat.")]))

    tokens = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert len(tokens) > 6
    windows = [[cls, *tokens[i:i + 6], sep] for i in range(0, len(tokens), 6)]
    expected = sum(pseudo_log_likelihood(model, w, range(1, len(w) - 1), mask)[0] for w in windows)
    assert rolling == pytest.approx(expected, abs=1e-4)
    ids = [cls, *tokenizer("The cat sat.", add_special_tokens=False)["input_ids"], sep]
    assert empty_context == pytest.approx(pseudo_log_likelihood(model, ids, range(1, len(ids) - 1), mask)[0], abs=1e-4)


def test_ltg_mlm_refuses_generation_and_unknown_model_args_with_the_fix():
    with pytest.raises(NotImplementedError, match="--model hf"):
        ltg_mlm().generate_until(requests("generate_until", [("The cat", {"until": ["."]})]))
    with pytest.raises(ValueError, match=r"ltg-mlm does not take model_args \['parallelize'\]"):
        ltg_mlm(parallelize=True)
