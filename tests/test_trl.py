"""TRL and peft on hf_ltg checkpoints in a process without hf_ltg, as a Hub user runs them.

The checkpoint's own files register the default peft target modules (whichever of peft and the
model is imported first), and `hf-ltg finetune-instruct` checkpoints carry an Alpaca chat
template that renders exactly the records the command trains on.
"""

import json
import math
import shutil

import pytest
import torch

from hf_ltg.data import ALPACA_CHAT_TEMPLATE, InstructionDataset, format_alpaca_prompt
from tests.helpers import REPO, run_without_hf_ltg

GPT_LM = REPO / "checkpoints" / "ltg-gpt-lm"
BERT_MLM = REPO / "checkpoints" / "ltg-bert-mlm"

RECORDS = [
    {"instruction": "Name the loop.", "input": "while x: pass", "output": "A while loop."},
    {"instruction": "What does the for statement do?", "input": "", "output": "It iterates over a sequence."},
    {"instruction": "Say hello.", "output": "Hello!"},
]


def conversation(record: dict) -> list[dict]:
    user = {"role": "user", "content": record["instruction"]}
    if record.get("input"):
        user["input"] = record["input"]
    return [user, {"role": "assistant", "content": record["output"]}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(GPT_LM)
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------------------------------------
# The chat template against the training code


@pytest.mark.parametrize("record", RECORDS, ids=["with-input", "blank-input", "no-input"])
def test_chat_template_renders_the_alpaca_prompt_and_the_training_record(tokenizer, record):
    prompt = format_alpaca_prompt(record["instruction"], record.get("input") or "")
    messages = conversation(record)

    assert tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == prompt
    assert tokenizer.apply_chat_template(messages, tokenize=False) == prompt + record["output"] + tokenizer.eos_token
    # Prefix-preserving, as TRL's prompt-completion and DPO code requires.
    assert tokenizer.apply_chat_template(messages, tokenize=False).startswith(
        tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True))


def test_chat_template_tokens_and_assistant_mask_equal_the_instruction_dataset(tokenizer):
    dataset = InstructionDataset(RECORDS, tokenizer, max_length=256, mask_prompt=True)
    for record, item in zip(RECORDS, dataset.rows):
        rendered = tokenizer.apply_chat_template(conversation(record), return_dict=True,
                                                 return_assistant_tokens_mask=True)
        assert rendered["input_ids"] == item["input_ids"]
        # TRL's assistant_only_loss trains the tokens that --mask-prompt trains (response and eos).
        assert rendered["assistant_masks"] == [int(label != -100) for label in item["labels"]]


def test_chat_template_system_message_replaces_the_header_and_each_exchange_is_a_record(tokenizer):
    first, second = conversation(RECORDS[2]), conversation(RECORDS[0])
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *first, *second],
                                         tokenize=False)
    record = "Be brief.\n\n### Instruction:\n{}\n\n{}### Response:\n{}" + tokenizer.eos_token
    assert text == (record.format("Say hello.", "", "Hello!")
                    + record.format("Name the loop.", "### Input:\nwhile x: pass\n\n", "A while loop."))


def test_chat_template_refuses_other_roles_naming_the_message(tokenizer):
    with pytest.raises(Exception, match="got a tool message at position 1"):
        tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}],
                                      tokenize=False)


def test_finetune_instruct_saves_the_chat_template_and_export_keeps_it(tmp_path):
    from hf_ltg.cli import main

    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 2))
    (tmp_path / "valid.json").write_text(json.dumps(RECORDS))
    code = main(["finetune-instruct", "--model", str(GPT_LM), "--train-file", str(tmp_path / "train.jsonl"),
                 "--validation-file", str(tmp_path / "valid.json"), "--max-length", "64", "--max-steps", "1",
                 "--output", str(tmp_path / "ins"), "--work-dir", str(tmp_path / "work")])
    assert code == 0
    assert main(["export", str(tmp_path / "ins"), str(tmp_path / "hub")]) == 0
    out = run_without_hf_ltg("""
        from transformers import AutoTokenizer
        print(AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True).chat_template)
    """, tmp_path / "hub", tmp_path)
    assert out.rstrip("\n") == ALPACA_CHAT_TEMPLATE


# ---------------------------------------------------------------------------------------------
# peft's default target modules come with the checkpoint

_DEFAULT_LORA = """
    import torch
    BERT = {bert!r}
    {first}
    {second}
    def check(model, task_type, expected):
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(task_type=task_type, r=2))  # no target_modules
        adapted = sorted({{name.split(".")[-4] for name, _ in model.named_parameters() if "lora_A" in name}})
        assert adapted == expected, adapted
        ids = torch.randint(5, 100, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
        return adapted
    gpt = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True)
    bert = AutoModelForMaskedLM.from_pretrained(BERT, trust_remote_code=True)
    print(check(gpt, "CAUSAL_LM", ["qkv_proj"]), check(bert, None, ["in_proj_qk", "in_proj_v"]))
"""


@pytest.mark.parametrize("order", ["peft-first", "model-first"])
def test_lora_without_target_modules_works_without_hf_ltg(order, tmp_path):
    shutil.copytree(BERT_MLM, tmp_path / "bert")
    imports = ["import peft", "from transformers import AutoModelForCausalLM, AutoModelForMaskedLM"]
    if order == "model-first":
        imports.reverse()  # peft is imported only after the checkpoint's configuration file
    code = _DEFAULT_LORA.format(first=imports[0], second=imports[1], bert=str(tmp_path / "bert"))
    out = run_without_hf_ltg(code, GPT_LM, tmp_path)
    assert out.splitlines() == ["['qkv_proj'] ['in_proj_qk', 'in_proj_v']"]


def _peft_methods_with_defaults():
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    methods = [peft_type for peft_type, tuner in PEFT_TYPE_TO_TUNER_MAPPING.items()
               if getattr(tuner, "target_module_mapping", None) is not None or peft_type.value == "IA3"]
    return sorted(methods, key=lambda peft_type: peft_type.value)


# Defaults of these methods need more than the tiny model's widths, or extra arguments.
_METHOD_ARGUMENTS = {"ADALORA": {"total_step": 10}, "C3A": {"block_size": 16}, "MISS": {"r": 8},
                     "SHIRA": {"r": 2}, "ROAD": {"group_size": 16}, "VBLORA": {"vector_length": 16},
                     "WAVEFT": {"n_frequency": 64}, "FOURIERFT": {"n_frequency": 64}}


@pytest.mark.filterwarnings("ignore::UserWarning")  # peft: BOFT's CUDA extension, LN tuning's layer type
@pytest.mark.parametrize("family", ["ltg_gpt", "ltg_bert"])
def test_every_peft_method_with_default_targets_adapts_the_family(family):
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from hf_ltg import LtgBertConfig, LtgBertForCausalLM, LtgGptConfig, LtgGptForCausalLM

    sizes = dict(vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    failures = {}
    for peft_type in _peft_methods_with_defaults():
        torch.manual_seed(0)
        if family == "ltg_gpt":
            model = LtgGptForCausalLM(LtgGptConfig(max_position_embeddings=16, **sizes))
        else:
            model = LtgBertForCausalLM(LtgBertConfig(**sizes))
        kwargs = _METHOD_ARGUMENTS.get(peft_type.value, {})
        ids = torch.randint(0, 64, (2, 8))
        extra = {"task_ids": torch.zeros(2, dtype=torch.long)} if peft_type.value == "POLY" else {}
        try:
            adapted = peft.get_peft_model(model, PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](task_type="CAUSAL_LM", **kwargs))
            adapted(input_ids=ids, labels=ids, **extra).loss.backward()
        except Exception as error:  # collected, so that one run names every method that fails
            failures[peft_type.value] = f"{type(error).__name__}: {error}"[:200]
            continue
        trained = [name for name, p in adapted.named_parameters() if p.requires_grad and p.grad is not None]
        if not trained:
            failures[peft_type.value] = "no trainable parameter got a gradient"
    # GLoRA takes only layers whose type is exactly nn.Linear, as the GPT layers are.
    assert not failures, failures


# ---------------------------------------------------------------------------------------------
# TRL trainers, each a few steps on one batch of a tiny checkpoint


@pytest.fixture(scope="module")
def tiny_instruct(tmp_path_factory, tokenizer):
    """A tiny GPT saved by hf_ltg as `finetune-instruct` saves it (tokenizer with the chat template),
    with a context long enough for the Alpaca header and without dropout, so that repeated steps on
    one batch lower the loss every time."""
    from hf_ltg import LtgGptConfig, LtgGptForCausalLM
    from hf_ltg.tokenization import save_tokenizer

    folder = tmp_path_factory.mktemp("tiny_instruct")
    torch.manual_seed(0)
    config = LtgGptConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          max_position_embeddings=128, embedding_dropout=0.0, attention_dropout=0.0,
                          hidden_dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    LtgGptForCausalLM(config).save_pretrained(folder)
    save_tokenizer(tokenizer, folder, config)
    return folder


# Every TRL run: the same batch at every step (batch size = data size), a constant learning rate,
# no evaluation, no saving. The code prints its findings as `RESULT <json>` lines (the Trainer
# prints its logs on stdout too).
_TRL_ARGS = ('output_dir=str(OUT), max_steps=6, per_device_train_batch_size=len(data), lr_scheduler_type="constant", '
             'logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0, trust_remote_code=True')
_LOSSES = 'print("RESULT", json.dumps([entry["loss"] for entry in trainer.state.log_history if "loss" in entry]))'


def results(out: str) -> list:
    return [json.loads(line[len("RESULT "):]) for line in out.splitlines() if line.startswith("RESULT ")]


def assert_loss_decreases(losses: list[float]) -> list[float]:
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses), losses
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    return losses


@pytest.mark.slow
def test_sft_trainer_on_a_text_dataset_lowers_the_loss(tiny_instruct, tmp_path):
    out = run_without_hf_ltg(f"""
        import json, pathlib
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer
        OUT = pathlib.Path(CKPT).parent / "sft"
        data = Dataset.from_dict({{"text": ["The cat sat on the mat.", "A language model predicts the next token.",
                                           "def add(a, b): return a + b"]}})
        trainer = SFTTrainer(model=CKPT, args=SFTConfig({_TRL_ARGS}, learning_rate=3e-3, max_length=64),
                             train_dataset=data)
        trainer.train()
        {_LOSSES}
    """, tiny_instruct, tmp_path)
    assert_loss_decreases(*results(out))


def test_sft_trainer_on_messages_with_default_lora_trains_the_finetune_instruct_tokens(tiny_instruct, tokenizer,
                                                                                       tmp_path):
    out = run_without_hf_ltg(f"""
        import json, pathlib
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer
        OUT = pathlib.Path(CKPT).parent / "sft"
        data = Dataset.from_dict({{"messages": {[conversation(record) for record in RECORDS]!r}}})
        trainer = SFTTrainer(model=CKPT, args=SFTConfig({_TRL_ARGS}, learning_rate=1e-2, max_length=128,
                                                        assistant_only_loss=True),
                             train_dataset=data, peft_config=LoraConfig(task_type="CAUSAL_LM"))
        rows = [dict(row) for row in trainer.train_dataset]
        print("RESULT", json.dumps([[row["input_ids"], row["labels"]] for row in rows]))
        print("RESULT", json.dumps(sorted({{name.split(".")[-4] for name, p in trainer.model.named_parameters()
                                            if p.requires_grad}})))
        trainer.train()
        {_LOSSES}
    """, tiny_instruct, tmp_path)
    rows, adapted, losses = results(out)
    expected = InstructionDataset(RECORDS, tokenizer, max_length=128, mask_prompt=True)
    # Tokens and labels of `finetune-instruct --mask-prompt`: TRL trains the response and its eos.
    assert rows == [[item["input_ids"], item["labels"]] for item in expected.rows]
    assert adapted == ["qkv_proj"]  # peft's default LoRA targets, without hf_ltg
    assert_loss_decreases(losses)


@pytest.mark.slow
def test_sft_trainer_on_messages_for_a_base_checkpoint_takes_the_template_as_a_file(tiny_instruct, tmp_path):
    # Checkpoints without instruction tuning ship no chat template (they were trained on no format);
    # TRL's chat_template_path takes the one finetune-instruct writes (its chat_template.jinja).
    base = tmp_path / "base"
    shutil.copytree(tiny_instruct, base)
    (base / "chat_template.jinja").rename(tmp_path / "alpaca.jinja")
    out = run_without_hf_ltg(f"""
        import json, pathlib
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import SFTConfig, SFTTrainer
        print("RESULT", json.dumps(AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True).chat_template))
        OUT = pathlib.Path(CKPT).parent / "sft"
        data = Dataset.from_dict({{"messages": {[conversation(record) for record in RECORDS]!r}}})
        args = SFTConfig({_TRL_ARGS}, learning_rate=3e-3, max_length=128,
                         chat_template_path={str(tmp_path / "alpaca.jinja")!r})
        trainer = SFTTrainer(model=CKPT, args=args, train_dataset=data)
        trainer.train()
        {_LOSSES}
    """, base, tmp_path)
    template, losses = results(out)
    assert template is None
    assert_loss_decreases(losses)


@pytest.mark.slow
def test_dpo_trainer_on_preference_pairs_lowers_the_loss(tiny_instruct, tmp_path):
    out = run_without_hf_ltg(f"""
        import json, pathlib
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
        OUT = pathlib.Path(CKPT).parent / "dpo"
        data = Dataset.from_dict({{"prompt": ["The cat sat on the", "Two plus two is", "The capital of France is"],
                                  "chosen": [" mat.", " four.", " Paris."],
                                  "rejected": [" moon.", " seven.", " London."]}})
        trainer = DPOTrainer(model=CKPT, args=DPOConfig({_TRL_ARGS}, learning_rate=3e-3, max_length=64),
                             train_dataset=data)
        trainer.train()
        {_LOSSES}
    """, tiny_instruct, tmp_path)
    (losses,) = results(out)
    assert_loss_decreases(losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as its own reference
