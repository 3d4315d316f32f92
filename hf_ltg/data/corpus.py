"""Default data of the commands, derived from the Python standard library (never downloaded).

- Pretraining: `pydoc_data.topics`, the language reference topics behind `help()` (about
  465 KB of English technical prose).
- Classification: the summary line of the docstrings of public functions, classes and methods
  of standard-library modules, labelled by module family (text, files, numbers, network,
  concurrency, data formats).
- Instruction tuning: Alpaca-format records built from the same two sources ("Describe what
  the Python function `json.dumps` does.", "What does the Python keyword `for` do?").

Splits are deterministic (a hash of each example's name), so every machine with the same
Python version builds the same sets.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib

MODULE_FAMILIES = {
    "text": ["string", "re", "textwrap", "difflib", "unicodedata", "html", "html.parser", "codecs"],
    "files": ["posixpath", "shutil", "pathlib", "glob", "tempfile", "filecmp", "zipfile", "tarfile", "fnmatch", "io"],
    "numbers": ["math", "cmath", "decimal", "fractions", "statistics", "random", "numbers", "operator"],
    "network": ["socket", "ssl", "http.client", "http.server", "urllib.request", "urllib.parse", "email.message",
                "smtplib", "ftplib", "ipaddress"],
    "concurrency": ["threading", "multiprocessing", "asyncio", "concurrent.futures", "queue", "subprocess", "sched",
                    "selectors"],
    "data": ["json", "csv", "pickle", "sqlite3", "configparser", "plistlib", "xml.etree.ElementTree",
             "xml.dom.minidom", "base64", "struct"],
}


def split_of(name: str, validation_percent: int = 20) -> str:
    """"validation" for about `validation_percent` % of names, "train" for the rest (stable hash)."""
    return "validation" if zlib.crc32(name.encode()) % 100 < validation_percent else "train"


# ---------------------------------------------------------------------------------------------
# Pretraining


def pretraining_corpus(validation_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """(training documents, validation documents) from `pydoc_data.topics`.

    Each topic is one document; its last `validation_fraction` of paragraphs go to validation,
    so both sets cover every topic and no paragraph is in both.
    """
    from pydoc_data.topics import topics

    return split_documents([topics[name] for name in sorted(topics)], validation_fraction)


def split_documents(documents: list[str], validation_fraction: float) -> tuple[list[str], list[str]]:
    """Hold out the last `validation_fraction` of each document's paragraphs for validation."""
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}.")
    train, validation = [], []
    for document in documents:
        paragraphs = document.split("\n\n")
        held_out = int(len(paragraphs) * validation_fraction)
        if held_out == 0 and len(paragraphs) > 1 and len(documents) == 1:
            held_out = 1  # a single short document still needs a validation part
        cut = len(paragraphs) - held_out
        if "\n\n".join(paragraphs[:cut]).strip():
            train.append("\n\n".join(paragraphs[:cut]))
        if held_out and "\n\n".join(paragraphs[cut:]).strip():
            validation.append("\n\n".join(paragraphs[cut:]))
    return train, validation


# ---------------------------------------------------------------------------------------------
# Classification: docstring summaries by module family


def _summary(doc: str | None) -> str | None:
    if not doc:
        return None
    text = " ".join(doc.strip().split("\n\n")[0].split())
    return text if len(text) >= 25 else None


def docstring_records() -> list[dict]:
    """`{"name", "module", "family", "text"}` for each distinct docstring summary, sorted by name."""
    records, seen = [], set()
    for family, modules in MODULE_FAMILIES.items():
        for module_name in modules:
            module = importlib.import_module(module_name)
            top = module_name.split(".")[0]
            names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
            for name in sorted(set(names)):
                obj = getattr(module, name, None)
                if obj is None or isinstance(obj, (int, float, str, bytes, tuple, list, dict)):
                    continue
                origin = (getattr(obj, "__module__", None) or "").split(".")[0].lstrip("_")
                # Skip what a module merely re-exports from another family's module.
                if origin and origin not in (top, "posix", "io", "socket", "ssl", "csv", "json", "pickle", "sqlite3",
                                             "struct", "decimal", "pydecimal", "random", "operator", "sre", "thread",
                                             "builtins", "binascii", "asyncio", "queue", "posixsubprocess", "codecs",
                                             "statistics", "math", "cmath", "unicodedata", "string"):
                    continue
                members = [(name, obj)]
                if inspect.isclass(obj):
                    members += [(f"{name}.{m}", v) for m, v in vars(obj).items() if not m.startswith("_") and callable(v)]
                for qualname, member in members:
                    summary = _summary(inspect.getdoc(member))
                    if summary is None or summary in seen:
                        continue
                    seen.add(summary)
                    records.append({"name": f"{module_name}.{qualname}", "module": module_name, "family": family,
                                    "text": summary})
    return sorted(records, key=lambda r: r["name"])


def classification_data() -> tuple[list[dict], list[dict]]:
    """(train, validation) records `{"text", "label"}`: docstring summary -> module family."""
    train, validation = [], []
    for record in docstring_records():
        example = {"text": record["text"], "label": record["family"]}
        (validation if split_of(record["name"]) == "validation" else train).append(example)
    return train, validation


# ---------------------------------------------------------------------------------------------
# Instruction tuning


def _keyword_records() -> list[dict]:
    import pydoc
    from pydoc_data.topics import topics

    records = []
    for keyword, target in sorted(pydoc.Helper.keywords.items()):
        topic = target[0] if isinstance(target, tuple) else target
        if topic not in topics:
            continue
        body = topics[topic].split("\n\n")
        # Skip the title and its underline; the first prose paragraph follows.
        prose = [p for p in body[1:] if p.strip() and not p.startswith(" ") and "::=" not in p]
        if prose:
            text = " ".join(prose[0].split())
            records.append({"name": f"keyword.{keyword}", "instruction": f"What does the Python keyword `{keyword}` do?",
                            "input": "", "output": text})
    return records


def _topic_records() -> list[dict]:
    from pydoc_data.topics import topics

    records = []
    for name in sorted(topics):
        paragraphs = [p for p in topics[name].split("\n\n") if p.strip()]
        title = re.sub(r"\s+", " ", paragraphs[0].split("\n")[0]).strip()
        prose = [p for p in paragraphs[1:] if not p.startswith(" ") and "::=" not in p]
        if title and prose:
            records.append({"name": f"topic.{name}",
                            "instruction": "Summarize this section of the Python language reference.",
                            "input": title, "output": " ".join(prose[0].split())})
    return records


def instruction_data(max_records: int | None = 1200) -> tuple[list[dict], list[dict]]:
    """(train, validation) Alpaca records: what a function does, what a keyword does, and
    what a reference section is about. `max_records` caps the total (deterministically)."""
    records = [
        {"name": r["name"], "instruction": f"Describe what `{r['name']}` from the Python standard library does.",
         "input": "", "output": r["text"]}
        for r in docstring_records()
    ]
    records = sorted(records, key=lambda r: zlib.crc32(r["name"].encode()))
    if max_records is not None:
        records = records[: max(0, max_records - 200)]
    records += _keyword_records() + _topic_records()
    train, validation = [], []
    for record in sorted(records, key=lambda r: r["name"]):
        clean = {key: record[key] for key in ("instruction", "input", "output")}
        (validation if split_of(record["name"], 10) == "validation" else train).append(clean)
    return train, validation
