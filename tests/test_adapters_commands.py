"""`--adapter` on the fine-tuning commands: the adapter (with the head) or a merged checkpoint is written."""

import contextlib
import io
import json

import pytest
import torch
from adapter_utils import tiny_config
from helpers import run_without_hf_ltg
from peft import AutoPeftModelForSequenceClassification
from safetensors.torch import load_file

from hf_ltg import LtgGptForCausalLM
from hf_ltg.cli import main

FAST = ["--max-length", "24", "--batch-size", "4", "--max-steps", "3", "--logging-steps", "1", "--eval-steps", "1000"]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


@pytest.fixture
def pretrained(tmp_path, tiny_tokenizer):
    folder = tmp_path / "pretrained"
    eos = tiny_tokenizer.eos_token_id
    torch.manual_seed(0)
    LtgGptForCausalLM(tiny_config(vocab_size=len(tiny_tokenizer), max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos,
                                  pad_token_id=eos)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def classification_files(tmp_path):
    rows = [("the cat sat on the mat", "animal"), ("the dog sat on the log", "animal"),
            ("def add(a, b): return a + b", "code"), ("a small Python function", "code")] * 3
    for split in ("train", "validation"):
        lines = ["text,label"] + [f'"{text}",{label}' for text, label in rows]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return ["--train-file", tmp_path / "train.csv", "--validation-file", tmp_path / "validation.csv"]


@pytest.mark.slow
def test_finetune_cls_with_lora_writes_the_adapter_with_the_score_head(pretrained, classification_files, tmp_path):
    code, out = run_cli("finetune-cls", "--model", pretrained, *classification_files, *FAST, "--adapter", "lora",
                        "--lora-r", "4", "--lora-targets", "all-linear", "--output", tmp_path / "adapter",
                        "--work-dir", tmp_path / "work")

    assert code == 0, out
    assert "adapter lora: trainable params: " in out
    folder = tmp_path / "adapter"
    assert ADAPTER_FILES <= {p.name for p in folder.iterdir()}
    assert not (folder / "model.safetensors").exists()
    saved = load_file(folder / "adapter_model.safetensors")
    assert "base_model.model.score.weight" in saved
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(pretrained.resolve())
    assert "AutoPeftModelForSequenceClassification.from_pretrained(" in out
    labels = {0: "animal", 1: "code"}
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, id2label=labels, label2id={"animal": 0, "code": 1}, pad_token_id=0)
    assert torch.equal(model.base_model.model.score.modules_to_save["default"].weight,
                       saved["base_model.model.score.weight"])


@pytest.mark.slow
def test_finetune_cls_with_lora_merge_writes_a_checkpoint_that_loads_without_hf_ltg(
        pretrained, classification_files, tmp_path):
    code, out = run_cli("finetune-cls", "--model", pretrained, *classification_files, *FAST, "--adapter", "lora",
                        "--merge", "--output", tmp_path / "merged", "--work-dir", tmp_path / "work")

    assert code == 0, out
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    result = run_without_hf_ltg("""
    from transformers import pipeline
    classify = pipeline("text-classification", model=CKPT, trust_remote_code=True)
    print(classify("the cat sat")[0]["label"])
    """, tmp_path / "merged", tmp_path)
    assert result.strip().splitlines()[-1] in ("animal", "code")


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_finetune_instruct_with_a_prompt_method_writes_the_adapter(method, pretrained, tmp_path):
    records = [{"instruction": "Say hello.", "input": "", "output": "hello"},
               {"instruction": "Add the numbers.", "input": "1 and 2", "output": "3"}] * 4
    for split in ("train", "validation"):
        (tmp_path / f"{split}.json").write_text(json.dumps(records))
    code, out = run_cli("finetune-instruct", "--model", pretrained, "--train-file", tmp_path / "train.json",
                        "--validation-file", tmp_path / "validation.json", *FAST, "--adapter", method,
                        "--num-virtual-tokens", "4", "--output", tmp_path / "adapter", "--work-dir", tmp_path / "work")

    assert code == 0, out
    assert f"adapter {method}: trainable params: " in out
    assert ADAPTER_FILES <= {p.name for p in (tmp_path / "adapter").iterdir()}


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "prefix", "--merge"], "--merge folds LoRA weights"),
    (["--adapter", "lora", "--freeze", "head"], "drop --freeze"),
    (["--adapter", "lora", "--lora-targets", "c_attn"], "'c_attn' is neither a linear nor an embedding layer"),
])
def test_finetune_cls_rejects_inconsistent_adapter_options(argv, message, pretrained, classification_files,
                                                           tmp_path, capsys):
    code, _ = run_cli("finetune-cls", "--model", pretrained, *classification_files, *FAST, *argv,
                      "--output", tmp_path / "out", "--work-dir", tmp_path / "work")
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
