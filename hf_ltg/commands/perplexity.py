"""`hf-ltg perplexity`: perplexity of a causal-LM checkpoint on a text file, with a sliding window."""

from ._precision import add_dtype_option, note_if_emulated
from .quantize import add_int8_argument, quantize_loaded


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "perplexity",
        help="perplexity of a text file under a causal-LM checkpoint (sliding window with a stride)",
        description="Score every token of FILE (but the first) once, with windows of --max-length tokens "
                    "every --stride tokens; the overlap serves as context. A masked-LM checkpoint (LTG-BERT) is "
                    "scored left to right, which is not its training objective: the output says so.",
    )
    parser.add_argument("file", help="UTF-8 text file")
    parser.add_argument("--model", default="checkpoints/main-job", help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--max-length", type=int, help="window length (default: the model's context)")
    parser.add_argument("--stride", type=int, help="window step, 1..max-length (default: max-length / 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    add_dtype_option(parser)
    add_int8_argument(parser)
    parser.set_defaults(func=run)


def masked_lm_note(model) -> str | None:
    """What the number means when the checkpoint was trained as a masked LM, not a causal one."""
    trained_as = [a for a in (model.config.architectures or []) if a.endswith("ForMaskedLM")]
    if not trained_as or any(a.endswith("ForCausalLM") for a in model.config.architectures):
        return None
    if getattr(model.config, "masked_next_token", False):
        return (f"note: {model.config.name_or_path} was trained with GPT-BERT's hybrid objective ({trained_as[0]} "
                "with masked_next_token: masked and causal batches); this is the perplexity of its causal mode, "
                "one of the two it was trained in, and it is not comparable with another model's "
                "(other tokenizers split the text into other tokens).")
    return (f"note: {model.config.name_or_path} was trained as a masked language model ({trained_as[0]}); this is the "
            f"perplexity of its causal, left-to-right use ({type(model).__name__}: each token predicted from the "
            "tokens before it only), not of its training objective, and it is not comparable with a causal LM's "
            "(other tokenizers split the text into other tokens).")


def run(args) -> int:
    from transformers import AutoModelForCausalLM

    from ..data.core import read_text_files
    from ..tokenization import check_tokenizer_fits
    from ..training import sliding_window_perplexity
    from ._training import check_language_model, load_checkpoint_tokenizer

    text = read_text_files([args.file])[0]
    check_language_model(args.model, "perplexity")
    tokenizer = load_checkpoint_tokenizer(args.model)
    note_if_emulated(args.dtype, "drop --dtype")
    model = quantize_loaded(AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype), args.int8)
    check_tokenizer_fits(tokenizer, model.config)
    max_length = args.max_length or model.config.max_position_embeddings
    stride = args.stride or max(1, max_length // 2)
    if max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {max_length}.")
    if stride < 1:
        raise ValueError(f"--stride must be >= 1, got {stride}.")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"{args.file} has {len(ids)} token(s); perplexity needs at least 2.")
    note = masked_lm_note(model)
    if note:
        print(note)
    result = sliding_window_perplexity(model, ids, max_length, stride, batch_size=args.batch_size)
    print(f"{'causal (left-to-right) ' if note else ''}perplexity {result['perplexity']:.3f} (mean NLL {result['nll']:.4f} nats) over {result['tokens']:,} tokens "
          f"of {args.file}, windows of {max_length} every {stride}")
    return 0
