"""`hf-ltg finetune-instruct`: instruction tuning of a causal LM on Alpaca-format records.

Default data: instructions built from the standard library (what a function, a keyword or a
reference section does; see `hf_ltg.data.corpus`). Reports validation loss before and after.
The checkpoint's tokenizer gets the Alpaca chat template (`hf_ltg.data.ALPACA_CHAT_TEMPLATE`), so
`apply_chat_template` (TRL, vLLM, pipelines) renders conversations in the format it was tuned on.
"""

from ..adapter_options import add_adapter_arguments
from . import _training


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "finetune-instruct",
        help="instruction-tune a causal LM on Alpaca-format data (default: built from the stdlib docs)",
        description="Instruction-tune a checkpoint on Alpaca records (instruction, optional input, output) "
                    "from JSON or JSONL files, in the Alpaca prompt format.",
    )
    parser.add_argument("--model", default="checkpoints/main-job", help="pretrained checkpoint folder (default: %(default)s)")
    parser.add_argument("--train-file", help="Alpaca JSON/JSONL (default: stdlib instructions)")
    parser.add_argument("--validation-file", help="Alpaca JSON/JSONL (required with --train-file)")
    parser.add_argument("--mask-prompt", action="store_true", help="train on the responses only (prompt labels -100)")
    parser.add_argument("--freeze", default="all", help="all, head, last_block, last_n_blocks:N (default: %(default)s)")
    add_adapter_arguments(parser)
    _training.add_training_options(parser, output="checkpoints/finetune-instruct", max_length=None, epochs=2,
                                   batch_size=8, learning_rate=3e-4, eval_steps=100, time_limit=480,
                                   max_length_default=f"the model's context, at most {DEFAULT_MAX_LENGTH}")
    parser.set_defaults(func=run)


DEFAULT_MAX_LENGTH = 128


def fit_max_length(args, config) -> int:
    """--max-length, or by default the model's context up to DEFAULT_MAX_LENGTH; refused when it
    exceeds the context (before any data is tokenized)."""
    context = config.max_position_embeddings
    if args.max_length is None:
        return min(DEFAULT_MAX_LENGTH, context)
    if args.max_length > context:
        raise ValueError(f"--max-length {args.max_length} exceeds the context of {args.model}, "
                         f"{context} tokens; use --max-length {context} or less (or leave it out).")
    return args.max_length


def run(args) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    from ..adapters import apply_adapter
    from ..data.core import (
        ALPACA_CHAT_TEMPLATE,
        InstructionDataset,
        PaddingCollator,
        format_alpaca_prompt,
        read_instruction_file,
    )
    from ..data.corpus import instruction_data
    from ..tokenization import check_tokenizer_fits
    from ..training import LtgTrainer, generate_text

    _training.check_output_option(args, args.model)
    _training.resume_checkpoint(args)
    set_seed(args.seed)
    if bool(args.train_file) != bool(args.validation_file):
        raise ValueError("Pass both --train-file and --validation-file, or neither for the default data.")
    tokenizer = _training.load_checkpoint_tokenizer(args.model)
    args.max_length = fit_max_length(args, AutoConfig.from_pretrained(args.model))
    if args.train_file:
        train_records, valid_records = read_instruction_file(args.train_file), read_instruction_file(args.validation_file)
        source = args.train_file
    else:
        train_records, valid_records = instruction_data()
        source = "stdlib instructions"
    train_set = InstructionDataset(train_records, tokenizer, args.max_length, args.mask_prompt, source=source)
    valid_set = InstructionDataset(valid_records, tokenizer, args.max_length, args.mask_prompt,
                                   source=args.validation_file or f"{source} (validation)")

    model = AutoModelForCausalLM.from_pretrained(args.model)
    check_tokenizer_fits(tokenizer, model.config)
    _training.check_resumable(args, model.config, set_by="--model")
    if args.adapter:
        _training.check_no_freeze_with_adapter(args)
        model = apply_adapter(model, args, "CAUSAL_LM", tokenizer)
    example = valid_records[0]
    prompt = format_alpaca_prompt(example["instruction"], example.get("input") or "")
    trainer = LtgTrainer(
        model=model,
        args=_training.trainer_arguments(args),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=_training.callbacks(args),
        freeze=None if args.adapter else args.freeze,
        sample_prompts=[prompt],
        sample_max_new_tokens=40,
    )
    if trainer.is_world_process_zero():
        dropped = train_set.num_dropped + valid_set.num_dropped
        print(f"instruction-tuning {args.model} on {source}: {len(train_set)} training / {len(valid_set)} validation "
              f"records{' (prompt masked)' if args.mask_prompt else ''}"
              f"{f'; {dropped} left out, their prompt fills --max-length' if dropped else ''}", flush=True)
    before = trainer.evaluate()["eval_loss"]
    _training.train(trainer, args)
    _training.report_losses(trainer)
    after = trainer.evaluate()["eval_loss"]
    if trainer.is_world_process_zero():
        response = generate_text(trainer.model, tokenizer, prompt, max_new_tokens=60, temperature=0)
        print(f"validation loss {before:.4f} before, {after:.4f} after fine-tuning")
        print(f"example: {example['instruction']!r} -> {response.strip()!r} (reference {example['output']!r})")
    generation_config = _training.default_generation_config(tokenizer, max_new_tokens=100)
    tokenizer.chat_template = ALPACA_CHAT_TEMPLATE  # `apply_chat_template` then renders the trained format
    _training.save(trainer, args.output, tokenizer, generation_config, merge=args.merge)
    return 0
