"""Masked-language-model data for LTG-BERT: `[CLS] ... [SEP]` windows and a masking collator.

`MaskedLanguageModelingDataset` cuts the token stream of the documents into windows of
`max_length` tokens including `[CLS]` and `[SEP]`. `MaskingCollator` pads a batch and masks 15 %
of its real tokens (whole words or single subwords): of the chosen tokens 80 % become
`[MASK]`, 10 % a random token and 10 % stay, and `labels` hold the original ids there (-100
elsewhere), which is what `LtgBertForMaskedLM` takes. Word boundaries come from the
tokenizer's vocabulary, so the collator needs nothing beyond `input_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .core import IGNORE_INDEX, PaddingCollator, TensorDictDataset, _encode

BYTE_LEVEL_SPACE = "\u0120"  # "Ġ": a byte-level BPE token that begins a word


class MaskedLanguageModelingDataset(TensorDictDataset):
    """Windows `[CLS] tokens [SEP]` of at most `max_length` over the documents joined with `[SEP]`."""

    def __init__(self, documents: Sequence[str], tokenizer, max_length: int = 128, source: str = "the corpus"):
        if not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an integer >= 3 ([CLS], a token, [SEP]), got {max_length!r}.")
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or sep is None:
            raise ValueError("Masked-LM windows need a tokenizer with [CLS] and [SEP] tokens (cls_token, sep_token).")
        texts = [doc for doc in documents if doc.strip()]
        if not texts:
            raise ValueError(f"{source} is empty: it has no text to build masked-LM windows from.")
        ids: list[int] = []
        for doc_ids in _encode(tokenizer, texts, f"tokenizing {source}"):
            if ids:
                ids.append(sep)
            ids.extend(doc_ids)
        self.token_ids = ids
        body = max_length - 2
        rows = []
        for start in range(0, len(ids), body):
            window = [cls, *ids[start:start + body], sep]
            rows.append({"input_ids": window, "attention_mask": [1] * len(window)})
        super().__init__(rows)


def word_start_table(tokenizer) -> torch.Tensor:
    """[vocab] bool: whether a token begins a word (True for special tokens, which are boundaries).

    WordPiece marks continuations with a prefix ("##"); byte-level BPE marks beginnings with "Ġ".
    Otherwise every token counts as a word of its own.
    """
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = tokenizer.get_vocab()
    table = torch.ones(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.bool)
    prefix = model.get("continuing_subword_prefix") or ""
    if model.get("type") == "WordPiece" and prefix:
        for token, index in vocab.items():
            table[index] = not token.startswith(prefix)
    elif any(token.startswith(BYTE_LEVEL_SPACE) for token in vocab):
        for token, index in vocab.items():
            table[index] = token.startswith(BYTE_LEVEL_SPACE)
    for index in tokenizer.all_special_ids:
        table[index] = True
    return table


class MaskingCollator:
    """Pad, then choose `mlm_probability` of each sequence's real tokens for prediction.

    whole_word=True chooses whole words (a word-initial token and its continuations) until the
    budget is reached; whole_word=False chooses single subwords. Chosen tokens become `[MASK]`
    (80 %), a random non-special token (10 %) or stay (10 %). Special tokens are never chosen.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, whole_word: bool = True,
                 mask_replace: float = 0.8, random_replace: float = 0.1, pad_to_multiple_of: int | None = None,
                 generator: torch.Generator | None = None):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}.")
        if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1:
            raise ValueError(
                f"mask_replace ({mask_replace}) and random_replace ({random_replace}) must be >= 0 and sum to <= 1."
            )
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("Masked-LM needs a tokenizer with [MASK] and [PAD] tokens (mask_token, pad_token).")
        self.padding = PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)
        self.mask_token_id = tokenizer.mask_token_id
        self.mlm_probability, self.whole_word = mlm_probability, whole_word
        self.mask_replace, self.random_replace = mask_replace, random_replace
        self.generator = generator
        self.word_starts = word_start_table(tokenizer)
        special = torch.zeros(len(self.word_starts), dtype=torch.bool)
        special[tokenizer.all_special_ids] = True
        self.special = special
        self.replacement_ids = torch.nonzero(~special).squeeze(1)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.padding([{k: v for k, v in item.items() if k != "labels"} for item in items])
        input_ids = batch["input_ids"]
        if int(input_ids.max()) >= len(self.special):
            raise ValueError(
                f"input_ids contains token id {int(input_ids.max())} but the tokenizer has {len(self.special)} tokens."
            )
        candidates = batch["attention_mask"].bool() & ~self.special[input_ids]
        chosen = torch.stack([self._choose(ids, row) for ids, row in zip(input_ids, candidates)])

        labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
        action = torch.rand(input_ids.shape, generator=self.generator)
        to_mask = chosen & (action < self.mask_replace)
        to_random = chosen & (action >= self.mask_replace) & (action < self.mask_replace + self.random_replace)
        random_ids = self.replacement_ids[
            torch.randint(len(self.replacement_ids), input_ids.shape, generator=self.generator)
        ]
        input_ids = input_ids.masked_fill(to_mask, self.mask_token_id)
        batch["input_ids"] = torch.where(to_random, random_ids, input_ids)
        batch["labels"] = labels
        return batch

    def _choose(self, ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """[T] bool: the positions of one sequence to predict, about mlm_probability of its candidates."""
        positions = torch.nonzero(candidates).squeeze(1)
        chosen = torch.zeros_like(candidates)
        if len(positions) == 0:
            return chosen
        budget = max(1, round(self.mlm_probability * len(positions)))
        if not self.whole_word:
            order = torch.randperm(len(positions), generator=self.generator)[:budget]
            chosen[positions[order]] = True
            return chosen
        # A word starts at a word-initial token, or where a run of candidates starts.
        starts = self.word_starts[ids[positions]].clone()
        starts[0] = True
        starts[1:] |= positions[1:] != positions[:-1] + 1
        word_of = torch.cumsum(starts.long(), 0) - 1
        words = torch.nonzero(starts).squeeze(1).tolist() + [len(positions)]
        order = torch.randperm(len(words) - 1, generator=self.generator).tolist()
        taken = 0
        for word in order:  # words in random order, skipping those that would overshoot the budget
            size = words[word + 1] - words[word]
            if taken + size > budget:
                continue
            chosen[positions[word_of == word]] = True
            taken += size
            if taken == budget:
                break
        if taken == 0:  # every word is longer than the budget: take one anyway
            chosen[positions[word_of == order[0]]] = True
        return chosen
