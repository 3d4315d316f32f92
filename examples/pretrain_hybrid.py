"""Pretrain a small LTG-BERT with GPT-BERT's hybrid objective, then use it both ways.

    python examples/pretrain_hybrid.py            # a few minutes on 2 CPU cores
    python examples/pretrain_hybrid.py --tiny     # seconds (the test suite runs this)

One stack learns masked and causal next-token prediction: `HybridCollator` makes each batch
masked (spans of 1-3 tokens, masking rate falling from 30 % to 15 %) or causal (a share
`causal_ratio` of the batches), and in both modes hidden state i predicts token i + 1. The
result loads as a masked LM (fill-mask) and as a causal LM (generate) from the same folder.
The command-line version is `hf-ltg pretrain --family ltg_bert --objective hybrid`.
"""

import argparse
import math
import pydoc_data.topics

import torch
from transformers import AutoModelForCausalLM, pipeline

from hf_ltg.checkpoint import save_checkpoint
from hf_ltg.commands._pretrain_ltg_bert import special_token_ids
from hf_ltg.data.hybrid import HybridCollator, HybridDataset
from hf_ltg.hybrid_training import (
    HybridTrainer,
    HybridTrainingModel,
    MaskingScheduleCallback,
    evaluate_hybrid,
    export_model,
    unigram_baselines,
)
from hf_ltg.ltg_bert import LtgBertConfig
from hf_ltg.tokenization import train_tokenizer
from hf_ltg.training import training_arguments


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hybrid-example", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="a few steps on a few documents")
    args = parser.parse_args()

    topics = pydoc_data.topics.topics
    texts = [topics[name] for name in sorted(topics)][: 4 if args.tiny else None]
    train_texts, valid_texts = texts[1:], texts[:1]
    tokenizer = train_tokenizer(iterator=train_texts, vocab_size=400 if args.tiny else 2000, kind="wordpiece")
    train, valid = HybridDataset(train_texts, tokenizer, 64), HybridDataset(valid_texts, tokenizer, 64)

    config = LtgBertConfig(vocab_size=len(tokenizer), hidden_size=64 if args.tiny else 128, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=128 if args.tiny else 344,
                           **special_token_ids(tokenizer))
    model = HybridTrainingModel(config)
    collator = HybridCollator(tokenizer, causal_ratio=0.25)  # GPT-BERT uses 1/16 on far longer runs
    steps = 4 if args.tiny else 600
    trainer = HybridTrainer(
        model=model, train_dataset=train, eval_dataset=valid, data_collator=collator, processing_class=tokenizer,
        args=training_arguments(f"{args.out}-work", max_steps=steps, per_device_train_batch_size=16,
                                learning_rate=2e-3, warmup_steps=steps // 10, lr_scheduler_type="cosine",
                                logging_steps=max(1, steps // 10), eval_steps=max(2, steps // 3),
                                save_strategy="no"),
        callbacks=[MaskingScheduleCallback(collator)],
    )
    trainer.train()  # logs masked_loss and causal_loss separately; training_curves.png shows both

    results = evaluate_hybrid(model, valid, tokenizer)
    masked = unigram_baselines(train.token_ids, results["masked"]["histogram"], len(tokenizer),
                               exclude=tokenizer.all_special_ids)
    causal = unigram_baselines(train.token_ids, results["causal"]["histogram"], len(tokenizer))
    print(f"hybrid: masked accuracy {results['masked']['accuracy']:.3f} (unigram {masked['accuracy']:.3f}), "
          f"causal perplexity {math.exp(results['causal']['loss']):.1f} (unigram {causal['perplexity']:.1f})")

    save_checkpoint(export_model(model, "hybrid"), args.out, tokenizer=tokenizer)
    fill = pipeline("fill-mask", model=args.out)
    print(f"fill-mask: {[guess['token_str'] for guess in fill('The for statement is used to [MASK] over a list.')]}")
    causal_lm = AutoModelForCausalLM.from_pretrained(args.out)
    # Causal windows start with [CLS] and have no [SEP] until a document ends: prompt the same way.
    prompt = torch.tensor([[tokenizer.cls_token_id, *tokenizer("The for statement", add_special_tokens=False)["input_ids"]]])
    output = causal_lm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    print(f"generate: {tokenizer.decode(output[0], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
