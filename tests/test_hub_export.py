"""`hf-ltg export`: complete Hub-ready folders from checkpoints, Trainer outputs and peft adapters."""

import json
import math

import pytest
import torch
import yaml
from hub_utils import sample_ids, save_tiny_gpt, save_tiny_ltg_bert, tiny_gpt

from hf_ltg import LtgGptForCausalLM, LtgGptForSequenceClassification
from hf_ltg.checkpoint import load_state_dict
from hf_ltg.cli import main
from hf_ltg.gpt.configuration_ltg_gpt import AUTO_MAP
from hf_ltg.hub import export_checkpoint


def card_metadata(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1]), text


def test_export_writes_every_file_of_a_hub_folder_and_restores_the_full_auto_map(tmp_path, tiny_tokenizer):
    src = tmp_path / "ckpt"
    model = save_tiny_gpt(src, tiny_tokenizer, head="sequence-classification")
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": AUTO_MAP["AutoConfig"],
                          "AutoModelForSequenceClassification": AUTO_MAP["AutoModelForSequenceClassification"]}
    (src / "config.json").write_text(json.dumps(config))  # an older, incomplete checkpoint

    assert main(["export", str(src), str(tmp_path / "out"), "--license", "apache-2.0"]) == 0

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "configuration_ltg_gpt.py", "generation_config.json", "int8_ltg_gpt.py",
        "kernels_ltg_gpt.py", "model.safetensors", "modeling_ltg_gpt.py", "tokenizer.json", "tokenizer_config.json",
        "weight_only_ltg_gpt.py",  # int8_ltg_gpt's sibling: copied because the model file imports it too
    ]
    assert json.loads((out / "config.json").read_text())["auto_map"] == AUTO_MAP
    exported = load_state_dict(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(exported[name], tensor), name
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tiny_tokenizer.eos_token_id


def test_export_shards_the_weights_above_max_shard_size_with_an_index(tmp_path, tiny_tokenizer):
    src = tmp_path / "ckpt"
    model = save_tiny_gpt(src, tiny_tokenizer)

    export_checkpoint(src, tmp_path / "out", max_shard_size="40KB")

    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert not (out / "model.safetensors").exists()
    assert all((out / s).stat().st_size < 60_000 for s in shards)  # 40 KB each, one tensor may overflow a bit
    reloaded = LtgGptForCausalLM.from_pretrained(out).eval()
    ids = sample_ids(tiny_tokenizer)
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_model_card_has_metadata_architecture_usage_and_the_remote_code_note(tmp_path, tiny_tokenizer):
    src = tmp_path / "ckpt"
    model = save_tiny_gpt(src, tiny_tokenizer)

    export_checkpoint(src, tmp_path / "out", license="mit", base_model="openai-community/gpt2",
                      datasets=["wikitext"], name="tiny-gpt")

    metadata, text = card_metadata(tmp_path / "out")
    assert metadata == {
        "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["hf_ltg", "ltg_gpt", "custom_code"], "license": "mit",
        "base_model": "openai-community/gpt2", "datasets": ["wikitext"],
    }
    parameters = sum(p.numel() for p in model.parameters())
    assert f"| parameters | {parameters:,}" in text
    assert "| hidden size | 32 |" in text and "| layers | 2 |" in text and "| attention heads | 4 |" in text
    assert 'AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)' in text
    assert 'pipeline("text-generation", model=repo, trust_remote_code=True)' in text
    assert "## Security: remote code" in text and "revision=" in text
    assert "`configuration_ltg_gpt.py`, `modeling_ltg_gpt.py`" in text


def test_pipeline_tag_follows_the_head_class(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "cls", tiny_tokenizer, head="sequence-classification")
    save_tiny_gpt(tmp_path / "tok", tiny_tokenizer, head="token-classification")
    save_tiny_ltg_bert(tmp_path / "bert")

    export_checkpoint(tmp_path / "cls", tmp_path / "cls-out")
    export_checkpoint(tmp_path / "tok", tmp_path / "tok-out")
    export_checkpoint(tmp_path / "bert", tmp_path / "bert-out")

    cls_meta, cls_text = card_metadata(tmp_path / "cls-out")
    tok_meta, _ = card_metadata(tmp_path / "tok-out")
    bert_meta, bert_text = card_metadata(tmp_path / "bert-out")
    assert cls_meta["pipeline_tag"] == "text-classification"
    assert tok_meta["pipeline_tag"] == "token-classification"
    assert bert_meta["pipeline_tag"] == "fill-mask" and bert_meta["tags"] == ["hf_ltg", "ltg_bert", "custom_code"]
    assert 'pipeline("fill-mask", model=repo, trust_remote_code=True)' in bert_text
    assert "`AutoModelForMultipleChoice`" in bert_text
    assert "0: `negative`, 1: `positive`" in cls_text


def _train_with_stock_trainer(model, tokenizer, output_dir, max_steps=4, save_final=False):
    from transformers import Trainer, TrainingArguments

    ids = sample_ids(tokenizer)[0][:12]
    rows = [{"input_ids": ids, "labels": ids} for _ in range(8)]
    args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=2,
                             learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=2,
                             save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:2],
                      processing_class=tokenizer)
    trainer.train()
    if save_final:
        trainer.save_model()
    return trainer


def test_export_of_a_trainer_output_takes_the_latest_checkpoint_and_reports_its_figures(tmp_path, tiny_tokenizer):
    model = tiny_gpt(tiny_tokenizer)
    model.train()
    _train_with_stock_trainer(model, tiny_tokenizer, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-2", "checkpoint-4"]

    export_checkpoint(tmp_path / "run", tmp_path / "out")

    exported = load_state_dict(tmp_path / "out")
    latest = load_state_dict(tmp_path / "run" / "checkpoint-4")
    assert all(torch.equal(exported[k], v) for k, v in latest.items())
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    last_train = [e["loss"] for e in state["log_history"] if "loss" in e][-1]
    last_eval = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e][-1]
    _, text = card_metadata(tmp_path / "out")
    assert "| optimizer steps | 4 |" in text
    assert f"| final training loss | {last_train:.4f} |" in text
    assert f"| final validation loss | {last_eval:.4f} |" in text
    assert f"| validation perplexity | {math.exp(last_eval):.4f} |" in text
    assert "checkpoint-4" in text
    assert not list((tmp_path / "out").glob("*.bin"))  # training_args.bin (a pickle) is not carried over


def test_export_of_a_trainer_output_prefers_its_final_model(tmp_path, tiny_tokenizer):
    model = tiny_gpt(tiny_tokenizer)
    model.train()
    _train_with_stock_trainer(model, tiny_tokenizer, tmp_path / "run", max_steps=3, save_final=True)

    export_checkpoint(tmp_path / "run", tmp_path / "out")

    final = load_state_dict(tmp_path / "run")
    exported = load_state_dict(tmp_path / "out")
    assert all(torch.equal(exported[k], v) for k, v in final.items())
    _, text = card_metadata(tmp_path / "out")
    assert "the final model" in text and "| optimizer steps | 3 |" in text


def test_export_merges_a_peft_adapter_only_when_asked(tmp_path, tiny_tokenizer, capsys):
    from peft import LoraConfig, get_peft_model

    base_dir = tmp_path / "base"
    save_tiny_gpt(base_dir, tiny_tokenizer, head="sequence-classification")
    base = LtgGptForSequenceClassification.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = sample_ids(tiny_tokenizer)
    with torch.no_grad():
        expected = peft_model.eval()(ids).logits

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    assert "--merge" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge"]) == 0
    out = tmp_path / "out"
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer.json").is_file()
    merged = LtgGptForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_export_refuses_models_that_are_not_hf_ltg_and_folders_without_a_tokenizer(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(
        tmp_path / "gpt2")
    with pytest.raises(ValueError, match="model_type is 'gpt2'.*hf-ltg convert"):
        export_checkpoint(tmp_path / "gpt2", tmp_path / "out")

    tiny_gpt(tiny_tokenizer).save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match="No tokenizer files.*--tokenizer"):
        export_checkpoint(tmp_path / "bare", tmp_path / "out")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    export_checkpoint(tmp_path / "bare", tmp_path / "out", tokenizer=tmp_path / "tok")
    assert (tmp_path / "out" / "tokenizer.json").is_file()

    with pytest.raises(FileNotFoundError, match="holds no model"):
        export_checkpoint(tmp_path / "tok", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_export_of_an_int8_checkpoint_says_so_and_counts_the_int8_weights(tmp_path, tiny_tokenizer):
    model = save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)
    assert main(["quantize", str(tmp_path / "ckpt"), str(tmp_path / "int8")]) == 0

    export_checkpoint(tmp_path / "int8", tmp_path / "out")

    _, text = card_metadata(tmp_path / "out")
    assert "| weights | int8, scheme `absmax` (8 linear layers" in text
    assert f"| parameters | {sum(p.numel() for p in model.parameters()):,}" in text
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]["scheme"] == "absmax"


def test_export_reads_the_training_record_from_training_dir_when_it_is_not_beside_the_model(
        tmp_path, tiny_tokenizer):
    from hf_ltg.checkpoint import save_checkpoint

    model = tiny_gpt(tiny_tokenizer)
    model.train()
    _train_with_stock_trainer(model, tiny_tokenizer, tmp_path / "run")  # as hf-ltg pretrain's --work-dir
    save_checkpoint(model, tmp_path / "final", tokenizer=tiny_tokenizer)  # as its --output

    export_checkpoint(tmp_path / "final", tmp_path / "without")
    assert main(["export", str(tmp_path / "final"), str(tmp_path / "with"),
                 "--training-dir", str(tmp_path / "run")]) == 0

    assert "No training record" in card_metadata(tmp_path / "without")[1]
    assert "| optimizer steps | 4 |" in card_metadata(tmp_path / "with")[1]
    with pytest.raises(FileNotFoundError, match="--training-dir .* is not a folder"):
        export_checkpoint(tmp_path / "final", tmp_path / "x", training_dir=tmp_path / "nowhere")
