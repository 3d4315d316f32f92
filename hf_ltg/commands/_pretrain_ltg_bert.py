"""`hf-ltg pretrain --arch ltg-bert`: a WordPiece tokenizer and an LTG-BERT masked language model.

The same data options as the GPT main job (default: pydoc_data.topics). Windows are
`[CLS] ... [SEP]` of --max-length tokens (no overlap: --stride is refused); each batch gets
--mlm-probability of its tokens chosen, whole words or subwords (--masking), 80/10/10
[MASK]/random/kept. At the end the validation masked-token loss and accuracy are measured
under one fixed masking and compared with a unigram model, and a fill-mask sample is shown.
"""

import math
import time

from . import _training

GPT_DEFAULT_OUTPUT = "checkpoints/main-job"
DEFAULT_OUTPUT = "checkpoints/ltg-bert"
FILL_MASK_PROBE = "The for statement is used to iterate over the elements of a [MASK]."


def run_masked_lm(args) -> int:
    import torch
    from transformers import AutoModelForMaskedLM, pipeline, set_seed

    from ..data.masked import MaskedLanguageModelingDataset, MaskingCollator
    from ..ltg_bert import LtgBertForMaskedLM
    from ..tokenization import check_tokenizer_fits, load_tokenizer
    from ..training import LtgTrainer, unigram_perplexity
    from .pretrain import documents

    started = time.time()
    set_seed(args.seed)
    if args.output == GPT_DEFAULT_OUTPUT:
        args.output = DEFAULT_OUTPUT
    _training.check_output_option(args, args.init_from)
    _training.resume_checkpoint(args)
    train_docs, valid_docs, source = documents(args)

    if args.init_from:
        tokenizer = load_tokenizer(args.tokenizer or args.init_from)
        model = AutoModelForMaskedLM.from_pretrained(args.init_from)
    else:
        tokenizer, config = new_tokenizer_and_config(args, train_docs)
        model = LtgBertForMaskedLM(config)
    check_tokenizer_fits(tokenizer, model.config)
    _training.check_resumable(args, model.config)

    train_set = MaskedLanguageModelingDataset(train_docs, tokenizer, args.max_length, source=source)
    valid_set = MaskedLanguageModelingDataset(valid_docs, tokenizer, args.max_length,
                                              source=f"the validation part of {source}")
    whole_word = args.masking == "whole-word"
    collator = MaskingCollator(tokenizer, mlm_probability=args.mlm_probability, whole_word=whole_word)
    trainer = LtgTrainer(
        model=model,
        args=_training.trainer_arguments(args),
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=valid_set,
        processing_class=tokenizer,
        callbacks=_training.callbacks(args),
    )
    if trainer.is_world_process_zero():
        n_params = sum(p.numel() for p in model.parameters())
        print(f"pretraining {type(model).__name__} ({n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}) "
              f"as a masked LM ({args.masking}, {args.mlm_probability:.0%}) on {source}: "
              f"{len(train_set.token_ids):,} training tokens in {len(train_set)} windows of {args.max_length}, "
              f"{len(valid_set.token_ids):,} validation tokens", flush=True)
    _training.train(trainer, args)
    _training.report_losses(trainer)

    model = trainer.trained_model()
    if trainer.is_world_process_zero():
        model.eval()
        fixed = MaskingCollator(tokenizer, mlm_probability=args.mlm_probability, whole_word=whole_word,
                                generator=torch.Generator().manual_seed(args.seed))
        loss, accuracy, count = masked_lm_evaluation(model, valid_set, fixed, args.batch_size)
        unigram = unigram_perplexity(train_set.token_ids, valid_set.token_ids, len(tokenizer))
        print(f"validation masked-token loss {loss:.3f} (accuracy {accuracy:.3f}) over {count:,} masked tokens; "
              f"unigram baseline loss {math.log(unigram):.3f}")
        fill = pipeline("fill-mask", model=model, tokenizer=tokenizer, device=model.device)
        guesses = [guess["token_str"] for guess in fill(FILL_MASK_PROBE, top_k=3)]
        print(f"fill-mask: {FILL_MASK_PROBE!r} -> {guesses}")
    _training.save(trainer, args.output, tokenizer)
    if trainer.is_world_process_zero():
        print(f"curves: {_training.work_dir(args) / 'training_curves.png'}; total time {time.time() - started:.0f} s")
    return 0


def new_tokenizer_and_config(args, train_docs):
    """(tokenizer, LtgBertConfig) for a model trained from scratch: --tokenizer, the checkpoint's with
    --resume, or WordPiece trained on the main process and shared with the others, and a config sized
    by the command's options."""
    from ..ltg_bert import LtgBertConfig
    from ..tokenization import load_tokenizer, train_tokenizer

    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    elif args.resume:
        tokenizer = _training.resumed_tokenizer(args)
    else:
        tokenizer = _training.made_on_main_process(lambda: train_tokenizer(
            iterator=train_docs, vocab_size=args.vocab_size, kind="wordpiece", model_max_length=args.max_length))
    config = LtgBertConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads, intermediate_size=8 * round(args.hidden_size / 3),  # 2048 at 768
        hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout,
        **special_token_ids(tokenizer),
    )
    return tokenizer, config


def special_token_ids(tokenizer) -> dict:
    """The config's special-token ids from a `[CLS] [SEP] [PAD] [MASK] [UNK]` tokenizer."""
    ids = dict(pad_token_id=tokenizer.pad_token_id, unk_token_id=tokenizer.unk_token_id,
               cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
               mask_token_id=tokenizer.mask_token_id)
    missing = [name.removesuffix("_id") for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"LTG-BERT needs a tokenizer with [CLS] [SEP] [PAD] [MASK] [UNK]; this one lacks {missing}. "
                         f"Train one (omit --tokenizer) or pass a WordPiece tokenizer that has them.")
    return {**ids, "bos_token_id": ids["cls_token_id"], "eos_token_id": ids["sep_token_id"]}


def masked_lm_evaluation(model, dataset, collator, batch_size: int) -> tuple[float, float, int]:
    """(mean loss, accuracy, number) of the masked tokens of `dataset` under `collator`'s masking."""
    import torch

    from ..progress import progress_bar

    total_loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for start in progress_bar(range(0, len(dataset), batch_size), desc="validation (masked)", leave=False):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {key: value.to(model.device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            chosen = batch["labels"] != -100
            labels = batch["labels"][chosen]
            total_loss += torch.nn.functional.cross_entropy(logits[chosen].float(), labels, reduction="sum").item()
            correct += (logits[chosen].argmax(-1) == labels).sum().item()
            count += len(labels)
    return total_loss / max(count, 1), correct / max(count, 1), count
