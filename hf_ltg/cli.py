"""The `hf-ltg` command: one entry point, one module per sub-command in `hf_ltg/commands/`.

Each command module defines `add_parser(subparsers)`, which registers its parser and sets
`func` (called with the parsed arguments). Heavy imports happen inside `func`, so
`hf-ltg --help` stays fast.
"""

import argparse
import importlib
import sys

# Order is the order shown in `hf-ltg --help`.
COMMAND_MODULES = [
    "pretrain",
    "finetune_cls",
    "finetune_instruct",
    "generate",
    "perplexity",
    "eval_pairs",
    "lm_eval",
    "convert",
    "quantize",
    "export",
    "doctor",
    "push",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ltg",
        description="Pretrain, fine-tune, generate, evaluate, convert, export and push hf_ltg models.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"hf_ltg.commands.{name}").add_parser(subparsers)
    return parser


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# Arguments naming what a command writes; the doctor reads damaged folders to list their problems.
OUTPUT_ARGUMENTS = {"out", "output", "work_dir", "onnx", "gguf"}
UNCHECKED_COMMANDS = {"doctor"}


def check_input_files(args) -> None:
    """Before any work: every argument naming an existing checkpoint folder or file has no damaged file
    (`checkpoint.check_files_readable`), so a file cut short is one line naming it, not a traceback
    from deep inside a loader, and nothing is written."""
    import os

    from .checkpoint import check_files_readable

    if args.command in UNCHECKED_COMMANDS:
        return
    for name, value in vars(args).items():
        if name in OUTPUT_ARGUMENTS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item) and os.path.exists(item):
                check_files_readable(item)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import hf_ltg

    hf_ltg.load()  # deferred by the console script (hf_ltg_cli) so that --help is quick
    from .progress import quiet_library_bars

    quiet_library_bars()
    try:
        check_input_files(args)
        result = args.func(args)
    except (CommandError, FileNotFoundError, ValueError) as error:
        print(f"hf-ltg {args.command}: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
