"""`hf-ltg convert`: foreign checkpoints -> hf_ltg checkpoint folders, and back to stock GPT-2."""

from pathlib import Path

from ._output import add_overwrite_option, check_output

# --from FORMAT -> (function name in hf_ltg.conversion, needs --config)
SOURCES = {
    "hf-gpt2": ("convert_from_hf_gpt2", False),
    "from-scratch": ("convert_from_scratch", True),
    "ltg-bert": ("convert_ltg_bert", True),
    "gpt-bert": ("convert_gpt_bert", True),
}
TARGETS = {
    "hf-gpt2": "convert_to_hf_gpt2",
}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert checkpoints into hf_ltg folders (--from) or into stock formats (--to)",
        description="Convert a checkpoint. OUT is always a complete checkpoint folder, written atomically.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source_format", choices=sorted(SOURCES),
                           help="format of SRC, converted into an hf_ltg checkpoint")
    direction.add_argument("--to", dest="target_format", choices=sorted(TARGETS),
                           help="write the hf_ltg checkpoint SRC in this stock format")
    parser.add_argument("--config", help="config JSON of SRC (required for from-scratch; optional for hf-gpt2)")
    parser.add_argument("--layout", choices=("babylm", "bnc"), default="babylm",
                        help="ltg-bert only: the code that trained SRC, babylm/train (default; also NorBERT3) "
                             "or the original BNC training/")
    parser.add_argument("--tokenizer", help="gpt-bert only: the tokenizer.json GPT-BERT was trained with (default: "
                                            "a tokenizer.json beside SRC)")
    parser.add_argument("src", metavar="SRC", help="source folder or weights file")
    parser.add_argument("out", metavar="OUT", help="output checkpoint folder: new, empty or (with --overwrite) "
                                                   "a previous checkpoint")
    add_overwrite_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import conversion

    check_output(args.out, args.overwrite, [args.src])
    if args.target_format:
        out = getattr(conversion, TARGETS[args.target_format])(args.src, args.out)
    else:
        function, needs_config = SOURCES[args.source_format]
        if needs_config and not args.config:
            raise ValueError(f"--from {args.source_format} needs --config CFG.json describing SRC.")
        kwargs = {"config_path": args.config} if args.config or needs_config else {}
        if args.source_format == "ltg-bert":
            kwargs["layout"] = args.layout
        if args.tokenizer is not None:
            if args.source_format != "gpt-bert":
                raise ValueError(f"--tokenizer is for --from gpt-bert, not --from {args.source_format}; the other "
                                 "formats take the tokenizer files beside SRC.")
            kwargs["tokenizer"] = args.tokenizer
        out = getattr(conversion, function)(args.src, args.out, **kwargs)
    print(f"wrote {Path(out).resolve()}")
    return 0
