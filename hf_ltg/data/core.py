"""Datasets for language modelling, classification and instruction tuning, and their collator.

Every dataset is a `torch.utils.data.Dataset` whose items are dicts of tensors (`input_ids`,
`attention_mask`, `labels`), so the stock `Trainer` uses them directly; `to_hf_dataset` and
`from_hf_dataset` convert to and from `datasets.Dataset`. Items are unpadded: `PaddingCollator`
pads each batch to its longest item.

Bad input raises `FileNotFoundError` or `ValueError` naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100

# The two prompt headers of Stanford Alpaca (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


class TensorDictDataset(Dataset):
    """Rows of `{column: list of ints or int}`, served as `{column: tensor}`."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: torch.tensor(value) for key, value in self.rows[index].items()}

    def num_tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)


def to_hf_dataset(dataset: TensorDictDataset):
    """A `datasets.Dataset` with the same rows (lists of ints)."""
    import datasets

    return datasets.Dataset.from_list(list(dataset.rows))


def from_hf_dataset(hf_dataset, columns: Sequence[str] | None = None) -> TensorDictDataset:
    """A `TensorDictDataset` from a `datasets.Dataset` of token ids (e.g. after `.map(tokenize)`)."""
    columns = list(columns or [c for c in ("input_ids", "attention_mask", "labels") if c in hf_dataset.column_names])
    if "input_ids" not in columns:
        raise ValueError(f"The dataset has no input_ids column (columns: {hf_dataset.column_names}); tokenize it first.")
    return TensorDictDataset([{c: row[c] for c in columns} for row in hf_dataset])


def _check_lengths(max_length: int, stride: int | None = None) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (a window needs a token and its successor), got {max_length!r}.")
    if stride is not None and (not isinstance(stride, int) or stride < 1):
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}; use stride = max_length for no overlap.")


def _eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token (or sep_token) to end documents with; set tokenizer.eos_token.")
    return eos


def _encode(tokenizer, texts: list[str], desc: str = "tokenizing") -> list[list[int]]:
    """Token ids of each text, in chunks of about `ENCODE_CHUNK_CHARS` characters so that a
    progress bar (see `hf_ltg.progress`) can follow a large corpus."""
    if not texts:
        return []
    from ..progress import progress_bar

    ids: list[list[int]] = []
    with progress_bar(total=sum(len(text) for text in texts), desc=desc, unit="char", unit_scale=True,
                      leave=False) as bar:
        start = 0
        while start < len(texts):
            end, size = start, 0
            while end < len(texts) and (end == start or size + len(texts[end]) <= ENCODE_CHUNK_CHARS):
                size += len(texts[end])
                end += 1
            ids.extend(tokenizer(texts[start:end], add_special_tokens=False, verbose=False)["input_ids"])
            bar.update(size)
            start = end
    return ids


ENCODE_CHUNK_CHARS = 1 << 16  # a few dozen pydoc topics: small enough for the bar to move, large enough to batch


# ---------------------------------------------------------------------------------------------
# Language modelling


def read_text_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """The contents of text files, one document per file; raises on missing files or no text at all."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("No text files given.")
    documents = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Text file {path} does not exist.")
        try:
            documents.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text: {error}") from error
    if not any(doc.strip() for doc in documents):
        raise ValueError(f"The corpus is empty: {', '.join(map(str, paths))} contain no text.")
    return documents


def window_starts(num_tokens: int, max_length: int, stride: int) -> list[int]:
    """Start offsets of windows of `max_length` tokens every `stride` tokens, the last one reaching the end."""
    starts = list(range(0, max(num_tokens - max_length, 0) + 1, stride))
    if starts[-1] + max_length < num_tokens and starts[-1] + stride <= num_tokens - 2:
        starts.append(starts[-1] + stride)
    return starts


class LanguageModelingDataset(TensorDictDataset):
    """Sliding windows of `max_length` tokens every `stride` tokens over documents joined with eos.

    `labels` equal `input_ids`: the causal-LM loss shifts them itself. The last window may be
    shorter than `max_length` (the collator pads it).
    """

    def __init__(self, documents: Sequence[str], tokenizer, max_length: int = 256, stride: int | None = None,
                 source: str = "the corpus"):
        stride = max_length if stride is None else stride
        _check_lengths(max_length, stride)
        if not any(doc.strip() for doc in documents):
            raise ValueError(f"{source} is empty: it has no text to build language-modelling windows from.")
        eos = _eos_id(tokenizer)
        ids: list[int] = []
        for doc_ids in _encode(tokenizer, [doc for doc in documents if doc.strip()], f"tokenizing {source}"):
            ids.extend(doc_ids)
            ids.append(eos)
        if len(ids) < 2:
            raise ValueError(f"{source} has {len(ids)} token(s); language modelling needs at least 2.")
        self.token_ids = ids
        self.max_length, self.stride = max_length, stride
        rows = []
        for start in window_starts(len(ids), max_length, stride):
            window = ids[start:start + max_length]
            rows.append({"input_ids": window, "attention_mask": [1] * len(window), "labels": list(window)})
        super().__init__(rows)

    @classmethod
    def from_files(cls, paths, tokenizer, max_length: int = 256, stride: int | None = None):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        return cls(read_text_files(paths), tokenizer, max_length, stride, source=", ".join(map(str, paths)))


# ---------------------------------------------------------------------------------------------
# Classification


def read_classification_file(path: str | os.PathLike, text_column: str = "text",
                             label_column: str = "label") -> list[dict]:
    """Records `{"text", "label", "line"}` from a CSV, TSV or JSONL file.

    CSV/TSV files have a header naming `text_column` and `label_column`, which is never read as an
    example; a TSV without a header whose first field is a recurring label is the SMS Spam
    Collection layout `label<TAB>text`. Any other first line is refused, naming the columns
    expected. JSONL lines are objects with those two keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Classification file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records = _read_jsonl_records(path, required=(text_column, label_column))
        records = [{"text": r[text_column], "label": str(r[label_column]), "line": r["line"]} for r in records]
    elif suffix in (".csv", ".tsv", ".txt") or suffix == "":
        records = _read_delimited(path, "," if suffix == ".csv" else "\t", text_column, label_column)
    else:
        raise ValueError(f"{path}: unknown classification file type {suffix!r}; use .csv, .tsv or .jsonl.")
    if not records:
        raise ValueError(f"{path} has no examples.")
    return records


def _read_delimited(path: Path, delimiter: str, text_column: str, label_column: str) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(enumerate(csv.reader(handle, delimiter=delimiter), start=1))
    rows = [(n, row) for n, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0][1]]
    if text_column in header and label_column in header:
        text_at, label_at, width, rows = header.index(text_column), header.index(label_column), len(header), rows[1:]
    elif delimiter == "\t" and _is_headerless_label_text(rows, COLUMN_NAMES | {text_column, label_column}):  # SMS Spam Collection: label<TAB>text
        text_at, label_at, width = 1, 0, 2
    else:
        raise ValueError(
            f"{path} line {rows[0][0]}: the header {header} lacks the columns {text_column!r} and "
            f"{label_column!r}; name them in the first line (or pass --text-column/--label-column)."
        )
    records = []
    for line, row in rows:
        # csv.reader counts records, not lines; a quoted field may span lines, which is rare enough
        # that the record number is the line number here.
        if len(row) != width:
            raise ValueError(
                f"{path} line {line}: expected {width} fields separated by {delimiter!r}, found {len(row)}: "
                f"{delimiter.join(row)[:80]!r}. Quote fields that contain the separator."
            )
        text, label = row[text_at], row[label_at].strip()
        if not label:
            raise ValueError(f"{path} line {line}: the label is empty.")
        if not text.strip():
            raise ValueError(f"{path} line {line}: the text is empty.")
        records.append({"text": text, "label": label, "line": line})
    return records


# Column names of common classification files (GLUE, SMS Spam on Kaggle, review sets): a first
# line holding one of them is a header, never an example.
COLUMN_NAMES = {"text", "label", "labels", "sentence", "sentence1", "sentence2", "question", "class", "category",
                "message", "review", "content", "target", "tweet", "document", "id", "idx", "v1", "v2"}


def _is_headerless_label_text(rows: list[tuple[int, list[str]]], column_names) -> bool:
    """Whether a TSV is the SMS Spam Collection layout `label<TAB>text` without a header.

    Not when the first line has other than two fields or names a column, nor when the labels
    below repeat (a label column) but the first line's label is not one of them (a header).
    """
    first = [cell.strip() for cell in rows[0][1]]
    if len(first) != 2 or any(cell.lower() in column_names for cell in first):
        return False
    labels_below = [row[0].strip() for _, row in rows[1:]]
    return first[0] in labels_below or len(set(labels_below)) == len(labels_below)


def _read_jsonl_records(path: Path, required: Sequence[str]) -> list[dict]:
    """Objects of a JSONL file (or a JSON array file), each with its line number under "line"."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        objects = _json_array_with_lines(path, text)
    else:
        objects = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                objects.append((line, json.loads(raw)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {line}: not valid JSON ({error.msg} at column {error.colno}).") from None
    records = []
    for line, obj in objects:
        if not isinstance(obj, dict):
            raise ValueError(f"{path} line {line}: expected a JSON object, found {type(obj).__name__}.")
        missing = [key for key in required if key not in obj or obj[key] is None]
        if missing:
            raise ValueError(
                f"{path} line {line}: the record has no {' or '.join(repr(m) for m in missing)} field "
                f"(it has {sorted(obj)})."
            )
        records.append({**obj, "line": line})
    return records


def _json_array_with_lines(path: Path, text: str) -> list[tuple[int, object]]:
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    objects = []

    def skip(pos):
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    try:
        position = skip(position)
        if text[position] == "]":
            return []
        while True:
            line = text.count("\n", 0, position) + 1
            obj, position = decoder.raw_decode(text, position)
            objects.append((line, obj))
            position = skip(position)
            if text[position] == "]":
                return objects
            if text[position] != ",":
                raise json.JSONDecodeError("Expected ',' or ']'", text, position)
            position = skip(position + 1)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg} at column {error.colno}).") from None
    except IndexError:
        raise ValueError(f"{path}: the JSON array is not closed (missing ']').") from None


def build_label_mapping(labels: Iterable[str]) -> dict[str, int]:
    """label2id over the sorted distinct labels (ids stable whatever the row order)."""
    return {label: i for i, label in enumerate(sorted(set(labels)))}


class ClassificationDataset(TensorDictDataset):
    """Texts with one label each, tokenized and truncated to `max_length`.

    `label2id` defaults to the sorted labels found; pass the training set's mapping to the
    validation and test sets so that a label missing from it is reported.
    """

    def __init__(self, records: Sequence[dict], tokenizer, max_length: int = 256,
                 label2id: dict[str, int] | None = None, source: str = "the data"):
        _check_lengths(max_length)
        if not records:
            raise ValueError(f"{source} has no examples.")
        self.label2id = dict(label2id) if label2id is not None else build_label_mapping(r["label"] for r in records)
        self.id2label = {i: label for label, i in self.label2id.items()}
        for record in records:
            if record["label"] not in self.label2id:
                where = f" line {record['line']}" if "line" in record else ""
                raise ValueError(
                    f"{source}{where}: label {record['label']!r} is not in the label mapping "
                    f"{sorted(self.label2id)}; fix the label or train with a mapping that includes it."
                )
        # With the tokenizer's own special tokens, as the text-classification pipeline encodes:
        # [CLS] ... [SEP] for BERT-style tokenizers (whose heads pool [CLS]), none for GPT-2's.
        encoded = tokenizer([r["text"] for r in records], truncation=True, max_length=max_length, verbose=False)
        rows = []
        for record, ids in zip(records, encoded["input_ids"]):
            ids = ids or [_eos_id(tokenizer)]
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": self.label2id[record["label"]]})
        super().__init__(rows)

    @classmethod
    def from_file(cls, path, tokenizer, max_length: int = 256, label2id=None,
                  text_column: str = "text", label_column: str = "label"):
        records = read_classification_file(path, text_column, label_column)
        return cls(records, tokenizer, max_length, label2id, source=str(path))

    def majority_baseline(self, reference: ClassificationDataset | None = None) -> float:
        """Accuracy on this set of always predicting the most frequent label of `reference` (default: self)."""
        reference = reference or self
        counts = torch.bincount(torch.tensor([r["labels"] for r in reference.rows]), minlength=len(self.label2id))
        majority = int(counts.argmax())
        return sum(r["labels"] == majority for r in self.rows) / len(self.rows)


# ---------------------------------------------------------------------------------------------
# Instruction tuning


def format_alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt up to and including "### Response:\\n" (the response follows): the
    published template with an input when `input` has text, the one without otherwise."""
    if input and input.strip():
        return f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


# The Alpaca format of `format_alpaca_prompt` and `InstructionDataset` as a tokenizer chat template
# (Jinja, rendered by `tokenizer.apply_chat_template`), which `hf-ltg finetune-instruct` saves with
# its checkpoints so that TRL, vLLM and pipelines format conversations the way the model was tuned.
# A user message is the instruction; its optional `input` key is the Alpaca input. The generation
# prompt is "### Response:\n": a user turn with it renders `format_alpaca_prompt`, and a user turn
# followed by an assistant turn renders prompt + response + eos, the text of a training record.
# Every further exchange repeats the whole record format (the model saw one record per sequence).
# A system message replaces the header. The {% generation %} markers around the response and its
# eos let TRL's `assistant_only_loss` train on responses only, like `--mask-prompt`.
ALPACA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(header=none) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.header = messages[0]['content'] -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set input = message['input'] if message['input'] is defined and message['input'] is not none else '' -%}"
    "{%- if input | trim -%}"
    "{{ (ns.header if ns.header is not none else " + repr(ALPACA_HEADER_WITH_INPUT) + ")"
    " + '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Input:\\n' + input + '\\n\\n' }}"
    "{%- else -%}"
    "{{ (ns.header if ns.header is not none else " + repr(ALPACA_HEADER) + ")"
    " + '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '### Response:\\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- elif message['role'] != 'system' or not loop.first -%}"
    "{{ raise_exception('The Alpaca chat template takes a leading system message, then user and assistant "
    "messages; got a ' + message['role'] + ' message at position ' + loop.index0 | string + '.') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
)


def read_instruction_file(path: str | os.PathLike) -> list[dict]:
    """Alpaca records (`instruction`, optional `input`, `output`) from a JSON array or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Instruction file {path} does not exist.")
    records = _read_jsonl_records(path, required=("instruction", "output"))
    if not records:
        raise ValueError(f"{path} has no instruction records.")
    return records


class InstructionDataset(TensorDictDataset):
    """Alpaca-format records as prompt + response + eos, truncated to `max_length`.

    With `mask_prompt`, the prompt's labels are -100, so the loss covers the response and the
    final eos only. The eos is part of every item, so it is learned however the batch is padded.
    A record whose prompt alone fills `max_length` would then have nothing to learn from: it is
    left out and counted in `num_dropped`.
    """

    def __init__(self, records: Sequence[dict], tokenizer, max_length: int = 256, mask_prompt: bool = False,
                 source: str = "the data"):
        _check_lengths(max_length)
        if not records:
            raise ValueError(f"{source} has no instruction records.")
        for index, record in enumerate(records):
            missing = [key for key in ("instruction", "output") if record.get(key) is None]
            if missing:
                where = f"line {record['line']}" if "line" in record else f"record {index}"
                raise ValueError(f"{source} {where}: the record has no {' or '.join(map(repr, missing))} field.")
        eos = _eos_id(tokenizer)
        prompts = _encode(tokenizer, [format_alpaca_prompt(r["instruction"], r.get("input") or "") for r in records])
        responses = _encode(tokenizer, [str(r["output"]) for r in records])
        rows = []
        for prompt, response in zip(prompts, responses):
            ids = (prompt + response + [eos])[:max_length]
            labels = (([IGNORE_INDEX] * len(prompt) if mask_prompt else list(prompt)) + response + [eos])[:max_length]
            if all(label == IGNORE_INDEX for label in labels[1:]):  # the first label is never predicted
                continue
            rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
        self.num_dropped = len(records) - len(rows)
        if not rows:
            raise ValueError(
                f"{source}: with max_length={max_length} and the prompt masked, no record keeps a response token "
                f"(the prompts are longer); raise max_length or do not mask the prompt."
            )
        super().__init__(rows)

    @classmethod
    def from_file(cls, path, tokenizer, max_length: int = 256, mask_prompt: bool = False):
        return cls(read_instruction_file(path), tokenizer, max_length, mask_prompt, source=str(path))


# ---------------------------------------------------------------------------------------------
# Collation


class PaddingCollator:
    """Pads a batch to its longest item: input_ids with `pad_token_id`, attention_mask with 0 and
    token labels with -100. Per-sequence labels are stacked as they are: a class id or a value
    (regression) per sequence, or a float vector per sequence (multi-label classification).

    Items keep their own end-of-text token (datasets append it), so when the pad token is the eos
    token, as in GPT-2, the first eos is still a label while the padding after it is ignored.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("PaddingCollator needs a pad_token_id; set tokenizer.pad_token (e.g. to the eos token).")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        self.pad_token_id, self.padding_side, self.pad_to_multiple_of = pad_token_id, padding_side, pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        batch = {}
        for key in items[0]:
            values = [torch.as_tensor(item[key]) for item in items]
            if values[0].dim() == 0 or (key == "labels" and values[0].is_floating_point()):
                batch[key] = torch.stack(values)  # one label, or one label vector (multi-label), per sequence
                continue
            padded = torch.full((len(items), length), pad_values.get(key, 0), dtype=values[0].dtype)
            for row, value in enumerate(values):
                if self.padding_side == "right":
                    padded[row, : len(value)] = value
                else:
                    padded[row, length - len(value):] = value
            batch[key] = padded
        return batch
