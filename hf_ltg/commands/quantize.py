"""`hf-ltg quantize`: an int8 or 4-bit copy of a checkpoint folder that loads quantized with trust_remote_code."""

from pathlib import Path

from ._output import add_overwrite_option, check_output

# Mirrors hf_ltg.quantization.SCHEMES / DEFAULT_THRESHOLD (not imported: `--help` stays light).
SCHEMES = ("absmax", "zeropoint", "llm-int8", "int8-weight-only", "int4-weight-only")
DEFAULT_THRESHOLD = 6.0


def add_int8_argument(parser):
    """`--int8 [SCHEME]` of the commands that load a model (generate, perplexity): quantize on the fly."""
    parser.add_argument("--int8", nargs="?", const="absmax", choices=SCHEMES, metavar="SCHEME",
                        help=f"quantize the linear layers to int8 after loading: {', '.join(SCHEMES)} "
                             "(default when given without a value: absmax)")


def quantize_loaded(model, scheme):
    if scheme:
        from ..quantization import quantize_model

        quantize_model(model, scheme)
    return model


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "quantize",
        help="write an int8 or 4-bit copy of a checkpoint (absmax, zeropoint, llm-int8, int8-weight-only, "
             "int4-weight-only)",
        description=(
            "Quantize every linear layer of SRC (the LM head only with --include-lm-head) and write OUT "
            "atomically: quantized weights + scales in safetensors, the scheme in config.json, the model code "
            "alongside, so from_pretrained(OUT, trust_remote_code=True) loads it quantized. absmax, zeropoint "
            "and llm-int8 quantize weights per output channel and activations per token, and multiply in int8; "
            "int8-weight-only (per output channel) and int4-weight-only (4 bits, a scale and a minimum per 32 "
            "inputs: llama.cpp's Q4_1) keep activations in floating point and decode fastest on CPU."
        ),
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint folder (floating point)")
    parser.add_argument("out", metavar="OUT", help="output checkpoint folder: new, empty or (with --overwrite) "
                                                   "a previous checkpoint")
    add_overwrite_option(parser)
    parser.add_argument("--scheme", choices=SCHEMES, default="absmax", help="quantization scheme (default absmax)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"llm-int8: activation columns with |x| >= this stay in floating point (default {DEFAULT_THRESHOLD})")
    parser.add_argument("--include-lm-head", action="store_true", help="quantize the output head too")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..quantization import checkpoint_size, quantize_checkpoint

    check_output(args.out, args.overwrite, [args.src])
    out = quantize_checkpoint(args.src, args.out, args.scheme, args.threshold, args.include_lm_head)
    before, after = checkpoint_size(args.src), checkpoint_size(out)
    ratio = f" ({after / before:.2f}x of {before:,} bytes)" if before else ""
    print(f"wrote {Path(out).resolve()}: {args.scheme}, weights {after:,} bytes{ratio}")
    return 0
