"""`hf-ltg doctor`: passes on what hf_ltg writes, names the problem in folders broken on purpose.

Checks that need the folder's code run in one fresh process where hf_ltg cannot be imported;
the tests that exercise that process are marked slow (about 10-20 s each on 2 shared cores).
"""

import json
import shutil

import pytest
import torch
from hub_utils import save_tiny_gpt, save_tiny_ltg_bert

from hf_ltg.cli import main
from hf_ltg.hub import diagnose, export_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_tokenizer):
    """A folder written by `hf-ltg export` from a tiny causal-LM checkpoint."""
    root = tmp_path_factory.mktemp("doctor")
    save_tiny_gpt(root / "ckpt", tiny_tokenizer)
    return export_checkpoint(root / "ckpt", root / "exported")


def broken_copy(exported, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(exported, folder)
    return folder


def statuses(report):
    return {check.name: check.status for check in report.checks}


def details(report, name):
    return " ".join(c.detail for c in report.checks if c.name == name)


@pytest.mark.slow
def test_doctor_passes_an_exported_folder_through_every_auto_class_and_pipeline(exported, capsys):
    assert main(["doctor", str(exported)]) == 0

    out = capsys.readouterr().out
    for auto in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                 "AutoModelForTokenClassification"):
        assert f"PASS  {auto} loads and runs" in out
    for task in ("feature-extraction", "text-generation", "text-classification", "token-classification"):
        assert f"PASS  pipeline {task}" in out
    for check in ("no pickle files", "weights", "tokenizer files", "auto_map", "code imports",
                  "code imports installed", "config loads", "tokenizer matches config", "model card"):
        assert f"PASS  {check}:" in out
    assert "FAIL" not in out and "OK:" in out


@pytest.mark.slow
def test_doctor_passes_a_classifier_converted_from_hugging_face_gpt2(tmp_path):
    from gpt_utils import tiny_gpt2_config
    from transformers import GPT2ForSequenceClassification

    from hf_ltg.conversion import convert_from_hf_gpt2
    from hf_ltg.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iterator=["The cat sat on the mat."] * 20, vocab_size=280)
    config = tiny_gpt2_config(vocab_size=len(tokenizer), num_labels=3, bos_token_id=0, eos_token_id=0,
                              pad_token_id=0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    convert_from_hf_gpt2(tmp_path / "gpt2", tmp_path / "ltg")

    report = diagnose(tmp_path / "ltg")

    assert report.ok, report.format()
    assert statuses(report)["pipeline text-classification"] == "PASS"
    assert "LtgGptForSequenceClassification" in details(report, "AutoModelForSequenceClassification loads and runs")


@pytest.mark.slow
def test_doctor_passes_an_exported_ltg_bert_through_all_seven_auto_classes(tmp_path):
    save_tiny_ltg_bert(tmp_path / "bert")
    export_checkpoint(tmp_path / "bert", tmp_path / "exported")

    report = diagnose(tmp_path / "exported")

    assert report.ok, report.format()
    passed = {c.name for c in report.checks if c.status == "PASS"}
    for auto in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                 "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"):
        assert f"{auto} loads and runs" in passed
    assert {"pipeline fill-mask", "pipeline text-classification", "pipeline feature-extraction"} <= passed
    assert "forward on (1, 2, " in details(report, "AutoModelForMultipleChoice loads and runs")


def test_doctor_names_the_missing_auto_map_entry(exported, tmp_path):
    folder = broken_copy(exported, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]["AutoModelForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))

    report = diagnose(folder, isolated=False)

    assert statuses(report)["auto_map"] == "FAIL"
    message = details(report, "auto_map")
    assert "no AutoModelForSequenceClassification entry" in message
    assert "LtgGptForSequenceClassification" in message and "text-classification pipeline" in message


def test_doctor_names_an_auto_map_entry_whose_class_or_file_is_missing(exported, tmp_path):
    folder = broken_copy(exported, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_ltg_gpt.LtgGptForCausalLMv2"
    config["auto_map"]["AutoModel"] = "modeling_other.LtgGptModel"
    (folder / "config.json").write_text(json.dumps(config))

    message = details(diagnose(folder, isolated=False), "auto_map")

    assert "modeling_ltg_gpt.py defines no class LtgGptForCausalLMv2" in message
    assert "modeling_other.py is not in the folder" in message


@pytest.mark.slow
def test_doctor_fails_a_modeling_file_that_imports_hf_ltg_statically_and_in_the_clean_process(
        exported, tmp_path, capsys):
    folder = broken_copy(exported, tmp_path)
    modeling = folder / "modeling_ltg_gpt.py"
    source = modeling.read_text()
    assert "from .configuration_ltg_gpt import LtgGptConfig" in source
    source = source.replace("from .configuration_ltg_gpt import LtgGptConfig",
                            "from hf_ltg.gpt.configuration_ltg_gpt import LtgGptConfig\nimport not_a_package_xyz")
    modeling.write_text(source)

    assert main(["doctor", str(folder)]) == 1

    out = capsys.readouterr().out
    assert "FAIL  code imports: modeling_ltg_gpt.py line" in out and "imports `hf_ltg.gpt.configuration_ltg_gpt`" in out
    assert "FAIL  code imports installed:" in out and "`not_a_package_xyz` (imported by modeling_ltg_gpt.py)" in out
    assert "FAIL  AutoModelForCausalLM loads and runs:" in out
    assert "problem(s)" in out


def test_doctor_flags_relative_imports_that_transformers_cannot_copy(exported, tmp_path):
    folder = broken_copy(exported, tmp_path)
    modeling = folder / "modeling_ltg_gpt.py"
    modeling.write_text("from . import helpers\nfrom .layers import Block\nimport modeling_ltg_gpt\n"
                        + modeling.read_text())

    message = details(diagnose(folder, isolated=False), "code imports")

    assert "`from . import helpers` is not copied by transformers" in message
    assert "imports `.layers`, but layers.py is not in the folder" in message
    assert "imports its sibling `modeling_ltg_gpt` absolutely" in message


def test_doctor_fails_when_the_tokenizer_is_missing(exported, tmp_path, capsys):
    folder = broken_copy(exported, tmp_path)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()

    report = diagnose(folder, isolated=False)

    assert statuses(report)["tokenizer files"] == "FAIL"
    assert "users cannot tokenize text" in details(report, "tokenizer files")
    assert not report.ok


def test_doctor_fails_on_pickle_weights(exported, tmp_path):
    folder = broken_copy(exported, tmp_path)
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    (folder / "extra").mkdir()
    (folder / "extra" / "optimizer.pt").write_bytes(b"\x80")

    report = diagnose(folder, isolated=False)

    assert statuses(report)["no pickle files"] == "FAIL"
    message = details(report, "no pickle files")
    assert "pytorch_model.bin" in message and "extra/optimizer.pt" in message and "safetensors" in message


def test_doctor_fails_without_safetensors_weights_or_with_a_broken_index(exported, tmp_path):
    folder = broken_copy(exported, tmp_path)
    (folder / "model.safetensors").unlink()
    assert "no model.safetensors" in details(diagnose(folder, isolated=False), "weights")

    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    assert "absent: ['model-1.safetensors']" in details(diagnose(folder, isolated=False), "weights")


@pytest.mark.slow
def test_doctor_fails_on_vocabulary_and_special_token_mismatches(exported, tmp_path):
    from hf_ltg.tokenization import train_tokenizer

    folder = broken_copy(exported, tmp_path)
    vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
    words = [f"word{i} token{i * 7} piece{i * 13}" for i in range(400)]
    bigger = train_tokenizer(iterator=words, vocab_size=vocab_size + 200, min_frequency=1)
    assert len(bigger) > vocab_size
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    bigger.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = 5
    (folder / "config.json").write_text(json.dumps(config))

    report = diagnose(folder)

    assert statuses(report)["tokenizer matches config"] == "FAIL"
    message = details(report, "tokenizer matches config")
    assert f"the tokenizer has {len(bigger)} tokens but config.vocab_size is {vocab_size}" in message
    assert f"config.pad_token_id is 5 but the tokenizer's pad token '<|endoftext|>' has id {bigger.pad_token_id}" in message
    assert not report.ok


def test_doctor_refuses_a_path_that_is_not_a_folder(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
