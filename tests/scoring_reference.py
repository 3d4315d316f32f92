"""Reference scores computed one sequence (and one masked copy) at a time, without padding or batching:
what hf_ltg.scoring, the lm-eval backends and `hf-ltg eval-pairs` are compared with."""

import torch


def causal_log_likelihood(model, ids, first_scored):
    """(sum of log P(ids[t] | ids[:t]) for t >= first_scored, whether each such token is the argmax)."""
    with torch.no_grad():
        log_probs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    scored = range(first_scored, len(ids))
    return (sum(log_probs[t - 1, ids[t]].item() for t in scored),
            all(log_probs[t - 1].argmax().item() == ids[t] for t in scored))


def pseudo_log_likelihood(model, ids, positions, mask_id, shift=0):
    """(sum over `positions` p of log P(ids[p]) read at p - shift with ids[p] replaced by the mask,
    one copy per position; whether each is the argmax there)."""
    total, greedy = 0.0, True
    for p in positions:
        masked = list(ids)
        masked[p] = mask_id
        with torch.no_grad():
            log_probs = model(torch.tensor([masked])).logits[0, p - shift].float().log_softmax(-1)
        total += log_probs[ids[p]].item()
        greedy = greedy and log_probs.argmax().item() == ids[p]
    return total, greedy
