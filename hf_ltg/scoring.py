"""Scoring token sequences: causal log-likelihood and masked pseudo-log-likelihood (PLL).

The causal score of a continuation is log P(continuation | context), one left-to-right forward per
sequence. The masked score is the PLL of Salazar et al. (2020), the way LTG-BERT and the BabyLM
evaluations score a masked LM: each scored token is replaced by the mask token in its own copy of
the sequence, and the log-probability the model gives the original token there is summed. Every
other token stays visible, the context on both sides included. Masked copies of all sequences are
batched together, sorted by length so that a batch holds little padding.

GPT-BERT-style models predict a masked token from the position before it ("masked next-token
prediction"): `next_token=True` reads the prediction for position i at i - 1.

Both functions take any model with the transformers interface (`model(input_ids=...,
attention_mask=...).logits`): a causal LM for `causal_scores`, a masked LM for
`pseudo_log_likelihood_scores`. They pad on the right, so no position shifts.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Score:
    log_likelihood: float  # summed over the scored tokens, natural log
    is_greedy: bool  # every scored token is the model's most probable one where it was predicted
    tokens: int  # how many tokens were scored


def causal_scores(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16,
                  progress: Callable[[int], None] | None = None, max_tokens: int | None = None) -> list[Score]:
    """log P(continuation | context) for each `(context_ids, continuation_ids)` under a causal LM.

    The context must hold at least one token (a BOS token when there is no text before the
    continuation), and the continuation too. `progress(n)` is called after each batch with the number
    of requests it finished. `max_tokens` caps rows x padded length per forward (the logits are that
    many vocabulary-sized rows): long sequences then go fewer to a batch.
    """
    _check_batch_size(batch_size, max_tokens)
    for index, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError(
                f"causal request {index} has {len(context)} context and {len(continuation)} continuation "
                "token(s); both need at least one (start the context with a BOS token)."
            )
    sequences = [[*context, *continuation] for context, continuation in requests]
    scores: list[Score | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(sequences[i]))
    device = _device(model)
    for batch in _batches(order, [len(sequences[i]) - 1 for i in order], batch_size, max_tokens):
        # The last token is never an input: it is only predicted.
        input_ids, attention_mask = _pad([sequences[i][:-1] for i in batch], model, device)
        with torch.no_grad():
            log_probs = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
        for row, i in enumerate(batch):
            context, continuation = requests[i]
            # Position t predicts token t + 1: the continuation is predicted from len(context) - 1 on.
            positions = torch.arange(len(context) - 1, len(sequences[i]) - 1, device=device)
            targets = torch.as_tensor(continuation, device=device)
            scores[i] = _score(log_probs[row, positions], targets)
        if progress:
            progress(len(batch))
    return scores


def pseudo_log_likelihood_scores(model, requests: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
                                 mask_token_id: int, batch_size: int = 64, next_token: bool = False,
                                 progress: Callable[[int], None] | None = None,
                                 max_tokens: int | None = None) -> list[Score]:
    """The PLL of `target_ids` in the sequence `left_ids + target_ids + right_ids` for each
    `(left_ids, target_ids, right_ids)` under a masked LM: one masked copy per target token.

    `left_ids` usually starts with the tokenizer's CLS token (and holds the context), `right_ids`
    holds its SEP token. `next_token=True` reads the prediction for a masked position i at i - 1
    (GPT-BERT's masked next-token convention), so the first target needs a token before it.
    `batch_size` counts masked copies, `max_tokens` caps copies x padded length per forward (as in
    `causal_scores`); `progress(n)` is called with the number of requests whose last copy a batch scored.
    """
    _check_batch_size(batch_size, max_tokens)
    copies = []  # (request index, position of the masked token)
    for index, (left, target, _) in enumerate(requests):
        if not target:
            raise ValueError(f"masked request {index} has no target tokens to score.")
        if next_token and not left:
            raise ValueError(
                f"masked request {index} has no token before its first target; next-token prediction reads the "
                "prediction for position i at i - 1, so start the sequence with the CLS token."
            )
        copies += [(index, len(left) + offset) for offset in range(len(target))]
    sequences = [[*left, *target, *right] for left, target, right in requests]
    copies.sort(key=lambda copy: -len(sequences[copy[0]]))
    remaining = [len(target) for _, target, _ in requests]
    totals = [0.0] * len(requests)
    greedy = [True] * len(requests)
    device = _device(model)
    for batch in _batches(copies, [len(sequences[i]) for i, _ in copies], batch_size, max_tokens):
        input_ids, attention_mask = _pad([sequences[i] for i, _ in batch], model, device)
        rows = torch.arange(len(batch), device=device)
        positions = torch.tensor([position for _, position in batch], device=device)
        targets = input_ids[rows, positions].clone()
        input_ids[rows, positions] = mask_token_id
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        log_probs = logits[rows, positions - 1 if next_token else positions].float().log_softmax(-1)  # [B, V]
        token_log_probs = log_probs.gather(-1, targets[:, None])[:, 0].tolist()
        is_top = (log_probs.argmax(-1) == targets).tolist()
        finished = 0
        for (i, _), value, top in zip(batch, token_log_probs, is_top):
            totals[i] += value
            greedy[i] = greedy[i] and top
            remaining[i] -= 1
            finished += remaining[i] == 0
        if progress and finished:
            progress(finished)
    return [Score(total, top, len(target)) for total, top, (_, target, _) in zip(totals, greedy, requests)]


def causal_prefix(tokenizer) -> list[int]:
    """The token a causal LM conditions a text's first token on: [CLS] for a tokenizer that has one
    (LTG-BERT's family starts every causal training window with it), else BOS, else EOS (GPT-2's
    <|endoftext|>), as lm-eval does."""
    token_id = next((i for i in (getattr(tokenizer, "cls_token_id", None), tokenizer.bos_token_id,
                                 tokenizer.eos_token_id) if i is not None), None)
    if token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has neither a bos_token nor an eos_token; a causal score needs "
                         "one to condition the first token on (set tokenizer.bos_token).")
    return [token_id]


def causal_prompt(tokenizer, text: str) -> list[int]:
    """`text` as a causal LM saw such text in training: `[CLS] tokens` with no closing [SEP] for the
    LTG-BERT family (a tokenizer with a [CLS] token), the tokens alone for GPT (its EOS alone for
    an empty text)."""
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    if getattr(tokenizer, "cls_token_id", None) is not None or not tokens:
        return causal_prefix(tokenizer) + tokens
    return tokens


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] and [SEP] for
    LTG-BERT), which a masked LM saw around every training sequence."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a")["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start:start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain):]
    raise ValueError(f"{type(tokenizer).__name__} encodes 'a' as {framed} with special tokens and {plain} without; "
                     "the text is not a part of the first, so the special tokens around a text are unknown.")


def _batches(items: list, lengths: list[int], batch_size: int, max_tokens: int | None):
    """Consecutive slices of `items` (sorted longest first, so a slice's first length is its padded
    length) of at most `batch_size` items and, with `max_tokens`, at most that many padded tokens."""
    start = 0
    while start < len(items):
        rows = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(1, lengths[start])))
        yield items[start:start + rows]
        start += rows


def _score(log_probs: torch.Tensor, targets: torch.Tensor) -> Score:
    """log_probs [N, V] at the N positions that predict `targets` [N]."""
    total = log_probs.gather(-1, targets[:, None]).sum().item()
    return Score(total, bool((log_probs.argmax(-1) == targets).all()), len(targets))


def _pad(sequences: list[list[int]], model, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] input ids and their attention mask (1 = token, 0 = padding)."""
    pad_token_id = getattr(model.config, "pad_token_id", None) or 0  # masked out; any id in the vocabulary does
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, :len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_batch_size(batch_size, max_tokens=None) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}.")
