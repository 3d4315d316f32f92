"""Hybrid (masked + causal) pretraining data for LTG-BERT, as GPT-BERT trains it.

GPT-BERT ("GPT or BERT: why not both?", ltgoslo/gpt-bert, `pretraining/dataset.py` and
`train_10m.py`) trains one stack on two objectives:

- masked: spans of 1-3 tokens are chosen until a share `mask_rate` of the real tokens is reached
  (the share falls linearly from a start to an end value over training: 0.3 -> 0.15); a chosen
  span becomes `[MASK]` (80 %), random tokens (10 %) or stays (10 %), decided once per span;
- causal: the same windows under a causal mask;
- in both, hidden state i predicts token i + 1 (masked next-token prediction, MNTP): the
  prediction for a masked token comes from the position before it.

GPT-BERT gives each GPU one objective (15 of 16 masked); here each batch has one, and a share
`causal_ratio` of the batches, spread evenly, are causal.

`labels` follow the Hugging Face convention of `LtgBertForMaskedLM` with `masked_next_token`
and of `LtgBertForCausalLM`: the label of a token sits at the token's own position (masked mode:
the masked positions; causal mode: every real token) and the loss shifts, so that hidden state
i - 1 predicts label i. Each batch says its mode in a 0-dim bool tensor `causal`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .core import IGNORE_INDEX, PaddingCollator, TensorDictDataset, _encode

OBJECTIVES = ("hybrid", "masked", "causal")
# GPT-BERT's defaults (train_10m.py): 15 of 16 GPUs masked, masking rate 0.3 -> 0.15, spans of
# at most 3 tokens, 10 % random and 10 % kept replacements, and 0.15 for validation.
DEFAULT_CAUSAL_RATIO = 1 / 16
DEFAULT_MASK_RATE_START = 0.3
DEFAULT_MASK_RATE_END = 0.15
DEFAULT_MAX_SPAN_LENGTH = 3
VALIDATION_MASK_RATE = 0.15


def check_causal_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"causal ratio {ratio!r} is outside [0, 1]; it is the share of causal batches "
                         f"(0 = masked only, 1 = causal only, GPT-BERT: {DEFAULT_CAUSAL_RATIO:g}).")
    return float(ratio)


def check_mask_rate(name: str, rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate < 1.0:
        raise ValueError(f"{name} {rate!r} is outside (0, 1); it is the share of tokens masked "
                         f"(GPT-BERT: {DEFAULT_MASK_RATE_START} at the start, {DEFAULT_MASK_RATE_END} at the end).")
    return float(rate)


class HybridDataset(TensorDictDataset):
    """Windows `[CLS] tokens` of at most `max_length` over the documents, each ended by `[SEP]`.

    As in GPT-BERT a window starts with `[CLS]` and has no closing token, so in causal mode
    `[SEP]` is predicted only where a document ends.
    """

    def __init__(self, documents: Sequence[str], tokenizer, max_length: int = 128, source: str = "the corpus"):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise ValueError(f"max_length must be an integer >= 3 ([CLS] and two tokens), got {max_length!r}.")
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls is None or sep is None:
            raise ValueError("Hybrid windows need a tokenizer with [CLS] and [SEP] tokens (cls_token, sep_token).")
        texts = [doc for doc in documents if doc.strip()]
        if not texts:
            raise ValueError(f"{source} is empty: it has no text to build windows from.")
        ids: list[int] = []
        for doc_ids in _encode(tokenizer, texts, f"tokenizing {source}"):
            ids.extend(doc_ids)
            ids.append(sep)
        self.token_ids = ids
        body = max_length - 1
        rows = []
        for start in range(0, len(ids), body):
            window = [cls, *ids[start:start + body]]
            if len(window) > 2:  # [CLS] and one token predict nothing in masked mode worth a batch row
                rows.append({"input_ids": window, "attention_mask": [1] * len(window)})
        super().__init__(rows)


def span_mask(candidates: torch.Tensor, rate: float, max_span_length: int = DEFAULT_MAX_SPAN_LENGTH,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T] bool chosen, [B, T] long span index) for `candidates` [B, T] bool.

    Each row is cut into spans of 1..`max_span_length` positions (uniform); each span draws one
    score, and the spans of lowest score are chosen until `rate` of the row's candidates are
    (rounded at random, at least one): the span that crosses the budget is taken whole, as in
    GPT-BERT, so a row may get up to `max_span_length - 1` more. Non-candidates are never chosen.
    """
    batch, length = candidates.shape
    lengths = torch.randint(1, max_span_length + 1, (batch, length), generator=generator)
    ends = lengths.cumsum(1)  # exclusive end of each span
    positions = torch.arange(length).expand(batch, length).contiguous()
    span = torch.searchsorted(ends, positions, right=True)  # the span each position falls in
    score = torch.rand(batch, length, generator=generator).gather(1, span)
    score = score.masked_fill(~candidates, math.inf)
    count = candidates.sum(1)
    budget = (count.double() * rate + torch.rand(batch, generator=generator, dtype=torch.float64)).long()
    budget = budget.clamp(min=1).minimum(count.clamp(min=1))
    threshold = score.sort(1).values.gather(1, (budget - 1).unsqueeze(1))
    chosen = (score <= threshold) & candidates
    return chosen, span


class HybridCollator:
    """Pads a batch of `HybridDataset` items and makes it a masked or a causal batch (see the module
    docstring). `mode` fixes the objective ("masked" or "causal", e.g. for validation); by default
    the batches mix by `causal_ratio`. The masking rate moves linearly from `mask_rate_start` to
    `mask_rate_end` as `progress` goes from 0 to 1 (a Trainer callback sets it each step)."""

    def __init__(self, tokenizer, causal_ratio: float = DEFAULT_CAUSAL_RATIO,
                 mask_rate_start: float = DEFAULT_MASK_RATE_START, mask_rate_end: float = DEFAULT_MASK_RATE_END,
                 max_span_length: int = DEFAULT_MAX_SPAN_LENGTH, random_replace: float = 0.1, keep: float = 0.1,
                 mode: str | None = None, generator: torch.Generator | None = None):
        self.causal_ratio = check_causal_ratio(causal_ratio)
        self.mask_rate_start = check_mask_rate("mask_rate_start", mask_rate_start)
        self.mask_rate_end = check_mask_rate("mask_rate_end", mask_rate_end)
        if isinstance(max_span_length, bool) or not isinstance(max_span_length, int) or max_span_length < 1:
            raise ValueError(f"max_span_length must be an integer >= 1, got {max_span_length!r}.")
        if random_replace < 0 or keep < 0 or random_replace + keep > 1:
            raise ValueError(f"random_replace ({random_replace}) and keep ({keep}) must be >= 0 and sum to <= 1.")
        if mode not in (None, "masked", "causal"):
            raise ValueError(f"mode must be None (mixed by causal_ratio), 'masked' or 'causal', got {mode!r}.")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("Hybrid batches need a tokenizer with [MASK] and [PAD] tokens (mask_token, pad_token).")
        self.padding = PaddingCollator(tokenizer.pad_token_id)
        self.mask_token_id = tokenizer.mask_token_id
        self.max_span_length, self.random_replace, self.keep = max_span_length, random_replace, keep
        self.mode, self.generator = mode, generator
        vocab_size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[tokenizer.all_special_ids] = True
        self.special = special
        self.replacement_ids = torch.nonzero(~special).squeeze(1)
        self.progress = 0.0
        self.batches = 0  # batches made in mixed mode, for spreading the causal ones evenly
        self.last_mask_rate = None  # the share of real tokens the last masked batch chose

    def mask_rate(self) -> float:
        progress = min(max(self.progress, 0.0), 1.0)
        return self.mask_rate_start + (self.mask_rate_end - self.mask_rate_start) * progress

    def next_is_causal(self) -> bool:
        if self.mode is not None:
            return self.mode == "causal"
        n, self.batches = self.batches, self.batches + 1
        # Batch n is causal when it completes another causal_ratio-th: exactly that share of any run
        # of batches from the start, spread evenly (a ratio of 1/16 makes every 16th batch causal).
        return math.floor((n + 1) * self.causal_ratio + 1e-9) > math.floor(n * self.causal_ratio + 1e-9)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.padding([{k: v for k, v in item.items() if k in ("input_ids", "attention_mask")}
                              for item in items])
        input_ids, real = batch["input_ids"], batch["attention_mask"].bool()
        if int(input_ids.max()) >= len(self.special):
            raise ValueError(
                f"input_ids contains token id {int(input_ids.max())} but the tokenizer has {len(self.special)} tokens."
            )
        causal = self.next_is_causal()
        if causal:
            labels = input_ids.masked_fill(~real, IGNORE_INDEX)
            labels[:, 0] = IGNORE_INDEX  # nothing precedes the first position to predict it from
        else:
            candidates = real & ~self.special[input_ids]
            chosen, span = span_mask(candidates, self.mask_rate(), self.max_span_length, self.generator)
            labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
            action = torch.rand(input_ids.shape, generator=self.generator).gather(1, span)  # one draw per span
            to_random = chosen & (action < self.random_replace)
            to_mask = chosen & (action >= self.random_replace + self.keep)
            random_ids = self.replacement_ids[
                torch.randint(len(self.replacement_ids), input_ids.shape, generator=self.generator)
            ]
            input_ids = torch.where(to_random, random_ids, input_ids.masked_fill(to_mask, self.mask_token_id))
            self.last_mask_rate = float(chosen.sum()) / max(int(candidates.sum()), 1)
        batch["input_ids"], batch["labels"] = input_ids, labels
        batch["causal"] = torch.tensor(causal)
        return batch
