"""`hf-ltg pretrain --family ltg_bert --objective hybrid|causal`: LTG-BERT trained as GPT-BERT, and
`hf-ltg pretrain --family norbert4 --objective hybrid|masked|causal`: NorBERT4 on the same data path
(`masked`: every batch masked, spans as in `hybrid`).

The same data options as the other pretraining runs (default: pydoc_data.topics), windows
`[CLS] tokens` of --max-length. `hybrid` mixes masked and causal batches (--causal-ratio of them
causal), masks spans of 1..--max-span-length tokens at a rate falling from --mask-rate-start to
--mask-rate-end, and predicts token i + 1 from position i in both modes (`hf_ltg.data.hybrid`);
`causal` is the same with every batch causal. Validation reports masked accuracy and causal
perplexity, and the final summary compares both with a unigram model on the same tokens.
"""

import math
import time
from pathlib import Path

from . import _training
from ._pretrain_ltg_bert import DEFAULT_OUTPUT, GPT_DEFAULT_OUTPUT, new_tokenizer_and_config

NORBERT4_OUTPUT = "checkpoints/norbert4"
FAMILY_NAMES = {"ltg-bert": "LTG-BERT", "norbert4": "NorBERT4"}


def run_hybrid(args, objective: str) -> int:
    from transformers import set_seed

    from ..checkpoint import save_checkpoint
    from ..data.hybrid import (
        DEFAULT_CAUSAL_RATIO,
        DEFAULT_MASK_RATE_END,
        DEFAULT_MASK_RATE_START,
        DEFAULT_MAX_SPAN_LENGTH,
        HybridCollator,
        HybridDataset,
    )
    from ..hybrid_training import (
        HybridTrainer,
        MaskingScheduleCallback,
        evaluate_hybrid,
        export_model,
        training_model_class,
    )
    from ..tokenization import check_tokenizer_fits, load_tokenizer
    from ..training import TimeLimitCallback
    from .pretrain import documents

    started = time.time()
    ratio = {"causal": 1.0, "masked": 0.0}.get(
        objective, DEFAULT_CAUSAL_RATIO if args.causal_ratio is None else args.causal_ratio)
    training_model = training_model_class(args.arch)
    if args.arch == "norbert4" and not args.init_from:
        norbert4_head_size(args)  # before any work
    mask_start = DEFAULT_MASK_RATE_START if args.mask_rate_start is None else args.mask_rate_start
    mask_end = DEFAULT_MASK_RATE_END if args.mask_rate_end is None else args.mask_rate_end
    span = DEFAULT_MAX_SPAN_LENGTH if args.max_span_length is None else args.max_span_length
    for name, value in (("--mask-rate-start", mask_start), ("--mask-rate-end", mask_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} {value} is outside (0, 1); give the share of tokens to mask (GPT-BERT: "
                             f"{DEFAULT_MASK_RATE_START} -> {DEFAULT_MASK_RATE_END}).")
    if span < 1:
        raise ValueError(f"--max-span-length {span} must be at least 1 (GPT-BERT: {DEFAULT_MAX_SPAN_LENGTH}).")
    if args.output == GPT_DEFAULT_OUTPUT:
        args.output = NORBERT4_OUTPUT if args.arch == "norbert4" else DEFAULT_OUTPUT
    _training.check_output_option(args, args.init_from)
    _training.resume_checkpoint(args)
    set_seed(args.seed)
    train_docs, valid_docs, source = documents(args)

    if args.init_from:
        tokenizer = load_tokenizer(args.tokenizer or args.init_from)
        model = training_model.from_pretrained(args.init_from)
    else:
        tokenizer, config = new_tokenizer_and_config(args, train_docs)
        if args.arch == "norbert4":
            config = norbert4_config(args, config)
        model = training_model(config)
    check_tokenizer_fits(tokenizer, model.config)
    _training.check_resumable(args, model.config)

    train_set = HybridDataset(train_docs, tokenizer, args.max_length, source=source)
    valid_set = HybridDataset(valid_docs, tokenizer, args.max_length, source=f"the validation part of {source}")
    collator = HybridCollator(tokenizer, causal_ratio=ratio, mask_rate_start=mask_start, mask_rate_end=mask_end,
                              max_span_length=span)
    callbacks = _training.callbacks(args)
    time_limit = next((c for c in callbacks if isinstance(c, TimeLimitCallback)), None)
    trainer = HybridTrainer(
        model=model,
        args=_training.trainer_arguments(args),
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=[*callbacks, MaskingScheduleCallback(collator, time_limit)],
        validation_seed=args.seed,
    )
    if trainer.is_world_process_zero():
        n_params = sum(p.numel() for p in model.parameters())
        spans = f"spans of 1-{span} masked at {mask_start:g} -> {mask_end:g}"
        what = {"causal": "causal LM", "masked": f"masked LM ({spans})"}.get(
            objective, f"hybrid LM ({ratio:.4g} of batches causal, {spans})")
        print(f"pretraining {FAMILY_NAMES[args.arch]} ({n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}) "
              f"as a {what} "
              f"on {source}: {len(train_set.token_ids):,} training tokens in {len(train_set)} windows of "
              f"{args.max_length}, {len(valid_set.token_ids):,} validation tokens", flush=True)
    _training.train(trainer, args)
    _training.report_losses(trainer)

    model = trainer.trained_model()  # the full weights where the Trainer shards them (FSDP); every process calls it
    if trainer.is_world_process_zero():
        print(summary(evaluate_hybrid(model, valid_set, tokenizer, args.batch_size, seed=args.seed),
                      train_set.token_ids, tokenizer), flush=True)
        written = save_checkpoint(export_model(model, objective), args.output, tokenizer=tokenizer,
                                  generation_config=_training.default_generation_config(tokenizer))
        print(f"wrote {Path(written).resolve()}", flush=True)
        print(f"curves: {_training.work_dir(args) / 'training_curves.png'}; total time {time.time() - started:.0f} s")
    return 0


def norbert4_config(args, ltg_bert_config):
    """A NorBERT4 config sized by the command's options, with the special tokens of `ltg_bert_config`
    (made for the same tokenizer). The release's windows, rotary bases and layer pattern; the
    feed-forward 2.6 x hidden (1664 at 640, as NorBERT4-base); heads of hidden / --num-heads features."""
    from ..norbert4 import Norbert4Config

    head_size = norbert4_head_size(args)
    special = {name: getattr(ltg_bert_config, name) for name in
               ("pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id", "mask_token_id")}
    return Norbert4Config(
        vocab_size=ltg_bert_config.vocab_size, hidden_size=args.hidden_size,
        intermediate_size=8 * round(2.6 * args.hidden_size / 8), num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads, query_key_head_size=head_size, value_head_size=head_size,
        max_position_embeddings=args.max_length, embedding_dropout=args.dropout, attention_dropout=args.dropout,
        hidden_dropout=args.dropout, **special,
    )


def norbert4_head_size(args) -> int:
    head_size = args.hidden_size // args.num_heads
    if head_size < 2 or head_size % 2 or head_size * args.num_heads != args.hidden_size:
        raise ValueError(f"--hidden-size {args.hidden_size} / --num-heads {args.num_heads} must be an even whole "
                         "number of features per head (rotary positions rotate pairs): NorBERT4-base has 640 / 10.")
    return head_size


def summary(results: dict, train_ids, tokenizer) -> str:
    """Two lines: masked accuracy and causal perplexity, each next to the unigram model's."""
    from ..hybrid_training import unigram_baselines

    lines = []
    masked = results["masked"]
    baseline = unigram_baselines(train_ids, masked["histogram"], len(tokenizer), exclude=tokenizer.all_special_ids)
    worse = [name for name, is_worse in (("accuracy", masked["accuracy"] <= baseline["accuracy"]),
                                         ("loss", masked["loss"] >= baseline["loss"])) if is_worse]
    verdict = "better in accuracy and loss" if not worse else f"NOT better in {' and '.join(worse)}: train longer"
    lines.append(f"validation masked accuracy {masked['accuracy']:.3f} (loss {masked['loss']:.3f}) over "
                 f"{masked['tokens']:,} masked tokens; unigram baseline accuracy {baseline['accuracy']:.3f} "
                 f"(loss {baseline['loss']:.3f}); {verdict}")
    causal = results["causal"]
    baseline = unigram_baselines(train_ids, causal["histogram"], len(tokenizer))
    perplexity = math.exp(min(causal["loss"], 50.0))
    verdict = "better" if perplexity < baseline["perplexity"] else "NOT better: train longer"
    lines.append(f"validation causal perplexity {perplexity:.2f} over {causal['tokens']:,} tokens; unigram baseline "
                 f"perplexity {baseline['perplexity']:.2f}; {verdict}")
    return "\n".join(lines)
