"""`hf-ltg pretrain --arch ltg-bert` and fine-tuning an LTG-BERT checkpoint with `finetune-cls`."""

import contextlib
import io
import json
import re

import pytest
import torch

from hf_ltg.cli import main

TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "300",
        "--max-length", "32", "--batch-size", "8", "--logging-steps", "2", "--eval-steps", "1000"]


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("ltg_bert_pretrain")
    (root / "train.txt").write_text(topics["for"] + "\n\n" + topics["while"] + "\n\n" + topics["if"])
    (root / "valid.txt").write_text(topics["break"])
    code, out = run_cli("pretrain", "--arch", "ltg-bert", *TINY, "--max-steps", "4", "--masking", "subword",
                        "--train-files", root / "train.txt", "--validation-files", root / "valid.txt",
                        "--output", root / "ckpt", "--work-dir", root / "work")
    assert code == 0, out
    return root / "ckpt", out


def test_pretrain_ltg_bert_writes_a_masked_lm_with_a_wordpiece_tokenizer(pretrained):
    folder, out = pretrained
    assert re.search(r"pretraining LtgBertForMaskedLM .* as a masked LM \(subword, 15%\)", out)
    assert re.search(r"validation masked-token loss [\d.]+ \(accuracy [\d.]+\) over [\d,]+ masked tokens; "
                     r"unigram baseline loss [\d.]+", out)
    assert "fill-mask: " in out
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "ltg_bert" and config["architectures"] == ["LtgBertForMaskedLM"]
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("for x in y")["input_ids"][0] == config["cls_token_id"] == tokenizer.cls_token_id
    assert config["mask_token_id"] == tokenizer.mask_token_id and config["pad_token_id"] == tokenizer.pad_token_id
    assert len(pipeline("fill-mask", model=str(folder))("The [MASK] statement", top_k=2)) == 2


def test_finetune_cls_trains_a_classifier_on_an_ltg_bert_checkpoint(pretrained, tmp_path):
    rows = [("ham", "Are we still meeting for lunch tomorrow?"), ("spam", "WIN a FREE prize now! Call today"),
            ("ham", "See you at the station at six."), ("spam", "Urgent! Claim your cash reward, text WIN")] * 4
    for name in ("train.tsv", "valid.tsv"):
        (tmp_path / name).write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    code, out = run_cli("finetune-cls", "--model", pretrained[0], "--train-file", tmp_path / "train.tsv",
                        "--validation-file", tmp_path / "valid.tsv", "--max-length", "32", "--max-steps", "2",
                        "--freeze", "last_block", "--output", tmp_path / "cls", "--work-dir", tmp_path / "work")
    assert code == 0, out
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["architectures"] == ["LtgBertForSequenceClassification"]
    from transformers import AutoModelForSequenceClassification

    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    base = AutoModelForSequenceClassification.from_pretrained(pretrained[0], num_labels=2)
    # --freeze last_block: the first layer is the pretrained one, the last one and the head moved
    first, last = "ltg_bert.layers.0.attention.in_proj_qk.weight", "ltg_bert.layers.1.attention.in_proj_qk.weight"
    state, before = trained.state_dict(), base.state_dict()
    assert torch.equal(state[first], before[first]) and not torch.equal(state[last], before[last])


def test_classification_examples_start_with_cls_as_the_head_expects(pretrained):
    from transformers import AutoTokenizer

    from hf_ltg.data import ClassificationDataset

    tokenizer = AutoTokenizer.from_pretrained(pretrained[0])
    dataset = ClassificationDataset([{"text": "for x in y " * 20, "label": "a"}], tokenizer, max_length=16)
    ids = dataset[0]["input_ids"].tolist()
    assert len(ids) == 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_the_shipped_ltg_bert_checkpoint_fills_masks():
    from transformers import pipeline

    from tests.helpers import REPO

    folder = REPO / "checkpoints" / "ltg-bert"
    fill = pipeline("fill-mask", model=str(folder))
    assert type(fill.model).__name__ == "LtgBertForMaskedLM" and fill.model.config.hidden_size == 128
    guesses = fill("The while statement is used for repeated [MASK] as long as an expression is true.", top_k=5)
    assert len(guesses) == 5 and all(g["score"] > 0 for g in guesses)
