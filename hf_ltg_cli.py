"""The `hf-ltg` console script.

Imported before `hf_ltg`, it tells the package to defer its heavy imports (torch, transformers,
peft), so that `hf-ltg --help` and `hf-ltg COMMAND --help` answer without them; `hf_ltg.cli`
loads them once a command is about to run.
"""

DEFER_IMPORTS = True


def main(argv=None) -> int:
    from hf_ltg.cli import main as run

    return run(argv)
