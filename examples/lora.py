"""Fine-tune a classifier with a peft LoRA adapter on an hf_ltg checkpoint, then merge it.

    python examples/lora.py checkpoints/ltg-gpt-lm     # start from a pretrained causal LM
    python examples/lora.py --tiny                     # a random tiny GPT (the test suite runs this)

`import hf_ltg` tells peft which modules of our models LoRA targets by default, so a plain
`LoraConfig(task_type="SEQ_CLS")` works. peft also keeps the new classification head (`score`)
trainable and saves it with the adapter. The merged model is an ordinary checkpoint again.
"""

import argparse
import random
import tempfile

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import hf_ltg  # noqa: F401 - registers our Auto classes and default LoRA targets

GOOD = ["good", "great", "fine", "lovely", "excellent"]
BAD = ["bad", "awful", "poor", "terrible", "broken"]


def toy_sentiment(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(GOOD if label else BAD)
        rows.append((f"the code is {word} and the tests are {rng.choice(GOOD if label else BAD)}", label))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="?", help="base checkpoint folder (a causal LM or a classifier)")
    parser.add_argument("--out", default="runs/lora-example", help="output folder for adapter and merged model")
    parser.add_argument("--tiny", action="store_true", help="random tiny base, a few steps")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        base = args.base or (make_tiny_base(f"{work}/base") if args.tiny else parser.error("give BASE or --tiny"))
        tokenizer = AutoTokenizer.from_pretrained(base)
        labels = {0: "negative", 1: "positive"}
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
            pad_token_id=tokenizer.pad_token_id)

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0))
        model.print_trainable_parameters()

        rows = toy_sentiment(64 if args.tiny else 2000)
        data = [dict(tokenizer(text), labels=label) for text, label in rows]
        train, test = data[: len(data) * 3 // 4], data[len(data) * 3 // 4 :]
        trainer = Trainer(
            model=model, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
            args=TrainingArguments(output_dir=f"{work}/run", max_steps=4 if args.tiny else 200, learning_rate=5e-3,
                                   per_device_train_batch_size=16, save_strategy="no", report_to="none",
                                   use_cpu=True, disable_tqdm=True, logging_steps=10),
        )
        trainer.train()
        print(f"test accuracy with the adapter: {accuracy(model, tokenizer, test):.3f}")

        model.save_pretrained(f"{args.out}/adapter")  # adapter weights + the new `score` head only
        merged = model.merge_and_unload()  # back to our LtgGptForSequenceClassification
        merged.save_pretrained(f"{args.out}/merged")
        tokenizer.save_pretrained(f"{args.out}/merged")

        reloaded = PeftModel.from_pretrained(
            AutoModelForSequenceClassification.from_pretrained(base, num_labels=2), f"{args.out}/adapter")
        standalone = AutoModelForSequenceClassification.from_pretrained(f"{args.out}/merged", trust_remote_code=True)
        batch = tokenizer([rows[0][0]], return_tensors="pt")
        with torch.no_grad():
            difference = (reloaded.eval()(**batch).logits - standalone.eval()(**batch).logits).abs().max().item()
        print(f"adapter vs merged checkpoint: max |logit difference| = {difference:.2e}")


def accuracy(model, tokenizer, rows) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for row in rows:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits
            correct += int(logits.argmax(-1).item() == row["labels"])
    return correct / len(rows)


def make_tiny_base(folder: str) -> str:
    from hf_ltg import LtgGptConfig, LtgGptForCausalLM
    from hf_ltg.checkpoint import save_checkpoint
    from hf_ltg.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iterator=[text for text, _ in toy_sentiment(200)], vocab_size=300)
    eos = tokenizer.eos_token_id
    config = LtgGptConfig(vocab_size=len(tokenizer), max_position_embeddings=64, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, bos_token_id=eos, eos_token_id=eos,
                          pad_token_id=eos)
    save_checkpoint(LtgGptForCausalLM(config), folder, tokenizer=tokenizer)
    return folder


if __name__ == "__main__":
    main()
