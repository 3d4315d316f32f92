"""`hf-ltg generate`: continue a prompt with a causal-LM checkpoint."""

from ._precision import add_dtype_option, note_if_emulated
from .quantize import add_int8_argument, quantize_loaded


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a prompt (temperature, top-k, top-p; stops at end-of-text)",
        description="Continue PROMPT with a causal-LM checkpoint. Generation stops at the end-of-text token "
                    "or after --max-new-tokens.",
    )
    parser.add_argument("prompt", nargs="?", default="The for statement", help="text to continue (default: %(default)r)")
    parser.add_argument("--model", default="checkpoints/main-job", help="checkpoint folder (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy decoding (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=40, help="0 disables (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_dtype_option(parser)
    add_int8_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from transformers import AutoModelForCausalLM

    from ..tokenization import check_tokenizer_fits
    from ..training import generate_text
    from ._training import check_language_model, load_checkpoint_tokenizer

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}.")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}.")
    check_language_model(args.model, "generate")
    tokenizer = load_checkpoint_tokenizer(args.model)
    note_if_emulated(args.dtype, "drop --dtype")
    model = quantize_loaded(AutoModelForCausalLM.from_pretrained(args.model, dtype=args.dtype), args.int8)
    check_tokenizer_fits(tokenizer, model.config)
    for i in range(args.num_samples):
        text = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed + i)
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        print(args.prompt + text, flush=True)
    return 0
