"""`hf-ltg eval-pairs`: minimal-pair accuracy (BLiMP's JSONL format), causal and/or masked scoring."""

MODE_CHOICES = ("causal", "masked", "both")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "eval-pairs",
        help="minimal-pair accuracy (BLiMP-style JSONL) by causal log-likelihood and/or masked pseudo-log-likelihood",
        description="Score both sentences of every pair in FILE (JSON lines with sentence_good and sentence_bad, "
                    "as in BLiMP; optional linguistics_term/phenomenon/field/UID group them) and print the share of "
                    "pairs whose good sentence scores higher, per group and overall. causal: log-likelihood of "
                    "each token given the ones before it; masked: pseudo-log-likelihood, each token masked in turn "
                    "(LTG-BERT / BabyLM). Without FILE, the small pair file shipped with hf_ltg.",
    )
    parser.add_argument("model", help="checkpoint folder")
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSONL pair files, e.g. BLiMP's (default: the pairs shipped with hf_ltg)")
    parser.add_argument("--mode", choices=MODE_CHOICES,
                        help="how sentences are scored (default: both when the tokenizer has a mask token, else causal)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="sequences per forward; in masked mode each masked copy counts (default: %(default)s)")
    parser.add_argument("--group-by", metavar="FIELD",
                        help="field that groups the pairs (default: the first of linguistics_term, phenomenon, field, "
                             "UID that every line has)")
    parser.add_argument("--output", metavar="RESULTS.json",
                        help="also write accuracies and every pair's scores as JSON (written whole or not at all)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..minimal_pairs import MODES, SHIPPED_PAIRS, default_modes, evaluate, format_table, read_pairs
    from ..progress import progress_bar
    from ._training import check_language_model, load_checkpoint_tokenizer

    output = _check_output(args.output)
    check_language_model(args.model, "eval-pairs")
    tokenizer = load_checkpoint_tokenizer(args.model)
    pairs = read_pairs(args.files or [SHIPPED_PAIRS])
    modes = default_modes(tokenizer) if args.mode is None else MODES if args.mode == "both" else (args.mode,)
    bars = []

    def progress(sentences: int) -> None:
        # Opened at the first scored batch, so that an error found before any scoring is alone on stderr.
        if not bars:
            bars.append(progress_bar(total=len(pairs) * 2 * len(modes), desc="scoring sentences", unit="sentence"))
        bars[0].update(sentences)

    try:
        results = evaluate(args.model, pairs, modes, args.batch_size, args.group_by, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"{results['pairs']} pairs from {', '.join(results['files'])}; {args.model}; "
          f"accuracy = share of pairs whose good sentence scores higher")
    print(format_table(results))
    if output:
        _write_json(output, results)
        print(f"wrote {output}")
    return 0


def _check_output(path):
    """The --output path, refused before any work when it cannot be written."""
    if path is None:
        return None
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--output {path} is a folder; name a file, e.g. {path / 'results.json'}.")
    if not path.parent.is_dir():
        raise ValueError(f"--output {path}: the folder {path.parent} does not exist; create it first.")
    return path


def _write_json(path, data) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    import json
    import os
    import tempfile

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
