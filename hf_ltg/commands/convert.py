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
        help="convert LTG releases and other checkpoints into hf_ltg folders, or into stock formats (--to)",
        description="Convert a checkpoint. Without --from/--to, SRC is an LTG Hugging Face release folder (NorBERT3, "
                    "the BabyLM LTG-BERT, GPT-BERT; see the README's table), recognised from its config.json and "
                    "modeling file. OUT is always a complete checkpoint folder, written atomically.",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--from", dest="source_format", choices=sorted(SOURCES),
                           help="format of SRC, converted into an hf_ltg checkpoint (default: an LTG release folder, "
                                "recognised by itself)")
    direction.add_argument("--to", dest="target_format", choices=sorted(TARGETS),
                           help="write the hf_ltg checkpoint SRC in this stock format")
    parser.add_argument("--config", help="config JSON of SRC (required for from-scratch, ltg-bert and gpt-bert state "
                                         "dicts; optional for hf-gpt2; for a release folder it replaces its config.json)")
    parser.add_argument("--layout", choices=("babylm", "bnc"), default=None,
                        help="LTG-BERT only, an override: how SRC's position projection splits, halves first "
                             "(babylm: ltgoslo/ltg-bert babylm/train, BabyLM wrappers, the 2023-03 modeling_norbert.py) "
                             "or heads first (bnc: the BNC training/ code, the ltg/norbert3-* Hub modeling_norbert.py). "
                             "A release folder's modeling file says which; a bare ltg-bert state dict defaults to "
                             "babylm")
    parser.add_argument("--verify", action="store_true",
                        help="release folders only: load the release's own modeling code from SRC (this RUNS the "
                             "folder's Python code, as trust_remote_code does), compare its logits with the "
                             "converted model's on a fixed padded batch, and write OUT only if they agree to 1e-4")
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
    if args.target_format or args.source_format in ("hf-gpt2", "from-scratch"):
        for flag, given in (("--layout", args.layout is not None), ("--verify", args.verify)):
            if given:
                raise ValueError(f"{flag} is for LTG-BERT checkpoints and releases, not --"
                                 f"{'to' if args.target_format else 'from'} "
                                 f"{args.target_format or args.source_format}; drop it.")
    if args.target_format:
        out = getattr(conversion, TARGETS[args.target_format])(args.src, args.out)
    elif args.source_format is None or (args.source_format in ("ltg-bert", "gpt-bert") and _is_release_folder(args.src)):
        # A release folder converts the same with or without --from ltg-bert/gpt-bert: the folder says how.
        if args.tokenizer is not None:
            raise ValueError("--tokenizer is for bare GPT-BERT state dicts; a release folder's own tokenizer files "
                             "are carried over.")
        from ..conversion.releases import convert_release

        out, notes = convert_release(args.src, args.out, layout=args.layout, verify=args.verify,
                                     config_path=args.config)
        for note in notes:
            print(note)
    else:
        function, needs_config = SOURCES[args.source_format]
        if needs_config and not args.config:
            raise ValueError(f"--from {args.source_format} needs --config CFG.json describing SRC.")
        if args.verify:
            raise ValueError("--verify needs the release's own code: give the release folder (config.json, "
                             "modeling_*.py, weights) as SRC.")
        kwargs = {"config_path": args.config} if args.config or needs_config else {}
        if args.source_format == "ltg-bert":
            kwargs["layout"] = args.layout or "babylm"
        elif args.layout is not None:
            raise ValueError(f"--layout is for LTG-BERT, not --from {args.source_format}: GPT-BERT's code has one "
                             f"layout; drop it.")
        if args.tokenizer is not None:
            if args.source_format != "gpt-bert":
                raise ValueError(f"--tokenizer is for --from gpt-bert, not --from {args.source_format}; the other "
                                 "formats take the tokenizer files beside SRC.")
            kwargs["tokenizer"] = args.tokenizer
        out = getattr(conversion, function)(args.src, args.out, **kwargs)
    print(f"wrote {Path(out).resolve()}")
    return 0


def _is_release_folder(src) -> bool:
    """A folder whose config.json names a model class or auto_map: a Hugging Face release, which the release
    converter reads whole (a bare state dict's folder has a config.json of sizes only)."""
    import json

    config = Path(src) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("architectures") or data.get("auto_map"))
