"""Progress bars for the long steps (tokenizer training, data preparation, training, evaluation).

Bars go to stderr and only when stderr is a terminal, so logs, pipes and captured output stay
free of carriage-return lines; `HF_LTG_PROGRESS=1` (or `0`) forces them on (or off).
"""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    forced = os.environ.get("HF_LTG_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on stderr, disabled where `progress_enabled()` says no (unless `disable` is given)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def quiet_library_bars() -> None:
    """transformers' own bars (saving and loading shards) follow the same rule: none off a terminal."""
    if not progress_enabled():
        from transformers.utils import logging

        logging.disable_progress_bar()
