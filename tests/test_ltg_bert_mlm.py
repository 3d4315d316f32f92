"""Masked-LM data for LTG-BERT: windows, whole-word and subword masking at 15 % with 80/10/10."""

import pytest
import torch

from hf_ltg.data.masked import MaskedLanguageModelingDataset, MaskingCollator, word_start_table
from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from hf_ltg.tokenization import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Masked language models predict hidden words from their surroundings.",
    "Whole word masking hides every subword of a chosen word together.",
    "Unbelievably, the extraordinary transformation happened overnight.",
] * 10


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(iterator=CORPUS, vocab_size=120, kind="wordpiece", min_frequency=1)


def test_windows_are_cls_tokens_sep_of_at_most_max_length(wordpiece):
    dataset = MaskedLanguageModelingDataset(CORPUS, wordpiece, max_length=16)
    assert len(dataset) > 10
    for item in dataset:
        ids = item["input_ids"].tolist()
        assert ids[0] == wordpiece.cls_token_id and ids[-1] == wordpiece.sep_token_id and len(ids) <= 16
    body = [i for item in dataset for i in item["input_ids"].tolist()[1:-1]]
    assert body == dataset.token_ids


def test_word_starts_follow_the_wordpiece_prefix_and_the_byte_level_space(wordpiece):
    table = word_start_table(wordpiece)
    vocab = wordpiece.get_vocab()
    assert not table[vocab[next(t for t in vocab if t.startswith("##"))]]
    assert table[vocab["the"]] and table[wordpiece.cls_token_id]
    bpe = train_tokenizer(iterator=CORPUS, vocab_size=300, kind="bpe")
    bpe_table = word_start_table(bpe)
    bpe_vocab = bpe.get_vocab()
    assert bpe_table[bpe_vocab["\u0120the"]] and not bpe_table[bpe_vocab["e"]]


@pytest.mark.parametrize("whole_word", [True, False])
def test_fifteen_percent_of_real_tokens_are_chosen_and_split_80_10_10(wordpiece, whole_word):
    dataset = MaskedLanguageModelingDataset(CORPUS * 5, wordpiece, max_length=24)
    collator = MaskingCollator(wordpiece, whole_word=whole_word, generator=torch.Generator().manual_seed(0))
    items = [dataset[i] for i in range(len(dataset))]
    items[0] = {k: v[:7] for k, v in items[0].items()}  # something to pad
    batch = collator(items)
    original = padded_ids(items, wordpiece.pad_token_id)
    chosen = batch["labels"] != -100
    real = (batch["attention_mask"] == 1) & ~torch.isin(original, torch.tensor(wordpiece.all_special_ids))
    assert not (chosen & ~real).any()  # never padding, [CLS] or [SEP]
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert abs(chosen.sum().item() / real.sum().item() - 0.15) < 0.02
    masked = (batch["input_ids"] == wordpiece.mask_token_id) & chosen
    kept = (batch["input_ids"] == original) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.06
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.05  # (+ the rare random draw of itself)
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_whole_word_masking_chooses_every_subword_of_a_word(wordpiece):
    dataset = MaskedLanguageModelingDataset(CORPUS, wordpiece, max_length=64)
    collator = MaskingCollator(wordpiece, whole_word=True, generator=torch.Generator().manual_seed(1))
    items = [dataset[i] for i in range(len(dataset))]
    batch = collator(items)
    starts = word_start_table(wordpiece)
    chosen = batch["labels"] != -100
    original = padded_ids(items, wordpiece.pad_token_id)
    special = torch.isin(original, torch.tensor(wordpiece.all_special_ids))
    continuation = ~starts[original] & (batch["attention_mask"] == 1)
    continuation[:, 1:] &= ~special[:, :-1]  # a window may begin inside a word
    # a continuation is chosen exactly when the token before it is
    assert continuation.any()
    assert torch.equal(chosen[:, 1:][continuation[:, 1:]], chosen[:, :-1][continuation[:, 1:]])


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and lose much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ltg_bert_learns_from_masked_batches(wordpiece, one_thread):
    dataset = MaskedLanguageModelingDataset(CORPUS, wordpiece, max_length=32)
    collator = MaskingCollator(wordpiece, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=len(wordpiece), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=64, position_bucket_size=8,
                           pad_token_id=wordpiece.pad_token_id, mask_token_id=wordpiece.mask_token_id,
                           cls_token_id=wordpiece.cls_token_id, sep_token_id=wordpiece.sep_token_id,
                           unk_token_id=wordpiece.unk_token_id, bos_token_id=None, eos_token_id=None)
    model = LtgBertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = collator([dataset[i] for i in range(16)])
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_collator_rejects_a_tokenizer_without_mask():
    bpe = train_tokenizer(iterator=CORPUS, vocab_size=300, kind="bpe")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        MaskingCollator(bpe)


def padded_ids(items, pad_id):
    length = max(len(item["input_ids"]) for item in items)
    out = torch.full((len(items), length), pad_id)
    for row, item in enumerate(items):
        out[row, : len(item["input_ids"])] = item["input_ids"]
    return out
