"""Pretrain a small LTG GPT with the stock `transformers.Trainer`, then generate with a pipeline.

    python examples/train_with_trainer.py                # about 2 minutes on 2 CPU cores
    python examples/train_with_trainer.py --tiny         # seconds (the test suite runs this)

The text is the Python documentation that ships with Python (`pydoc_data.topics`), so nothing
is downloaded. Our model is an ordinary `PreTrainedModel`: Trainer, data collator and pipeline
are the stock ones.
"""

import argparse
import pydoc_data.topics

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments, pipeline

from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.tokenization import train_tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/trainer-example", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few documents")
    args = parser.parse_args()

    texts = list(pydoc_data.topics.topics.values())[: 3 if args.tiny else None]
    tokenizer = train_tokenizer(iterator=texts, vocab_size=400 if args.tiny else 2000)
    block = 64
    ids = [i for text in texts for i in tokenizer(text + tokenizer.eos_token)["input_ids"]]
    blocks = [{"input_ids": ids[i : i + block]} for i in range(0, len(ids) - block, block)]
    train, valid = blocks[: -len(blocks) // 10], blocks[-len(blocks) // 10 :]

    eos = tokenizer.eos_token_id
    config = LtgGptConfig(vocab_size=len(tokenizer), max_position_embeddings=block, hidden_size=64,
                          num_hidden_layers=2, num_attention_heads=4, bos_token_id=eos, eos_token_id=eos,
                          pad_token_id=eos)
    model = LtgGptForCausalLM(config)

    steps = 3 if args.tiny else 300
    training_args = TrainingArguments(
        output_dir=args.out, max_steps=steps, per_device_train_batch_size=16, learning_rate=2e-3,
        warmup_steps=steps // 10, logging_steps=max(1, steps // 10), eval_strategy="no" if args.tiny else "steps",
        eval_steps=max(2, steps // 3), save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=valid, processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    metrics = trainer.evaluate()
    print(f"validation loss {metrics['eval_loss']:.3f}")
    trainer.save_model(args.out)  # weights, config with the full auto_map, code and tokenizer
    trainer.save_state()  # trainer_state.json: `hf-ltg export` puts these figures into the model card

    # Load from the folder the way users will: through the pipeline, with the folder's own code.
    generator = pipeline("text-generation", model=args.out, trust_remote_code=True)
    sample = generator("The for statement", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    print(f"sample: {sample!r}")


if __name__ == "__main__":
    main()
