"""`hf-ltg doctor`: is a checkpoint folder self-contained and ready for the Hub?"""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "doctor",
        help="check that a folder loads without hf_ltg, through every Auto class and pipeline",
        description="Check FOLDER: no pickles, safetensors weights, tokenizer files, a complete auto_map, code that "
        "imports only installed packages and its siblings; then, in a fresh process where hf_ltg cannot be "
        "imported, load it through every Auto class of its auto_map, run a tiny forward and the matching "
        "pipeline, and compare the tokenizer with the config. Exit status 1 when anything fails.",
    )
    parser.add_argument("folder", metavar="FOLDER", help="checkpoint folder to check")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..hub import diagnose

    report = diagnose(args.folder)
    print(report.format())
    return 0 if report.ok else 1
