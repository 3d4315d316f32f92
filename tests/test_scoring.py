"""hf_ltg.scoring: batched, padded scores equal one-sequence-at-a-time loops written here."""

import pytest
import torch
from helpers import REPO
from scoring_reference import causal_log_likelihood, pseudo_log_likelihood
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from hf_ltg.scoring import (
    causal_prefix,
    causal_scores,
    pseudo_log_likelihood_scores,
    special_tokens_around,
)

GPT = REPO / "checkpoints" / "ltg-gpt-lm"
BERT = REPO / "checkpoints" / "ltg-bert-mlm"
TEXTS = ["The cat sat on the mat.", "A language model predicts the next token from the tokens before it.",
         "Norway has fjords.", "Dogs bark."]


def load(folder, auto_class):
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    return tokenizer, auto_class.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


@pytest.mark.parametrize("folder", [GPT, BERT], ids=["ltg_gpt", "ltg_bert"])
def test_causal_scores_of_a_padded_batch_equal_one_sequence_at_a_time(folder):
    tokenizer, model = load(folder, AutoModelForCausalLM)
    # Context lengths 1 (the BOS token alone) to several tokens, so that rows are padded.
    requests = []
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        requests += [(causal_prefix(tokenizer), ids), (causal_prefix(tokenizer) + ids[:3], ids[3:])]
    finished = []

    scores = causal_scores(model, requests, batch_size=3, progress=finished.append)

    assert sum(finished) == len(requests)
    for (context, continuation), score in zip(requests, scores):
        expected, greedy = causal_log_likelihood(model, [*context, *continuation], len(context))
        assert score.log_likelihood == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == greedy and score.tokens == len(continuation)


@pytest.mark.parametrize("next_token", [False, True], ids=["masked", "masked_next_token"])
def test_pseudo_log_likelihoods_of_batched_masked_copies_equal_masking_one_token_at_a_time(next_token):
    tokenizer, model = load(BERT, AutoModelForMaskedLM)
    before, after = special_tokens_around(tokenizer)
    assert (before, after) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])
    requests = []
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        requests += [(before, ids, after), (before + ids[:2], ids[2:4], ids[4:] + after)]
    finished = []

    scores = pseudo_log_likelihood_scores(model, requests, tokenizer.mask_token_id, batch_size=5,
                                          next_token=next_token, progress=finished.append)

    assert sum(finished) == len(requests)
    for (left, target, right), score in zip(requests, scores):
        positions = range(len(left), len(left) + len(target))
        expected, greedy = pseudo_log_likelihood(model, [*left, *target, *right], positions, tokenizer.mask_token_id,
                                    shift=int(next_token))
        assert score.log_likelihood == pytest.approx(expected, abs=1e-4)
        assert score.is_greedy == greedy and score.tokens == len(target)


def test_scores_do_not_depend_on_the_batch_size_or_a_token_budget():
    tokenizer, model = load(BERT, AutoModelForMaskedLM)
    requests = [([1], tokenizer(t, add_special_tokens=False)["input_ids"], [2]) for t in TEXTS]
    one = pseudo_log_likelihood_scores(model, requests, tokenizer.mask_token_id, batch_size=1)
    many = pseudo_log_likelihood_scores(model, requests, tokenizer.mask_token_id, batch_size=64)
    # 20 tokens per forward: one copy of the longest sentence, a few of the shortest.
    budget = pseudo_log_likelihood_scores(model, requests, tokenizer.mask_token_id, batch_size=64, max_tokens=20)
    for other in (many, budget):
        assert [s.log_likelihood for s in one] == pytest.approx([s.log_likelihood for s in other], abs=1e-5)

    causal = load(BERT, AutoModelForCausalLM)[1]
    requests = [([1], ids) for _, ids, _ in requests]
    assert [s.log_likelihood for s in causal_scores(causal, requests, batch_size=1)] == pytest.approx(
        [s.log_likelihood for s in causal_scores(causal, requests, batch_size=64, max_tokens=20)], abs=1e-5)


def test_bad_requests_are_one_line_errors_naming_the_request():
    tokenizer, model = load(BERT, AutoModelForMaskedLM)
    with pytest.raises(ValueError, match="causal request 1 has 0 context"):
        causal_scores(model, [([1], [5]), ([], [5])])
    with pytest.raises(ValueError, match="masked request 0 has no target"):
        pseudo_log_likelihood_scores(model, [([1], [], [2])], tokenizer.mask_token_id)
    with pytest.raises(ValueError, match="no token before its first target"):
        pseudo_log_likelihood_scores(model, [([], [5], [2])], tokenizer.mask_token_id, next_token=True)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        causal_scores(model, [([1], [5])], batch_size=0)


def test_a_masked_next_token_checkpoint_needs_no_shift_its_head_reads_the_position_before():
    from hf_ltg import LtgBertForMaskedLM

    tokenizer, plain = load(BERT, AutoModelForMaskedLM)
    gpt_bert = LtgBertForMaskedLM.from_pretrained(BERT, masked_next_token=True, dtype=torch.float32).eval()
    ids = tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    framed = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]

    [score] = pseudo_log_likelihood_scores(gpt_bert, [(framed[:1], ids, framed[-1:])], tokenizer.mask_token_id)

    # The same weights without the flag, read at the position before each mask (GPT-BERT's convention).
    expected, _ = pseudo_log_likelihood(plain, framed, range(1, len(framed) - 1), tokenizer.mask_token_id, shift=1)
    assert score.log_likelihood == pytest.approx(expected, abs=1e-4)
