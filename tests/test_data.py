"""Datasets (language modelling, classification, instructions) and the padding collator."""

import json

import pytest
import torch

from hf_ltg.data.core import (
    IGNORE_INDEX,
    ClassificationDataset,
    InstructionDataset,
    LanguageModelingDataset,
    PaddingCollator,
    format_alpaca_prompt,
    from_hf_dataset,
    to_hf_dataset,
)
from hf_ltg.tokenization import train_tokenizer

CORPUS = [
    "The assert statement inserts debugging assertions into a program.",
    "A for loop iterates over the items of a sequence in order.",
    "Spam spam spam! Win a prize now, call today.",
    "Hello, are we still meeting for lunch tomorrow?",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(iterator=CORPUS, vocab_size=300)


def test_language_modeling_windows_join_documents_with_eos_and_cover_every_token(tok):
    docs = ["The assert statement inserts debugging assertions.", "A for loop iterates over items."]
    ds = LanguageModelingDataset(docs, tok, max_length=8, stride=8)
    stream = tok(docs[0])["input_ids"] + [tok.eos_token_id] + tok(docs[1])["input_ids"] + [tok.eos_token_id]
    assert ds.token_ids == stream
    joined = [t for i in range(len(ds)) for t in ds[i]["input_ids"].tolist()]
    assert joined == stream  # stride == max_length: consecutive, no overlap, nothing lost
    for item in (ds[i] for i in range(len(ds))):
        assert set(item) == {"input_ids", "attention_mask", "labels"}
        assert torch.equal(item["labels"], item["input_ids"]) and len(item["input_ids"]) <= 8


def test_language_modeling_windows_overlap_by_max_length_minus_stride(tok):
    ds = LanguageModelingDataset(CORPUS[:4], tok, max_length=10, stride=4)
    ids = ds.token_ids
    assert [ds[i]["input_ids"].tolist() for i in range(3)] == [ids[0:10], ids[4:14], ids[8:18]]
    assert ds[len(ds) - 1]["input_ids"].tolist()[-1] == ids[-1]


def test_language_modeling_bad_input_is_reported(tok, tmp_path):
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        LanguageModelingDataset(CORPUS, tok, max_length=1)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        LanguageModelingDataset(CORPUS, tok, max_length=8, stride=0)
    with pytest.raises(ValueError, match="empty"):
        LanguageModelingDataset(["", "  \n"], tok, max_length=8)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt"):
        LanguageModelingDataset.from_files([tmp_path / "empty.txt"], tok, max_length=8)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        LanguageModelingDataset.from_files([tmp_path / "nope.txt"], tok, max_length=8)


def write_sms(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows))


def test_classification_reads_sms_spam_tsv_csv_and_jsonl_alike(tok, tmp_path):
    rows = [("ham", "Hello, are we still meeting?"), ("spam", "Win a prize now, call today"), ("ham", "See you")]
    write_sms(tmp_path / "sms.tsv", rows)
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f'"{t}",{label}\n' for label, t in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for label, t in rows))
    sets = [ClassificationDataset.from_file(tmp_path / name, tok, max_length=16)
            for name in ("sms.tsv", "d.csv", "d.jsonl")]
    for ds in sets:
        assert ds.label2id == {"ham": 0, "spam": 1} and ds.id2label == {0: "ham", 1: "spam"}
        assert [ds[i]["labels"].item() for i in range(3)] == [0, 1, 0]
        assert ds[1]["input_ids"].tolist() == tok(rows[1][1])["input_ids"]
    assert sets[0].majority_baseline() == pytest.approx(2 / 3)


def test_classification_truncates_to_max_length(tok):
    ds = ClassificationDataset([{"text": " ".join(CORPUS[:8]), "label": "a"}], tok, max_length=5)
    assert len(ds[0]["input_ids"]) == 5 and ds[0]["labels"].dim() == 0


def test_classification_bad_input_names_file_line_and_problem(tok, tmp_path):
    (tmp_path / "bad.csv").write_text('text,label\n"ok",ham\n"too",many,fields\n')
    with pytest.raises(ValueError, match=r"bad.csv line 3: expected 2 fields"):
        ClassificationDataset.from_file(tmp_path / "bad.csv", tok)
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 3: not valid JSON"):
        ClassificationDataset.from_file(tmp_path / "bad.jsonl", tok)
    (tmp_path / "nolabel.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match=r"nolabel.jsonl line 2: the record has no 'label' field"):
        ClassificationDataset.from_file(tmp_path / "nolabel.jsonl", tok)
    write_sms(tmp_path / "val.tsv", [("ham", "hi"), ("eggs", "odd one")])
    with pytest.raises(ValueError, match=r"val.tsv line 2: label 'eggs' is not in the label mapping \['ham', 'spam'\]"):
        ClassificationDataset.from_file(tmp_path / "val.tsv", tok, label2id={"ham": 0, "spam": 1})
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        ClassificationDataset.from_file(tmp_path / "missing.tsv", tok)
    with pytest.raises(ValueError, match="max_length"):
        ClassificationDataset.from_file(tmp_path / "val.tsv", tok, max_length=1)


def test_instruction_items_follow_the_alpaca_format_and_end_with_eos(tok):
    record = {"instruction": "Name a loop.", "input": "Python", "output": "for"}
    prompt = format_alpaca_prompt("Name a loop.", "Python")
    assert prompt == (  # Stanford Alpaca's prompt_input
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nName a loop.\n\n"
        "### Input:\nPython\n\n### Response:\n"
    )
    assert format_alpaca_prompt("Name a loop.", "") == (  # Stanford Alpaca's prompt_no_input
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a loop.\n\n### Response:\n"
    )
    assert format_alpaca_prompt("Name a loop.", "  ") == format_alpaca_prompt("Name a loop.", "")
    item = InstructionDataset([record], tok, max_length=200)[0]
    assert tok.decode(item["input_ids"]) == prompt + "for" + tok.eos_token
    assert torch.equal(item["labels"], item["input_ids"])
    masked = InstructionDataset([record], tok, max_length=200, mask_prompt=True)[0]
    n_prompt = len(tok(prompt)["input_ids"])
    assert (masked["labels"][:n_prompt] == IGNORE_INDEX).all()
    assert tok.decode(masked["labels"][n_prompt:]) == "for" + tok.eos_token
    assert len(InstructionDataset([record], tok, max_length=7)[0]["labels"]) == 7
    short_prompt = {"instruction": "Hi", "output": "for"}
    kept = InstructionDataset([record, short_prompt], tok, max_length=n_prompt - 2, mask_prompt=True)
    assert kept.num_dropped == 1 and len(kept) == 1  # nothing of the first response fits: left out
    with pytest.raises(ValueError, match="no record keeps a response token"):
        InstructionDataset([record], tok, max_length=n_prompt - 2, mask_prompt=True)


def test_instruction_record_without_instruction_or_output_is_reported(tok, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl line 2: the record has no 'output' field"):
        InstructionDataset.from_file(tmp_path / "a.jsonl", tok)
    (tmp_path / "a.json").write_text('[\n  {"instruction": "x", "output": "y"},\n  {"output": "y"}\n]\n')
    with pytest.raises(ValueError, match=r"a.json line 3: the record has no 'instruction' field"):
        InstructionDataset.from_file(tmp_path / "a.json", tok)
    (tmp_path / "b.json").write_text('[\n  {"instruction": "x", "output": "y"}\n  {"output": "y"}\n]\n')
    with pytest.raises(ValueError, match=r"b.json line 3: not valid JSON"):
        InstructionDataset.from_file(tmp_path / "b.json", tok)


def test_collator_pads_dynamically_and_keeps_only_the_first_eos_as_label(tok):
    records = [{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say a long greeting.", "output": "hello"}]
    ds = InstructionDataset(records, tok, max_length=200)
    batch = PaddingCollator(tok.pad_token_id)([ds[0], ds[1]])
    short, long_ = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert batch["input_ids"].shape == (2, max(short, long_))
    eos = tok.eos_token_id
    row = 0 if short < long_ else 1
    n = min(short, long_)
    assert batch["labels"][row, n - 1] == eos  # the item's own eos is learned
    assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and (batch["input_ids"][row, n:] == eos).all()
    assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (max(short, long_) - n)
    cls = ClassificationDataset([{"text": "a b c", "label": "x"}, {"text": "a", "label": "y"}], tok)
    cls_batch = PaddingCollator(tok.pad_token_id)([cls[0], cls[1]])
    assert cls_batch["labels"].tolist() == [0, 1]


def test_datasets_convert_to_and_from_hf_datasets(tok):
    ds = LanguageModelingDataset(CORPUS[:4], tok, max_length=8)
    hf = to_hf_dataset(ds)
    assert hf.column_names == ["input_ids", "attention_mask", "labels"] and len(hf) == len(ds)
    back = from_hf_dataset(hf)
    assert all(torch.equal(back[i]["input_ids"], ds[i]["input_ids"]) for i in range(len(ds)))


def test_a_glue_style_tsv_header_is_never_an_example(tok, tmp_path):
    rows = "".join(f"{text}\t{label}\n" for text, label in [("hide new secretions", 0), ("a charming film", 1)] * 3)
    (tmp_path / "sst2.tsv").write_text("sentence\tlabel\n" + rows)
    with pytest.raises(ValueError, match=r"sst2.tsv line 1: the header \['sentence', 'label'\] lacks the columns "
                                         r"'text' and 'label'.*--text-column/--label-column"):
        ClassificationDataset.from_file(tmp_path / "sst2.tsv", tok)

    ds = ClassificationDataset.from_file(tmp_path / "sst2.tsv", tok, text_column="sentence")
    assert len(ds) == 6 and ds.label2id == {"0": 0, "1": 1}
    assert ds[0]["input_ids"].tolist() == tok("hide new secretions")["input_ids"]


def test_a_tsv_header_with_unknown_names_over_sms_rows_is_refused_not_read(tok, tmp_path):
    write_sms(tmp_path / "sms.tsv", [("kind", "words"), ("ham", "see you"), ("spam", "win now"), ("ham", "ok")])
    with pytest.raises(ValueError, match=r"sms.tsv line 1: the header \['kind', 'words'\] lacks the columns"):
        ClassificationDataset.from_file(tmp_path / "sms.tsv", tok)


def test_a_headerless_sms_spam_tsv_keeps_its_first_line_as_an_example(tok, tmp_path):
    write_sms(tmp_path / "sms.tsv", [("ham", "see you"), ("spam", "win now"), ("ham", "ok")])
    ds = ClassificationDataset.from_file(tmp_path / "sms.tsv", tok)
    assert len(ds) == 3 and [ds[i]["labels"].item() for i in range(3)] == [0, 1, 0]
