"""Causal prompts for LTG-BERT-family causal LMs are shaped as in (hybrid) training: `[CLS] tokens`.

GPT-BERT's causal windows (`hf_ltg.data.hybrid.HybridDataset`) start with [CLS] and have [SEP] only
where a document ends. The tokenizer ends every text with [SEP], so the text-generation pipeline
and `generate(**tokenizer(text))` would continue after the end of a document, and a prompt without
[CLS] is a shape the model never saw either.
"""

import pytest
import torch
import transformers

from hf_ltg import LtgBertConfig, LtgBertForCausalLM
from hf_ltg.data.hybrid import HybridDataset
from hf_ltg.scoring import causal_prefix, causal_prompt
from hf_ltg.tokenization import train_tokenizer
from hf_ltg.training import generate_text
from tests.conftest import CORPUS

PROMPT, CONTINUATION = "The cat sat on the", " mat and the dog sat on the log."


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iterator=CORPUS, vocab_size=300, kind="wordpiece")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=64, position_bucket_size=16,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                           bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    return LtgBertForCausalLM(config).eval()


def training_window(tokenizer, text):
    """The causal training example of a one-document corpus holding `text`."""
    return HybridDataset([text], tokenizer, max_length=64)[0]["input_ids"].tolist()


def prefill_inputs(model, run):
    """The input ids of the first forward (the prompt) that `run()` makes the model see."""
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs.get("input_ids")),
                                           with_kwargs=True)
    try:
        result = run()
    finally:
        hook.remove()
    return seen[0][0].tolist(), result


def continuation_loss(model, prompt_ids, continuation_ids):
    """Mean next-token loss of the true continuation after `prompt_ids`."""
    ids = torch.tensor([prompt_ids + continuation_ids])
    labels = ids.clone()
    labels[:, :len(prompt_ids)] = -100
    with torch.no_grad():
        return model(input_ids=ids, labels=labels).loss.item()


def test_pipeline_conditions_on_the_prompt_as_training_shaped_it(model, tokenizer):
    prompt_tokens = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    continuation = tokenizer(CONTINUATION, add_special_tokens=False)["input_ids"]
    window = training_window(tokenizer, PROMPT + CONTINUATION)
    assert window[:1 + len(prompt_tokens) + len(continuation)] == [tokenizer.cls_token_id, *prompt_tokens, *continuation]
    trained_prompt = window[:1 + len(prompt_tokens)]  # [CLS] and the prompt's tokens, no [SEP]

    generator = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    seen, result = prefill_inputs(model, lambda: generator(PROMPT, max_new_tokens=3, do_sample=False))
    assert seen == trained_prompt
    assert result[0]["generated_text"].startswith(tokenizer.decode(prompt_tokens))
    # the loss of the true next tokens after the pipeline's prompt is training's
    assert continuation_loss(model, seen, continuation) == pytest.approx(
        continuation_loss(model, trained_prompt, continuation), abs=1e-6)
    assert continuation_loss(model, trained_prompt + [tokenizer.sep_token_id], continuation) != pytest.approx(
        continuation_loss(model, trained_prompt, continuation), abs=1e-6)  # what the closing [SEP] changed


def test_generate_on_the_tokenizer_output_skips_the_closing_sep_and_returns_the_prompt_as_given(model, tokenizer):
    inputs = tokenizer([PROMPT], return_tensors="pt")
    assert inputs["input_ids"][0, -1] == tokenizer.sep_token_id  # the tokenizer's shape
    settings = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    seen, output = prefill_inputs(model, lambda: model.generate(**inputs, **settings))
    assert seen == inputs["input_ids"][0, :-1].tolist()
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])  # slicing still works
    shaped = torch.tensor([causal_prompt(tokenizer, PROMPT)])
    expected = model.generate(shaped, attention_mask=torch.ones_like(shaped), **settings)
    assert torch.equal(output[:, inputs["input_ids"].shape[1]:], expected[:, shaped.shape[1]:])
    # the dict output and beams keep the same shape
    beams = model.generate(**inputs, max_new_tokens=2, num_beams=2, num_return_sequences=2, do_sample=False,
                           return_dict_in_generate=True)
    assert beams.sequences.shape == (2, inputs["input_ids"].shape[1] + 2)
    assert (beams.sequences[:, inputs["input_ids"].shape[1] - 1] == tokenizer.sep_token_id).all()


def test_hf_ltg_generate_and_scores_start_with_cls(model, tokenizer):
    prompt_tokens = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    seen, _ = prefill_inputs(model, lambda: generate_text(model, tokenizer, PROMPT, max_new_tokens=2, temperature=0))
    assert seen == [tokenizer.cls_token_id, *prompt_tokens]
    assert causal_prompt(tokenizer, "") == [tokenizer.cls_token_id]
    # eval-pairs' causal scores condition on [CLS], even for a tokenizer saved without a BOS token
    no_bos = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                                 eos_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", unk_token="[UNK]")
    assert no_bos.bos_token_id is None
    assert causal_prefix(no_bos) == [tokenizer.cls_token_id]


def test_gpt_prompts_keep_their_shape(tiny_tokenizer):
    tokens = tiny_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert causal_prompt(tiny_tokenizer, PROMPT) == tokens  # GPT-2: no prefix for a text
    assert causal_prompt(tiny_tokenizer, "") == [tiny_tokenizer.eos_token_id]


def test_closing_sep_is_found_where_transformers_4_dropped_it_from_the_config(model, tokenizer):
    """transformers 4.x's PretrainedConfig resets sep_token_id to None; generation_config.json keeps
    the end-of-text id, which is the [SEP] to skip."""
    inputs = tokenizer([PROMPT], return_tensors="pt")
    model.config.sep_token_id = None
    model.generation_config.eos_token_id = tokenizer.sep_token_id
    try:
        seen, _ = prefill_inputs(model, lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False))
    finally:
        model.config.sep_token_id = tokenizer.sep_token_id
    assert seen == inputs["input_ids"][0, :-1].tolist()


def test_lm_eval_ltg_causal_scores_continuations_after_cls_and_the_context(model, tokenizer):
    """lm-eval's `hf` model would score `[CLS] context [SEP]`-shifted tokens; `ltg-causal` scores the
    continuation after `[CLS] context`, as training shaped it (and as eval-pairs does)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    import hf_ltg.lm_eval  # noqa: F401 - registers ltg-causal
    from hf_ltg.scoring import causal_scores

    lm = get_model("ltg-causal")(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=2, device="cpu")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(PROMPT, CONTINUATION), idx=0),
                Instance(request_type="loglikelihood", doc={}, arguments=("", PROMPT), idx=1)]
    got = [log_likelihood for log_likelihood, _ in lm.loglikelihood(requests)]
    context = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    continuation = tokenizer(CONTINUATION, add_special_tokens=False)["input_ids"]
    want = causal_scores(model, [([tokenizer.cls_token_id, *context], continuation),
                                 ([tokenizer.cls_token_id], context)])
    assert got == pytest.approx([score.log_likelihood for score in want], abs=1e-4)
    rolling = lm.loglikelihood_rolling([Instance(request_type="loglikelihood_rolling", doc={}, arguments=(PROMPT,),
                                                 idx=0)])
    assert rolling[0] == pytest.approx(want[1].log_likelihood, abs=1e-4)
