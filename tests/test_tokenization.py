"""Training, saving and loading tokenizers."""

import json

import pytest

from hf_ltg.tokenization import (
    ENDOFTEXT,
    check_tokenizer_fits,
    load_gpt2_tokenizer,
    load_tokenizer,
    train_tokenizer,
)
from tests.helpers import run_without_hf_ltg

CORPUS = [
    "The assert statement inserts debugging assertions into a program.",
    "A for loop iterates over the items of a sequence in order.",
    "The while statement repeats a block as long as an expression is true.",
] * 20


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(iterator=CORPUS, vocab_size=300, model_max_length=64)


def test_bpe_tokenizer_round_trips_text_and_has_endoftext_as_every_special_token(bpe):
    text = "The assert statement, über-fast\n\tand a for loop."
    ids = bpe(text)["input_ids"]
    assert bpe.decode(ids) == text  # byte-level: nothing is unknown
    assert len(bpe) <= 300
    eos = bpe.convert_tokens_to_ids(ENDOFTEXT)
    assert bpe.eos_token_id == bpe.bos_token_id == bpe.pad_token_id == eos
    assert bpe(f"a{ENDOFTEXT}b")["input_ids"].count(eos) == 1
    assert bpe.model_max_length == 64


def test_tokenizer_trains_from_files_like_from_an_iterator(tmp_path, bpe):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    from_files = train_tokenizer(files=[path], vocab_size=300)
    assert from_files("The while statement")["input_ids"] == bpe("The while statement")["input_ids"]


def test_saved_tokenizer_loads_with_auto_tokenizer_without_hf_ltg(tmp_path, bpe):
    bpe.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    out = run_without_hf_ltg(
        """
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(CKPT)
        print(tok("The assert statement")["input_ids"], tok.eos_token)
        """,
        tmp_path / "tok",
        tmp_path,
    )
    assert out.split("] ")[0] + "]" == str(bpe("The assert statement")["input_ids"])
    assert out.strip().endswith(ENDOFTEXT)


def test_wordpiece_tokenizer_has_bert_special_tokens_and_template():
    wp = train_tokenizer(iterator=CORPUS, vocab_size=200, kind="wordpiece")
    ids = wp("The assert statement")["input_ids"]
    assert ids[0] == wp.cls_token_id and ids[-1] == wp.sep_token_id
    assert None not in (wp.pad_token_id, wp.mask_token_id, wp.unk_token_id)
    assert wp.decode(ids, skip_special_tokens=True) == "The assert statement"


@pytest.mark.parametrize("layout", ["vocab+merges", "tokenizer.json"])
def test_gpt2_tokenizer_loads_from_vocab_and_merges_or_tokenizer_json(tmp_path, bpe, layout):
    if layout == "vocab+merges":
        bpe.backend_tokenizer.model.save(str(tmp_path))
        loaded = load_gpt2_tokenizer(tmp_path)
    else:
        bpe.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
        loaded = load_gpt2_tokenizer(tmp_path / "tokenizer.json")
    text = "The for loop, repeated  twice.\n"
    assert loaded(text)["input_ids"] == bpe(text)["input_ids"]
    assert loaded.eos_token == ENDOFTEXT and loaded.decode(loaded(text)["input_ids"]) == text
    assert load_tokenizer(tmp_path)(text)["input_ids"] == bpe(text)["input_ids"]


def test_bad_tokenizer_input_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(files=[tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(files=[tmp_path / "empty.txt"])
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(iterator=["", " "])
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(iterator=CORPUS, vocab_size=100)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_gpt2_tokenizer(tmp_path)


def test_tokenizer_larger_than_the_model_vocabulary_is_rejected(bpe):
    from hf_ltg.gpt.configuration_ltg_gpt import LtgGptConfig

    check_tokenizer_fits(bpe, LtgGptConfig(vocab_size=len(bpe), bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match=f"{len(bpe)} tokens but the model's vocab_size is 100"):
        check_tokenizer_fits(bpe, LtgGptConfig(vocab_size=100, bos_token_id=0, eos_token_id=0))
