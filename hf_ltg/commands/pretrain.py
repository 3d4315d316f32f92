"""`hf-ltg pretrain`: a tokenizer and a causal language model from scratch, or continued training.

With no arguments this is the project's main job: a byte-level BPE tokenizer and a small GPT
trained on the standard library's `pydoc_data.topics` in a few minutes on a CPU, written to
checkpoints/main-job, with validation perplexity next to a unigram baseline and a sample.
"""

from . import _training

ARCHITECTURES = ["gpt", "ltg-bert", "ltg_bert", "norbert4"]
OBJECTIVES = ("hybrid", "masked", "causal")  # hf_ltg.data.hybrid.OBJECTIVES, without importing torch here
SAMPLE_PROMPTS = ["The for statement is used to", "An exception is raised when"]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "pretrain",
        help="train a tokenizer and a language model from scratch (default: the main job on pydoc topics)",
        description="Pretrain a causal language model. Without --train-files it trains on the Python standard "
                    "library's pydoc_data.topics (about 465 KB), which every machine has.",
    )
    parser.add_argument("--arch", "--family", dest="arch", choices=ARCHITECTURES, default="gpt",
                        help="model family (default: %(default)s); ltg-bert (or ltg_bert) trains LTG-BERT with a "
                             "WordPiece tokenizer, written to checkpoints/ltg-bert unless --output is given; norbert4 "
                             "trains NorBERT4 (LTG's GPT-BERT of 2025) the same way, to checkpoints/norbert4")
    # --objective and --causal-ratio are checked in run(), so that a bad value is a one-line error
    # (argparse's own would print the whole usage first).
    parser.add_argument("--objective", metavar="{" + ",".join(OBJECTIVES) + "}",
                        help="ltg-bert: masked (LTG-BERT, the default), causal, or hybrid (GPT-BERT: masked and causal "
                             "batches, span masking, next-token targets in both modes); norbert4: hybrid (the "
                             "default), masked (span masking only) or causal; gpt: causal only")
    parser.add_argument("--causal-ratio", metavar="R",
                        help="hybrid: share of causal batches, in [0, 1] (default: 1/16, GPT-BERT's 15 masked GPUs "
                             "of 16)")
    parser.add_argument("--mask-rate-start", type=float, metavar="P",
                        help="hybrid: share of tokens masked at the start, falling linearly (default: 0.3)")
    parser.add_argument("--mask-rate-end", type=float, metavar="P",
                        help="hybrid: share of tokens masked at the end of training (default: 0.15)")
    parser.add_argument("--max-span-length", type=int, metavar="N",
                        help="hybrid: masked spans are 1..N tokens long (default: 3)")
    parser.add_argument("--masking", choices=("whole-word", "subword"),
                        help="ltg-bert, masked objective: mask whole words or single subwords (default: whole-word)")
    parser.add_argument("--mlm-probability", type=float,
                        help="ltg-bert, masked objective: share of tokens to predict, 80/10/10 [MASK]/random/kept "
                             "(default: 0.15)")
    data = parser.add_argument_group("data")
    data.add_argument("--train-files", nargs="+", help="UTF-8 text files, one document each (default: pydoc topics)")
    data.add_argument("--validation-files", nargs="+",
                      help="validation text files (default: the last --validation-fraction of each document)")
    data.add_argument("--validation-fraction", type=float, default=0.1)
    data.add_argument("--stride", type=int,
                      help="gpt: window step of the training windows (default: --max-length; LTG-BERT's windows "
                           "do not overlap)")
    model = parser.add_argument_group("model and tokenizer")
    model.add_argument("--init-from", metavar="CHECKPOINT",
                       help="continue pretraining this checkpoint folder (weights and tokenizer) instead of starting anew")
    model.add_argument("--tokenizer", help="use this tokenizer (checkpoint folder, tokenizer.json, or vocab.json + "
                                           "merges.txt folder) instead of training one")
    model.add_argument("--vocab-size", type=int, default=4096, help="of the trained tokenizer (default: %(default)s)")
    model.add_argument("--hidden-size", type=int, default=256)
    model.add_argument("--num-layers", type=int, default=4)
    model.add_argument("--num-heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=0.1)
    _training.add_training_options(parser, output="checkpoints/main-job", max_length=128, epochs=12, batch_size=8,
                                   learning_rate=2e-3, eval_steps=200, time_limit=480, fsdp=True)
    parser.set_defaults(func=run)


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails the comparison too
        raise ValueError(f"--causal-ratio {text} is outside [0, 1]; give the share of causal batches "
                         "(0 = masked only, 1 = causal only, GPT-BERT: 0.0625).")
    return value


HYBRID_OPTIONS = ("causal_ratio", "mask_rate_start", "mask_rate_end", "max_span_length")
MASKED_OPTIONS = {"masking": "whole-word", "mlm_probability": 0.15}  # option -> default under --objective masked
# What masks instead, by objective, for the message that refuses a masked-objective option.
MASKING_OF = {"hybrid": "the hybrid objective masks spans at --mask-rate-start -> --mask-rate-end "
                        "(spans of 1..--max-span-length tokens)",
              "causal": "the causal objective masks nothing",
              "norbert4": "NorBERT4's objectives mask spans at --mask-rate-start -> --mask-rate-end (spans of "
                          "1..--max-span-length tokens)"}
# What NorBERT4's masked objective takes of the hybrid options (it masks spans as the hybrid one does).
SPAN_OPTIONS = ("mask_rate_start", "mask_rate_end", "max_span_length")


def check_objective(args) -> str:
    """The objective the options ask for; refuses combinations that would be ignored."""
    args.arch = args.arch.replace("_", "-")
    if args.objective is not None and args.objective not in OBJECTIVES:
        raise ValueError(f"--objective {args.objective} is unknown; use one of {', '.join(OBJECTIVES)} "
                         "(hybrid and masked need --family ltg_bert or norbert4).")
    if args.causal_ratio is not None:
        args.causal_ratio = _ratio(args.causal_ratio)
    objective = args.objective or {"ltg-bert": "masked", "norbert4": "hybrid"}.get(args.arch, "causal")
    if args.arch == "gpt" and objective != "causal":
        raise ValueError(f"--objective {objective} needs --family ltg_bert or norbert4; GPT trains the causal "
                         "objective only.")
    spans_allowed = args.arch == "norbert4" and objective == "masked"
    given = [name for name in HYBRID_OPTIONS if getattr(args, name) is not None
             and not (spans_allowed and name in SPAN_OPTIONS)]
    if given and objective != "hybrid":
        option = "--" + given[0].replace("_", "-")
        raise ValueError(f"{option} applies to --objective hybrid only (this run: {objective}); drop it or add "
                         "--family ltg_bert --objective hybrid.")
    for name, default in MASKED_OPTIONS.items():
        if getattr(args, name) is None:
            setattr(args, name, default if objective == "masked" else None)
        elif objective != "masked" or args.arch == "norbert4":
            masking = MASKING_OF["norbert4" if args.arch == "norbert4" and objective != "causal" else objective]
            raise ValueError(f"--{name.replace('_', '-')} applies to --family ltg_bert --objective masked only; "
                             f"{masking}: drop it.")
    if args.stride is not None and args.arch != "gpt":
        family = "NorBERT4" if args.arch == "norbert4" else "LTG-BERT"
        raise ValueError(f"--stride {args.stride} applies to GPT's training windows only; {family}'s {objective} "
                         "windows do not overlap (each starts with [CLS] where the previous one ended): drop it.")
    return objective


def documents(args) -> tuple[list[str], list[str], str]:
    """(training documents, validation documents, a name for their source) from the options."""
    from ..data.core import read_text_files
    from ..data.corpus import pretraining_corpus, split_documents

    if args.train_files:
        train_docs = read_text_files(args.train_files)
        if args.validation_files:
            valid_docs = read_text_files(args.validation_files)
        else:
            train_docs, valid_docs = split_documents(train_docs, args.validation_fraction)
        source = ", ".join(args.train_files)
    else:
        train_docs, valid_docs = pretraining_corpus(args.validation_fraction)
        source = "pydoc_data.topics"
    if not valid_docs:
        raise ValueError(f"No validation text: {source} is too short to hold out {args.validation_fraction:.0%} of "
                         f"its paragraphs; pass --validation-files.")
    return train_docs, valid_docs, source


def run(args) -> int:
    import math
    import time

    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from ..data.core import LanguageModelingDataset, PaddingCollator
    from ..gpt import LtgGptConfig, LtgGptForCausalLM
    from ..tokenization import check_tokenizer_fits, load_tokenizer, train_tokenizer
    from ..training import LtgTrainer, generate_text, sliding_window_perplexity, unigram_perplexity

    _training.check_fsdp_launch(args)
    objective = check_objective(args)
    if args.arch == "ltg-bert" and objective == "masked":
        from ._pretrain_ltg_bert import run_masked_lm

        return run_masked_lm(args)
    if args.arch in ("ltg-bert", "norbert4"):
        from ._pretrain_hybrid import run_hybrid

        return run_hybrid(args, objective)
    _training.check_output_option(args, args.init_from)
    _training.resume_checkpoint(args)
    started = time.time()
    set_seed(args.seed)
    train_docs, valid_docs, source = documents(args)

    if args.init_from:
        tokenizer = load_tokenizer(args.tokenizer or args.init_from)
        model = AutoModelForCausalLM.from_pretrained(args.init_from)
    else:
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        elif args.resume:
            tokenizer = _training.resumed_tokenizer(args)
        else:
            tokenizer = _training.made_on_main_process(lambda: train_tokenizer(
                iterator=train_docs, vocab_size=args.vocab_size, model_max_length=args.max_length))
        eos = tokenizer.eos_token_id
        config = LtgGptConfig(
            vocab_size=len(tokenizer), max_position_embeddings=args.max_length, hidden_size=args.hidden_size,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
            embedding_dropout=args.dropout, attention_dropout=args.dropout, hidden_dropout=args.dropout,
            bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        )
        model = LtgGptForCausalLM(config)
    check_tokenizer_fits(tokenizer, model.config)
    _training.check_resumable(args, model.config)
    context = model.config.max_position_embeddings
    if args.max_length > context:
        raise ValueError(f"--max-length {args.max_length} exceeds the model's context of {context} tokens; "
                         f"use --max-length {context} or less.")

    train_set = LanguageModelingDataset(train_docs, tokenizer, args.max_length, args.stride, source=source)
    valid_set = LanguageModelingDataset(valid_docs, tokenizer, args.max_length, args.max_length,
                                        source=f"the validation part of {source}")
    generation_config = _training.default_generation_config(tokenizer)
    model.generation_config = generation_config
    trainer = LtgTrainer(
        model=model,
        args=_training.trainer_arguments(args),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=_training.callbacks(args),
        sample_prompts=SAMPLE_PROMPTS[:1],
    )
    if trainer.is_world_process_zero():
        n_params = sum(p.numel() for p in model.parameters())
        print(f"pretraining {type(model).__name__} ({n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}) "
              f"on {source}: {train_set.num_tokens():,} training tokens in {len(train_set)} windows of "
              f"{args.max_length}, {len(valid_set.token_ids):,} validation tokens", flush=True)
    _training.train(trainer, args)
    _training.report_losses(trainer)

    model = trainer.trained_model()
    if trainer.is_world_process_zero():
        with torch.no_grad():
            result = sliding_window_perplexity(model, valid_set.token_ids, args.max_length,
                                               max(1, args.max_length // 2), batch_size=32)
        unigram = unigram_perplexity(train_set.token_ids, valid_set.token_ids, len(tokenizer))
        sample = generate_text(model, tokenizer, SAMPLE_PROMPTS[0], max_new_tokens=40, seed=args.seed)
        gain = math.log(unigram) - result["nll"]
        verdict = f"{gain:.2f} nats/token better" if gain >= 0 else f"{-gain:.2f} nats/token WORSE: train longer"
        print(f"validation perplexity {result['perplexity']:.2f} over {result['tokens']:,} tokens "
              f"(unigram baseline {unigram:.2f}; {verdict})")
        print(f"sample: {SAMPLE_PROMPTS[0]}{sample}")
    _training.save(trainer, args.output, tokenizer, generation_config)
    if trainer.is_world_process_zero():
        print(f"curves: {_training.work_dir(args) / 'training_curves.png'}; total time {time.time() - started:.0f} s")
    return 0
