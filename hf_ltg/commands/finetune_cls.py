"""`hf-ltg finetune-cls`: sequence classification on top of a pretrained checkpoint.

Default data: the summary lines of standard-library docstrings, labelled by module family
(see `hf_ltg.data.corpus`); reports validation accuracy next to the majority-class baseline.
"""

from ..adapter_options import add_adapter_arguments
from . import _training


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "finetune-cls",
        help="fine-tune a checkpoint for text classification (default: stdlib docstrings by module family)",
        description="Fine-tune a checkpoint for sequence classification on CSV, TSV (also the SMS Spam "
                    "Collection layout label<TAB>text) or JSONL files. The label mapping ends up in the "
                    "checkpoint's config (id2label / label2id).",
    )
    parser.add_argument("--model", default="checkpoints/main-job", help="pretrained checkpoint folder (default: %(default)s)")
    parser.add_argument("--train-file", help="training examples (default: docstrings by module family)")
    parser.add_argument("--validation-file", help="validation examples (required with --train-file)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--freeze", default="all",
                        help="trainable part: all, head, last_block, last_n_blocks:N (default: %(default)s)")
    add_adapter_arguments(parser)
    _training.add_training_options(parser, output="checkpoints/finetune-cls", max_length=64, epochs=4, batch_size=16,
                                   learning_rate=5e-4, eval_steps=75, time_limit=480)
    parser.set_defaults(func=run)


def run(args) -> int:
    from transformers import AutoModelForSequenceClassification, set_seed

    from ..adapters import apply_adapter, trainable_parameters
    from ..data.core import ClassificationDataset, PaddingCollator
    from ..data.corpus import classification_data
    from ..tokenization import check_tokenizer_fits
    from ..training import LtgTrainer, freeze_layers

    _training.check_output_option(args, args.model)
    set_seed(args.seed)
    if bool(args.train_file) != bool(args.validation_file):
        raise ValueError("Pass both --train-file and --validation-file, or neither for the default data.")
    tokenizer = _training.load_checkpoint_tokenizer(args.model)
    if args.train_file:
        train_set = ClassificationDataset.from_file(args.train_file, tokenizer, args.max_length,
                                                    text_column=args.text_column, label_column=args.label_column)
        valid_set = ClassificationDataset.from_file(args.validation_file, tokenizer, args.max_length,
                                                    label2id=train_set.label2id, text_column=args.text_column,
                                                    label_column=args.label_column)
        source = args.train_file
    else:
        train_records, valid_records = classification_data()
        source = "stdlib docstrings by module family"
        train_set = ClassificationDataset(train_records, tokenizer, args.max_length, source=f"{source} (train)")
        valid_set = ClassificationDataset(valid_records, tokenizer, args.max_length, label2id=train_set.label2id,
                                          source=f"{source} (validation)")

    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(train_set.label2id), id2label=train_set.id2label, label2id=train_set.label2id,
        pad_token_id=tokenizer.pad_token_id,
    )
    check_tokenizer_fits(tokenizer, model.config)
    if args.adapter:
        _training.check_no_freeze_with_adapter(args)
        model = apply_adapter(model, args, "SEQ_CLS", tokenizer)
        trainable = trainable_parameters(model)[0]
    else:
        trainable = freeze_layers(model, args.freeze)
    trainer = LtgTrainer(
        model=model,
        args=_training.trainer_arguments(args, eval_on_start=True),
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=_training.callbacks(args),
    )
    baseline = valid_set.majority_baseline(train_set)
    if trainer.is_world_process_zero():
        print(f"fine-tuning {args.model} for {len(train_set.label2id)} labels {sorted(train_set.label2id)} on {source}: "
              f"{len(train_set)} training / {len(valid_set)} validation examples, {trainable:,} trainable parameters "
              f"({f'--adapter {args.adapter}' if args.adapter else f'--freeze {args.freeze}'})", flush=True)
    _training.train(trainer, args)
    _training.report_losses(trainer)
    metrics = trainer.evaluate()
    if trainer.is_world_process_zero():
        print(f"validation accuracy {metrics['eval_accuracy']:.4f} (macro-F1 {metrics['eval_macro_f1']:.4f}); "
              f"majority-class baseline {baseline:.4f}")
    _training.save(trainer, args.output, tokenizer, merge=args.merge)
    return 0
