"""CPU generation uses a preallocated (static) KV cache by default: no per-token copy of the whole
cache, and the same greedy tokens as without a cache, as with the dynamic cache, and for a
left-padded row as alone."""

import pytest
import torch
from gpt_utils import randomize_
from transformers.cache_utils import DynamicCache, StaticCache

from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.gpt.modeling_ltg_gpt import CACHE_FIELD, preallocated_cache_on_cpu

GREEDY = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)


def random_model():
    torch.manual_seed(0)
    config = LtgGptConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                          embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0)
    return randomize_(LtgGptForCausalLM(config), seed=0, std=0.3).eval()


def prompt_batch():
    ids = torch.randint(1, 120, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding
    ids[2, :7], mask[2, :7] = 0, 0
    return ids, mask


def generated_cache(model, **kwargs):
    ids, mask = prompt_batch()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, **GREEDY, **kwargs)
    return out.sequences, getattr(out, CACHE_FIELD, None) or getattr(out, "past_key_values", None)


def test_generate_on_cpu_uses_a_static_cache_by_default():
    _, cache = generated_cache(random_model())
    assert isinstance(cache, StaticCache)


def test_default_cache_gives_the_tokens_of_no_cache_and_of_the_dynamic_cache():
    model = random_model()
    static, _ = generated_cache(model)
    dynamic, cache = generated_cache(model, cache_implementation="dynamic")
    uncached, _ = generated_cache(model, use_cache=False)
    assert isinstance(cache, DynamicCache)
    assert static.tolist() == dynamic.tolist() == uncached.tolist()
    assert min(len(set(row[9:].tolist())) for row in static) >= 3  # varied tokens, not one repeated


def test_left_padded_rows_generate_what_they_generate_alone():
    model = random_model()
    batch, _ = generated_cache(model)
    ids, mask = prompt_batch()
    for row, padding in ((1, 4), (2, 7)):
        with torch.no_grad():
            alone = model.generate(ids[row:row + 1, padding:], attention_mask=mask[row:row + 1, padding:], **GREEDY)
        assert alone[0, 9 - padding:].tolist() == batch[row, 9:].tolist()


@pytest.mark.parametrize("choice", [
    dict(cache_implementation="dynamic"), dict(use_cache=False), dict(num_beams=2),
    dict(past_key_values=DynamicCache()),
])
def test_a_callers_cache_choice_is_kept(choice):
    assert preallocated_cache_on_cpu(random_model(), dict(choice)) == choice


def test_a_wrapper_that_prepares_the_step_inputs_keeps_its_own_cache():
    """peft's prompt learning sets its own prepare_inputs_for_generation on the model and builds the cache."""
    model = random_model()
    model.prepare_inputs_for_generation = model.prepare_inputs_for_generation
    assert preallocated_cache_on_cpu(model, {}) == {}
    del model.prepare_inputs_for_generation
    assert preallocated_cache_on_cpu(model, {}) == {"cache_implementation": "static"}


def test_the_cache_receives_the_cache_positions():
    """Static caches of transformers 4.x write where `cache_position` says (later releases count)."""
    seen = []

    class RecordingCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
            seen.append(None if cache_kwargs is None else cache_kwargs["cache_position"].tolist())
            return super().update(key_states, value_states, layer_idx)

    model = random_model()
    ids = torch.randint(1, 120, (1, 5))
    with torch.no_grad():
        model(ids, past_key_values=RecordingCache(), cache_position=torch.arange(5))
    assert seen == [[0, 1, 2, 3, 4]] * model.config.num_hidden_layers
