"""`token_type_ids`: GPT forwards take them as GPT-2's do, and saved tokenizers return none.

transformers 4.x tokenizers return `token_type_ids` by default, and `generate(**tokenizer(text))`
hands everything to the model, which must take it (GPT-2 does) or generate refuses the call.
"""

import json

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from hf_ltg import (
    LtgGptConfig,
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
)
from hf_ltg.conversion.gpt2 import config_from_gpt2, gpt2_to_ltg_state_dict
from hf_ltg.tokenization import save_tokenizer
from tests.gpt_utils import EOS, VOCAB, randomize_, tiny_gpt2_config

# transformers 4.x's default for every tokenizer class without its own list
TRANSFORMERS_4_INPUT_NAMES = ["input_ids", "token_type_ids", "attention_mask"]


def tiny_gpt(**overrides):
    values = dict(vocab_size=300, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  eos_token_id=0, bos_token_id=0, pad_token_id=0)
    values.update(overrides)
    torch.manual_seed(0)
    return LtgGptForCausalLM(LtgGptConfig(**values)).eval()


def tokenizer_with_token_types(tokenizer):
    """The tokenizer as transformers 4.x builds it: returning `token_type_ids`."""
    tokens = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, model_input_names=TRANSFORMERS_4_INPUT_NAMES,
                                   **tokens)


def test_gpt_generate_takes_everything_a_tokenizer_returns_token_type_ids_included(tiny_tokenizer):
    tokenizer = tokenizer_with_token_types(tiny_tokenizer)
    inputs = tokenizer("The cat sat on the mat", return_tensors="pt")
    assert "token_type_ids" in inputs  # the 4.x situation the issue reproduced
    model = tiny_gpt()
    with torch.no_grad():
        got = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        want = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              max_new_tokens=5, do_sample=False)
    assert torch.equal(got, want)  # off by default: accepted and ignored


@pytest.mark.parametrize("head", [LtgGptForSequenceClassification, LtgGptForTokenClassification])
def test_gpt_classification_heads_accept_and_ignore_token_type_ids_by_default(head):
    torch.manual_seed(0)
    model = head(tiny_gpt().config).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        typed = model(input_ids=ids, token_type_ids=torch.ones_like(ids)).logits
    torch.testing.assert_close(typed, plain, rtol=0, atol=0)


def test_gpt_token_type_embeddings_match_transformers_gpt2():
    """With `token_type_embeddings=True` the ids add wte(token_type_ids), as GPT-2 adds them."""
    torch.manual_seed(0)
    from transformers import GPT2LMHeadModel

    gpt2 = randomize_(GPT2LMHeadModel(tiny_gpt2_config())).eval()
    config = config_from_gpt2(gpt2.config.to_dict(), token_type_embeddings=True, embedding_dropout=0.0,
                              attention_dropout=0.0, hidden_dropout=0.0)
    state, _ = gpt2_to_ltg_state_dict({k.removeprefix("transformer."): v for k, v in gpt2.state_dict().items()},
                                      config.num_hidden_layers)
    ours = LtgGptForCausalLM(config).eval()
    ours.load_state_dict(state, strict=False)
    ours.tie_weights()
    ids = torch.tensor([[1, 2, 3, 4, 5, EOS]])
    types = torch.tensor([[0, 0, 1, 1, VOCAB - 2, 3]])
    with torch.no_grad():
        want = gpt2(input_ids=ids, token_type_ids=types).logits
        got = ours(input_ids=ids, token_type_ids=types).logits
        ignored = LtgGptForCausalLM(config_from_gpt2(gpt2.config.to_dict(), token_type_embeddings=False)).eval()
        ignored.load_state_dict(state, strict=False)
        ignored.tie_weights()
        plain = ignored(input_ids=ids, token_type_ids=types).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (plain - want).abs().max() > 1e-2  # the default really ignores them
    with pytest.raises(ValueError, match=f"token_type_ids contains token id {VOCAB}"):
        ours(input_ids=ids, token_type_ids=torch.full_like(ids, VOCAB))


def test_saved_tokenizers_return_no_token_type_ids_even_with_transformers_4_defaults(tiny_tokenizer, tmp_path,
                                                                                     monkeypatch):
    save_tokenizer(tokenizer_with_token_types(tiny_tokenizer), tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert saved["model_input_names"] == ["input_ids", "attention_mask"]
    # transformers 4.x: the class default names token_type_ids; the saved config must win over it
    monkeypatch.setattr(PreTrainedTokenizerFast, "model_input_names", TRANSFORMERS_4_INPUT_NAMES)
    loaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")
    assert list(loaded("The cat sat")) == ["input_ids", "attention_mask"]


def test_a_converted_gpt2_adds_token_types_as_gpt2_does_and_its_tokenizer_returns_none(tmp_path):
    """`convert --from hf-gpt2` keeps GPT-2's behaviour for explicit token_type_ids; the copied
    tokenizer names no token_type_ids, so a 4.x tokenizer does not add any by itself."""
    from transformers import GPT2LMHeadModel

    from hf_ltg.conversion import convert_from_hf_gpt2

    torch.manual_seed(0)
    gpt2 = randomize_(GPT2LMHeadModel(tiny_gpt2_config())).eval()
    gpt2.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    out = convert_from_hf_gpt2(tmp_path / "gpt2", tmp_path / "out")

    ours = LtgGptForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, EOS]])
    types = torch.tensor([[0, 0, 1, 1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, token_type_ids=types).logits,
                                   gpt2(input_ids=ids, token_type_ids=types).logits, rtol=1e-4, atol=1e-4)
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved["model_input_names"] == ["input_ids", "attention_mask"]
