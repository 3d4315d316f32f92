"""Regenerate the small trained checkpoints committed in this folder.

    python checkpoints/make_checkpoints.py           # a few minutes on 2 CPU cores

Writes, each through `hf-ltg export` (model card with the training figures) and checked by
`hf-ltg doctor` (the script fails if the doctor does):

  ltg-gpt-lm          LTG GPT causal LM, `hf-ltg pretrain` on pydoc_data.topics
  ltg-gpt-classifier  that LM fine-tuned with `hf-ltg finetune-cls` (docstrings by module family)
  ltg-bert-mlm        LTG-BERT masked LM, pretrained here with the stock Trainer (the route a
                      Trainer script takes; `hf-ltg pretrain --arch ltg-bert` is the command-line one)

They are deliberately tiny (hidden 64, 2 layers, vocabulary 2048: about 1 MB each) so that they
can live in git and the tests can load them; they have learnt a little, not much. Training is
seeded; numbers may still differ slightly between machines.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from hf_ltg.cli import main as hf_ltg  # noqa: E402

SIZE = ["--hidden-size", "64", "--num-layers", "2", "--num-heads", "4"]
NAMES = ("ltg-gpt-lm", "ltg-gpt-classifier", "ltg-bert-mlm")


def run(*argv: str) -> None:
    print("+ hf-ltg " + " ".join(argv), flush=True)
    if hf_ltg(list(argv)) != 0:
        raise SystemExit(f"hf-ltg {argv[0]} failed")


def make_gpt(work: Path, out: Path) -> None:
    lm, classifier = work / "gpt-lm", work / "gpt-classifier"
    run("pretrain", *SIZE, "--vocab-size", "2048", "--max-length", "64", "--batch-size", "16",
        "--max-steps", "150", "--eval-steps", "50", "--logging-steps", "10", "--learning-rate", "3e-3",
        "--warmup", "10", "--seed", "0", "--time-limit", "0", "--output", str(lm), "--work-dir", str(work / "runs-lm"))
    run("export", "--overwrite", str(lm), str(out / "ltg-gpt-lm"), "--training-dir", str(work / "runs-lm"),
        "--license", "apache-2.0", "--language", "en")
    run("finetune-cls", "--model", str(lm), "--max-length", "64", "--batch-size", "16", "--max-steps", "60",
        "--eval-steps", "30", "--logging-steps", "10", "--learning-rate", "2e-3", "--seed", "0", "--time-limit", "0",
        "--output", str(classifier), "--work-dir", str(work / "runs-classifier"))
    run("export", "--overwrite", str(classifier), str(out / "ltg-gpt-classifier"), "--training-dir", str(work / "runs-classifier"),
        "--license", "apache-2.0", "--language", "en")


def make_ltg_bert(work: Path, out: Path) -> None:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer

    from hf_ltg.checkpoint import save_checkpoint
    from hf_ltg.data.corpus import pretraining_corpus
    from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
    from hf_ltg.tokenization import train_tokenizer
    from hf_ltg.training import training_arguments

    train_docs, valid_docs = pretraining_corpus()
    tokenizer = train_tokenizer(iterator=train_docs, vocab_size=2048, kind="wordpiece")

    def examples(documents):  # one example per paragraph, [CLS] ... [SEP], at most 64 tokens
        paragraphs = [p for doc in documents for p in doc.split("\n\n") if len(p.split()) >= 4]
        return [{"input_ids": ids} for ids in tokenizer(paragraphs, truncation=True, max_length=64)["input_ids"]]

    ids = {name: tokenizer.convert_tokens_to_ids(f"[{name.upper()}]") for name in ("pad", "cls", "sep", "mask", "unk")}
    config = LtgBertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, position_bucket_size=16, pad_token_id=ids["pad"], bos_token_id=ids["cls"],
        eos_token_id=ids["sep"], cls_token_id=ids["cls"], sep_token_id=ids["sep"], mask_token_id=ids["mask"],
        unk_token_id=ids["unk"],
    )
    torch.manual_seed(0)
    model = LtgBertForMaskedLM(config)
    runs = work / "runs-bert"
    args = training_arguments(runs, max_steps=150, per_device_train_batch_size=32, per_device_eval_batch_size=32,
                              learning_rate=3e-3, warmup_steps=10, lr_scheduler_type="cosine", logging_steps=10,
                              eval_steps=50, save_steps=50, seed=0, data_seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples(train_docs),
                      eval_dataset=examples(valid_docs)[:256], processing_class=tokenizer,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15))
    trainer.train()
    save_checkpoint(model, work / "bert-mlm", tokenizer=tokenizer)
    run("export", "--overwrite", str(work / "bert-mlm"), str(out / "ltg-bert-mlm"), "--training-dir", str(runs),
        "--license", "apache-2.0", "--language", "en")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE), help="where to write the checkpoints (default: this folder)")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf-ltg-checkpoints-") as work:
        make_gpt(Path(work), out)
        make_ltg_bert(Path(work), out)
    for name in NAMES:
        run("doctor", str(out / name))
    for name in NAMES:
        size = sum(p.stat().st_size for p in (out / name).rglob("*") if p.is_file())
        print(f"{name}: {size / 1e6:.2f} MB")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
