"""The OUT folder of the commands that write checkpoints: `--overwrite` and the check made before any work."""

OVERWRITE_HELP = ("replace OUT when it holds a previous hf_ltg checkpoint; a folder holding anything else "
                  "is never replaced")


def add_overwrite_option(parser) -> None:
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def check_output(out, overwrite: bool, sources=()) -> None:
    """Refuse OUT before any work (a ValueError naming the folder and the fix): see
    `hf_ltg.checkpoint.check_output_folder`. `sources` are folders OUT must not be or contain."""
    from ..checkpoint import check_output_folder

    check_output_folder(out, overwrite=overwrite, sources=[s for s in sources if s])
