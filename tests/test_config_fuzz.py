"""Random, often absurd, config values for both families: every case either gives a model whose forward
pass runs, or a ValueError naming a field that was set; none fails later, inside the model."""

import json
import math
import random
import re
import shutil

import pytest
import torch

from hf_ltg.gpt import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.gpt.configuration_ltg_gpt import ACTIVATIONS
from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM

SEED = 20
CASES = 300
FOLDER_CASES = 40

WRONG_TYPES = ["8", 8.5, None, True, [8], {"n": 8}, math.nan, math.inf]
ABSURD_SIZES = [-1, 0, -(2**70), 2**63, 10**30, *WRONG_TYPES]
ABSURD_PROBABILITIES = [-0.1, 1.0, 1, 2.5, "0.1", None, math.nan, math.inf, [0.1]]
ABSURD_POSITIVE_REALS = [0, -1e-5, "1e-5", None, math.nan, math.inf, -math.inf, [1e-5]]
ABSURD_BOOLS = ["yes", "no", 0, 1, None, [True]]
ABSURD_IDS = [-1, 10**30, "0", 0.0, True, [0, "1"], {"id": 0}]

# field: (valid values, absurd values). Valid sizes keep models tiny; "shape" fields change weight shapes.
GPT_FIELDS = {
    "vocab_size": ([64, 97, 300], ABSURD_SIZES),
    "max_position_embeddings": ([16, 33, 64], ABSURD_SIZES),
    "hidden_size": ([16, 24, 48], ABSURD_SIZES),
    "num_hidden_layers": ([1, 2, 3], ABSURD_SIZES),
    "num_attention_heads": ([1, 2, 3, 4, 8], [5, 7, 16, 32, *ABSURD_SIZES]),
    "intermediate_size": ([None, 1, 8, 100], ABSURD_SIZES),
    "activation": (list(ACTIVATIONS), ["tanhh", "", None, 3, ["gelu"]]),
    "embedding_dropout": ([0.0, 0, 0.5, 0.999], ABSURD_PROBABILITIES),
    "attention_dropout": ([0.0, 0.5, 0.999], ABSURD_PROBABILITIES),
    "hidden_dropout": ([0.0, 0.5], ABSURD_PROBABILITIES),
    "classifier_dropout": ([None, 0.0, 0.3], [p for p in ABSURD_PROBABILITIES if p is not None]),
    "layer_norm_eps": ([1e-5, 1e-12, 1, 0.5], ABSURD_POSITIVE_REALS),
    "initializer_range": ([0.02, 0, 1], [-0.02, "0.02", None, math.nan, math.inf]),
    "qkv_bias": ([True, False], ABSURD_BOOLS),
    "score_bias": ([True, False], ABSURD_BOOLS),
    "tie_word_embeddings": ([True, False], ABSURD_BOOLS),
    "use_cache": ([True, False], ABSURD_BOOLS),
    "bos_token_id": ([None, 0, 63], ABSURD_IDS),
    "eos_token_id": ([None, 0, 63, [0, 5]], [*ABSURD_IDS, []]),
    "pad_token_id": ([None, 0, 63], ABSURD_IDS),
}
GPT_SHAPE_FIELDS = {"vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "qkv_bias", "score_bias"}
GPT_BASE = dict(vocab_size=64, max_position_embeddings=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0,
                pad_token_id=0)

BERT_FIELDS = {
    "vocab_size": ([64, 97, 300], ABSURD_SIZES),
    "hidden_size": ([16, 24, 48], ABSURD_SIZES),
    "num_hidden_layers": ([1, 2, 3], ABSURD_SIZES),
    "num_attention_heads": ([1, 2, 4, 8], [5, 7, 16, 32, *ABSURD_SIZES]),
    "intermediate_size": ([1, 8, 40], ABSURD_SIZES),
    "max_position_embeddings": ([16, 64, 512, 10**6], [1, 2, 5, *ABSURD_SIZES]),
    "position_bucket_size": ([4, 5, 8, 32], [1, 2, 3, *ABSURD_SIZES]),
    "position_layout": (["babylm", "bnc"], ["BNC", "", None, 0, ["bnc"]]),
    "layer_norm_eps": ([1e-7, 1e-12, 1], ABSURD_POSITIVE_REALS),
    "hidden_dropout_prob": ([0.0, 0.5], ABSURD_PROBABILITIES),
    "attention_probs_dropout_prob": ([0.0, 0.5, 0.999], ABSURD_PROBABILITIES),
    "classifier_dropout": ([None, 0.0, 0.3], [p for p in ABSURD_PROBABILITIES if p is not None]),
    "tie_word_embeddings": ([True, False], ABSURD_BOOLS),
    "use_cache": ([True, False], ABSURD_BOOLS),
    **{name: ([None, 0, 5, 63], ABSURD_IDS) for name in ("pad_token_id", "bos_token_id", "eos_token_id",
                                                        "unk_token_id", "cls_token_id", "sep_token_id",
                                                        "mask_token_id")},
}
BERT_SHAPE_FIELDS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "position_bucket_size"}
BERT_BASE = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                 max_position_embeddings=16, position_bucket_size=8, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, pad_token_id=3, bos_token_id=1, eos_token_id=2, unk_token_id=0,
                 cls_token_id=1, sep_token_id=2, mask_token_id=4)

FAMILIES = {
    "ltg_gpt": (LtgGptConfig, LtgGptForCausalLM, GPT_FIELDS, GPT_SHAPE_FIELDS, GPT_BASE),
    "ltg_bert": (LtgBertConfig, LtgBertForMaskedLM, BERT_FIELDS, BERT_SHAPE_FIELDS, BERT_BASE),
}


def random_overrides(rng: random.Random, fields: dict, only_absurd=()) -> dict:
    """One to three fields, each set to a valid or (more often) an absurd value; `only_absurd` fields
    get absurd values only."""
    overrides = {}
    for name in rng.sample(sorted(fields), rng.randint(1, 3)):
        valid, absurd = fields[name]
        overrides[name] = rng.choice(absurd if name in only_absurd or rng.random() < 0.6 else valid)
    return overrides


def assert_names_a_set_field(error: ValueError, config_class, overrides: dict) -> None:
    message = str(error)
    assert "\n" not in message.strip(), message
    assert message.startswith(f"{config_class.__name__}."), message
    assert any(re.search(rf"\b{name}\b", message) for name in overrides), f"{overrides} -> {message}"


def run_forward(model, config) -> None:
    """A forward pass with labels on ids inside the vocabulary: must run and give finite logits' shape."""
    length = min(8, getattr(config, "max_position_embeddings", 8))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (2, length), generator=generator)
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids)
    assert output.logits.shape == (2, length, config.vocab_size)
    assert output.loss is not None


@pytest.mark.parametrize("family", FAMILIES)
def test_random_config_values_build_a_working_model_or_name_the_field(family):
    config_class, model_class, fields, _, base = FAMILIES[family]
    rng = random.Random(SEED)
    outcomes = {"refused": 0, "ran": 0}
    for _ in range(CASES):
        overrides = random_overrides(rng, fields)
        try:
            config = config_class(**{**base, **overrides})
        except ValueError as error:
            assert_names_a_set_field(error, config_class, overrides)
            outcomes["refused"] += 1
            continue
        try:
            run_forward(model_class(config).eval(), config)
        except Exception as error:  # noqa: BLE001 - the finding is which overrides got past validation
            raise AssertionError(f"{overrides} passed validation but the model failed: {error!r}") from error
        outcomes["ran"] += 1
    # Both outcomes are exercised, so the test checks validation and the forward pass alike.
    assert outcomes["refused"] > CASES / 4 and outcomes["ran"] > CASES / 10, outcomes


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folders = {}
    for family, (config_class, model_class, *_, base) in FAMILIES.items():
        folder = tmp_path_factory.mktemp("fuzz") / family
        torch.manual_seed(0)
        model_class(config_class(**base)).save_pretrained(folder)
        folders[family] = folder
    return folders


@pytest.mark.parametrize("family", FAMILIES)
def test_edited_config_json_loads_a_working_model_or_names_the_field(family, saved_models, tmp_path):
    """config.json edited by hand: absurd values anywhere, valid ones only where weight shapes stay."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    config_class, _, fields, shape_fields, _ = FAMILIES[family]
    auto = AutoModelForCausalLM if family == "ltg_gpt" else AutoModelForMaskedLM
    rng = random.Random(SEED)
    outcomes = {"refused": 0, "ran": 0}
    for case in range(FOLDER_CASES):
        overrides = random_overrides(rng, fields, only_absurd=shape_fields)
        folder = tmp_path / f"case{case}"
        shutil.copytree(saved_models[family], folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(overrides)
        (folder / "config.json").write_text(json.dumps(config))
        try:
            model = auto.from_pretrained(folder)
        except ValueError as error:
            assert_names_a_set_field(error, config_class, overrides)
            outcomes["refused"] += 1
            continue
        try:
            run_forward(model.eval(), model.config)
        except Exception as error:  # noqa: BLE001
            raise AssertionError(f"{overrides} loaded but the model failed: {error!r}") from error
        outcomes["ran"] += 1
        shutil.rmtree(folder)
    assert outcomes["refused"] > FOLDER_CASES / 4 and outcomes["ran"] > 0, outcomes
