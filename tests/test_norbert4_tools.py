"""NorBERT4 with hf_ltg's tools: ONNX export with the KV cache, doctor, the model card, lm-eval (the stock `hf`
route and the masked PLL `ltg-mlm` route), eval-pairs, peft's methods with their default targets, and
`hf-ltg pretrain --family norbert4`.

The model is tiny and random, with windows of 3 (local) and 6 (global) tokens, so that every input here
crosses them, and keys (8) and values (12) of different widths per head, neither hidden_size / heads.
What the model computes is checked against the release in tests/test_norbert4.py; here the tools are
checked against the model run directly (and the masked scores against the release's convention: hidden
state i - 1 predicts token i).
"""

import json

import numpy as np
import pytest
import torch
from scoring_reference import causal_log_likelihood, pseudo_log_likelihood

from hf_ltg.checkpoint import save_checkpoint
from hf_ltg.cli import main
from hf_ltg.norbert4 import (
    Norbert4Config,
    Norbert4ForCausalLM,
    Norbert4ForMaskedLM,
    Norbert4ForQuestionAnswering,
    Norbert4ForSequenceClassification,
    Norbert4ForTokenClassification,
)

TEXTS = ["The cat sat on the mat.", "A language model predicts the next token.", "Norway has fjords and mountains.",
         "The dog sat on the log.", "Hugging Face pipelines load models."] * 6
LABELS = {0: "NEG", 1: "POS", 2: "NEU"}


@pytest.fixture(scope="module")
def tokenizer():
    from hf_ltg.tokenization import train_tokenizer

    return train_tokenizer(iterator=TEXTS, vocab_size=120, kind="wordpiece", min_frequency=1)


def tiny_config(tokenizer, **overrides) -> Norbert4Config:
    values = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=2,
        query_key_head_size=8, value_head_size=12, max_position_embeddings=64, local_global_ratio=2,
        global_window_length=6, local_window_length=3, embedding_dropout=0.0, classifier_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, unk_token_id=tokenizer.unk_token_id, bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
        num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )
    values.update(overrides)
    return Norbert4Config(**values)


def random_model(model_class, tokenizer, seed=0, **overrides):
    """Every parameter away from its initial value: mixing weights around the release's start, the rest random."""
    torch.manual_seed(seed)
    model = model_class(tiny_config(tokenizer, **overrides)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(param + 0.3 * noise if "lambdas" in name else 0.3 * noise)
    return model


def saved(folder, model, tokenizer):
    save_checkpoint(model, folder, tokenizer=tokenizer)
    return folder


def left_padded_batch(tokenizer, length=7):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, len(tokenizer), (2, length), generator=generator)
    input_ids[:, 0] = tokenizer.cls_token_id
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = tokenizer.pad_token_id, 0
    input_ids[0, 3] = tokenizer.cls_token_id
    return input_ids, attention_mask


# ------------------------------------------------------------------ ONNX

def greedy_with_onnx_cache(folder, input_ids, attention_mask, steps):
    """Greedy decoding as ONNX Runtime GenAI runs a graph: the prompt with an empty past, then one token per
    step with the presents fed back (keys and values each with their own head width)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"))
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    batch = input_ids.shape[0]
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    feeds.update({i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32) for i in past})
    mask, tokens = attention_mask.numpy(), []
    for _ in range(steps):
        logits, *present = session.run(None, feeds)
        next_ids = logits[:, -1].argmax(-1)
        tokens.append(next_ids)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        feeds = {"input_ids": next_ids[:, None].astype(np.int64), "attention_mask": mask}
        feeds.update(dict(zip([i.name for i in past], present)))
    return np.stack(tokens, axis=1)


def test_onnx_greedy_decoding_with_cache_matches_torch_generate_across_the_windows(tmp_path, tokenizer):
    ort = pytest.importorskip("onnxruntime")
    from test_export_onnx import assert_same_tokens_up_to_eos, torch_greedy

    from hf_ltg.hub.export_onnx import cache_names

    saved(tmp_path / "ckpt", random_model(Norbert4ForMaskedLM, tokenizer), tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "onnx"), "--task", "causal-lm"]) == 0

    folder = tmp_path / "onnx"
    model = Norbert4ForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    session = ort.InferenceSession(str(folder / "model.onnx"))
    past, present = cache_names(model.config.num_hidden_layers)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", *past]
    assert [o.name for o in session.get_outputs()] == ["logits", *present]
    shapes = {i.name: i.shape for i in session.get_inputs()}
    assert shapes["past_key_values.0.key"] == ["batch_size", 2, "past_sequence_length", 8]
    assert shapes["past_key_values.0.value"] == ["batch_size", 2, "past_sequence_length", 12]
    assert not (folder / "genai_config.json").exists()  # GenAI's decoder takes one head width for keys and values

    input_ids, attention_mask = left_padded_batch(tokenizer)
    steps = 9  # 7 + 9 tokens: past both windows
    got = greedy_with_onnx_cache(folder, input_ids, attention_mask, steps=steps)
    want = torch_greedy(model, input_ids, attention_mask, steps=steps)
    assert_same_tokens_up_to_eos(got, want, model.config.eos_token_id)
    alone = greedy_with_onnx_cache(folder, input_ids[:1, 3:], attention_mask[:1, 3:], steps=steps)
    assert_same_tokens_up_to_eos(alone, want[:1], model.config.eos_token_id)


def test_onnx_runtime_genai_generates_torch_greedy_tokens_from_the_export(tmp_path, tokenizer):
    og = pytest.importorskip("onnxruntime_genai")
    from test_export_onnx import assert_same_tokens_up_to_eos, torch_greedy

    from hf_ltg.hub.export_onnx import export_onnx

    model = random_model(Norbert4ForCausalLM, tokenizer, value_head_size=8)  # one head width: GenAI can run it
    export_onnx(saved(tmp_path / "ckpt", model, tokenizer), tmp_path / "onnx")
    genai = json.loads((tmp_path / "onnx" / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["head_size"] == 8 and genai["num_hidden_layers"] == 4
    prompt = torch.tensor([[tokenizer.cls_token_id, *tokenizer("the cat sat on the mat",
                                                                add_special_tokens=False)["input_ids"]]])

    genai_model = og.Model(str(tmp_path / "onnx"))
    params = og.GeneratorParams(genai_model)
    params.set_search_options(do_sample=False, max_length=prompt.shape[1] + 10)  # past both windows
    generator = og.Generator(genai_model, params)
    generator.append_tokens(prompt.numpy().astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    got = np.array(generator.get_sequence(0), dtype=np.int64)[None, prompt.shape[1]:]

    want = torch_greedy(model, prompt, torch.ones_like(prompt), steps=10)
    assert_same_tokens_up_to_eos(got, want, model.config.eos_token_id)


@pytest.mark.parametrize("head", [Norbert4ForMaskedLM, Norbert4ForTokenClassification,
                                  Norbert4ForSequenceClassification], ids=lambda c: c.__name__)
def test_onnx_logits_graphs_match_torch(tmp_path, tokenizer, head):
    ort = pytest.importorskip("onnxruntime")
    from hf_ltg.hub.export_onnx import export_onnx

    model = random_model(head, tokenizer)
    saved(tmp_path / "ckpt", model, tokenizer)

    export_onnx(tmp_path / "ckpt", tmp_path / "onnx")

    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(5, len(tokenizer), (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (logits,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        want = model(input_ids, attention_mask=attention_mask).logits
    keep = attention_mask.bool() if want.ndim == 3 else torch.ones(3, dtype=torch.bool)
    np.testing.assert_allclose(logits[keep.numpy()], want[keep].numpy(), rtol=0, atol=1e-4)


# ------------------------------------------------------------------ doctor, model card

def test_doctor_passes_on_a_saved_norbert4_folder(tmp_path, tokenizer, capsys):
    saved(tmp_path / "ckpt", random_model(Norbert4ForMaskedLM, tokenizer), tokenizer)

    assert main(["doctor", str(tmp_path / "ckpt")]) == 0

    out = capsys.readouterr().out
    assert "FAIL" not in out and "pipeline fill-mask" in out and "pipeline text-generation" in out


def test_the_model_card_says_how_masked_positions_line_up_and_where_windows_end(tmp_path, tokenizer):
    saved(tmp_path / "ckpt", random_model(Norbert4ForMaskedLM, tokenizer), tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0

    card = (tmp_path / "out" / "README.md").read_text()
    assert "NorBERT4" in card and "pipeline_tag: fill-mask" in card
    assert "the logits at position i are the prediction for token i (made from position i - 1)" in card
    assert "Every 2nd layer is global (window w = 6 tokens), the others local (w = 3)" in card
    assert "its flash-attn path, which trained the model, keeps |i - j| <= w - 1" in card
    assert "This folder's setting: `flash`, |i - j| <= w - 1" in card
    assert 'pipeline("text-generation"' in card  # the same weights in causal mode
    # what the card says to do reaches the padded path, and it changes long inputs only
    flash = Norbert4ForMaskedLM.from_pretrained(tmp_path / "out").eval()
    padded = Norbert4ForMaskedLM.from_pretrained(tmp_path / "out", window_edge="padded").eval()
    assert padded.config.window_edge == "padded"
    short, long = torch.randint(5, len(tokenizer), (1, 3)), torch.randint(5, len(tokenizer), (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(flash(short).logits, padded(short).logits)
        assert (flash(long).logits - padded(long).logits).abs().max() > 1e-3


def test_the_card_of_a_classifier_states_the_windows_of_its_setting(tmp_path, tokenizer):
    model = random_model(Norbert4ForSequenceClassification, tokenizer, window_edge="padded", local_global_ratio=1)
    saved(tmp_path / "ckpt", model, tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0

    card = (tmp_path / "out" / "README.md").read_text()
    assert "Every layer is global (window w = 6 tokens)." in card
    assert "This folder's setting: `padded`, |i - j| <= w." in card
    assert "## Masked and causal mode" not in card  # a classifier's weights are not the language model's


# ------------------------------------------------------------------ lm-eval, eval-pairs

PAIRS = [("The cat sat on the", " mat."), ("Norway has", " fjords and mountains."), ("A", " dog sat on the log.")]


def release_style_masked_lm(model):
    """The masked LM as the release's hidden states predict: logits at i for token i + 1, not shifted back."""
    class Unshifted(torch.nn.Module):
        def forward(self, input_ids):
            hidden = model.norbert4(input_ids).last_hidden_state
            return type("Output", (), {"logits": model.lm_head(hidden)})

    return Unshifted()


def split_pair(tokenizer, context, continuation):
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert whole[:len(context_ids)] == context_ids
    return context_ids, whole[len(context_ids):]


def lm_eval_requests(arguments):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=args, idx=0) for args in arguments]


@pytest.fixture(scope="module")
def lm_folder(tokenizer, tmp_path_factory):
    return saved(tmp_path_factory.mktemp("norbert4") / "ckpt", random_model(Norbert4ForMaskedLM, tokenizer), tokenizer)


def test_ltg_mlm_route_scores_pseudo_log_likelihoods_with_the_releases_next_token_alignment(lm_folder, tokenizer):
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    import hf_ltg.lm_eval  # noqa: F401  (registers ltg-mlm)

    lm = get_model("ltg-mlm")(pretrained=str(lm_folder), batch_size=5, device="cpu")
    got = lm.loglikelihood(lm_eval_requests(PAIRS))

    model = Norbert4ForMaskedLM.from_pretrained(lm_folder).eval()
    release = release_style_masked_lm(model)
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    for (context, continuation), (log_likelihood, _) in zip(PAIRS, got):
        context_ids, continuation_ids = split_pair(tokenizer, context, continuation)
        ids = [cls, *context_ids, *continuation_ids, sep]
        positions = range(1 + len(context_ids), 1 + len(context_ids) + len(continuation_ids))
        # the mask's own position in our masked LM = the position before it in the release's hidden states
        assert log_likelihood == pytest.approx(pseudo_log_likelihood(release, ids, positions, mask, shift=1)[0],
                                               abs=1e-4)
        assert log_likelihood == pytest.approx(pseudo_log_likelihood(model, ids, positions, mask)[0], abs=1e-4)


def test_stock_hf_route_scores_the_causal_mode(lm_folder, tokenizer):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(lm_folder), trust_remote_code=True, dtype="float32", batch_size=3, device="cpu",
              add_bos_token=False)
    assert type(lm.model).__name__ == "Norbert4ForCausalLM"
    got = lm.loglikelihood(lm_eval_requests(PAIRS))

    model = Norbert4ForCausalLM.from_pretrained(lm_folder).eval()
    for (context, continuation), (log_likelihood, greedy) in zip(PAIRS, got):
        context_ids, continuation_ids = split_pair(tokenizer, context, continuation)
        expected, expected_greedy = causal_log_likelihood(model, context_ids + continuation_ids, len(context_ids))
        assert log_likelihood == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy


def test_eval_pairs_scores_both_modes_as_each_sentence_alone(lm_folder, tokenizer, tmp_path):
    from test_eval_pairs import PAIRS as SENTENCE_PAIRS
    from test_eval_pairs import write_pairs

    pairs_file = write_pairs(tmp_path / "pairs.jsonl")

    assert main(["eval-pairs", str(lm_folder), str(pairs_file), "--batch-size", "3",
                 "--output", str(tmp_path / "results.json")]) == 0

    results = json.loads((tmp_path / "results.json").read_text())
    masked, causal = Norbert4ForMaskedLM.from_pretrained(lm_folder).eval(), \
        Norbert4ForCausalLM.from_pretrained(lm_folder).eval()
    release = release_style_masked_lm(masked)
    cls, sep, mask = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id
    for row, (good, bad, _, _) in zip(results["scores"], SENTENCE_PAIRS):
        for name, sentence in (("good", good), ("bad", bad)):
            ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
            assert row["causal"][name] == pytest.approx(causal_log_likelihood(causal, [cls, *ids], 1)[0], abs=1e-4)
            framed = [cls, *ids, sep]
            expected = pseudo_log_likelihood(release, framed, range(1, len(framed) - 1), mask, shift=1)[0]
            assert row["masked"][name] == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------ peft

def with_random_adapter(peft_model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return peft_model.eval()


@pytest.mark.parametrize("method", ["lora", "prompt", "ptuning", "prefix"])
def test_every_peft_method_generates_with_cache_as_without_on_a_left_padded_batch(method, tokenizer):
    from peft import get_peft_model

    from hf_ltg.adapters import adapter_config

    model = random_model(Norbert4ForCausalLM, tokenizer, value_head_size=8)
    config = adapter_config(model, method, num_virtual_tokens=4) if method != "lora" else adapter_config(model, method)
    assert method != "lora" or config.target_modules is None  # peft's default for the family
    peft_model = with_random_adapter(get_peft_model(model, config))
    if method == "lora":
        assert set(peft_model.peft_config["default"].target_modules) == {"qk_proj", "v_proj"}
    input_ids, attention_mask = left_padded_batch(tokenizer)

    with torch.no_grad():
        options = dict(attention_mask=attention_mask, max_new_tokens=8, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        cached = peft_model.generate(input_ids=input_ids, **options)
        recomputed = peft_model.generate(input_ids=input_ids, use_cache=False, **options)
        alone = peft_model.generate(input_ids=input_ids[:1, 3:],
                                    **{**options, "attention_mask": attention_mask[:1, 3:]})
        logits = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -7:]
        with peft_model.disable_adapter():
            base = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -7:]
    assert torch.equal(cached, recomputed)
    if method == "lora":
        # (Virtual tokens go before the padding, and windows count token indices, so a left-padded row
        # sees fewer of them than it does alone once the window is shorter than virtual tokens + padding.)
        assert torch.equal(alone[0], cached[0, 3:])
    assert (logits - base)[attention_mask.bool()].abs().max() > 1e-3, "the adapter should change the logits"


@pytest.mark.parametrize("head", [Norbert4ForSequenceClassification, Norbert4ForTokenClassification,
                                  Norbert4ForQuestionAnswering], ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", ["lora", "prompt", "ptuning", "prefix"])
def test_every_peft_method_builds_on_every_classifier_with_default_targets(method, head, tokenizer):
    from peft import get_peft_model

    from hf_ltg.adapters import adapter_config

    model = random_model(head, tokenizer, value_head_size=8)
    if method in ("prompt", "ptuning") and head is Norbert4ForTokenClassification:
        with pytest.raises(ValueError, match="token classification"):
            adapter_config(model, method)
        return
    options = {} if method == "lora" else {"num_virtual_tokens": 4}
    peft_model = with_random_adapter(get_peft_model(model, adapter_config(model, method, **options)))
    input_ids, attention_mask = left_padded_batch(tokenizer)
    attention_mask = attention_mask.flip(1)  # right padding, as classifiers get it
    with torch.no_grad():
        outputs = peft_model(input_ids=input_ids, attention_mask=attention_mask)
    logits = outputs.logits if head is not Norbert4ForQuestionAnswering else outputs.start_logits
    virtual = 4 if method in ("prompt", "ptuning") else 0  # peft prepends them to the inputs
    expected = {Norbert4ForSequenceClassification: (2, 3), Norbert4ForTokenClassification: (2, 7, 3),
                Norbert4ForQuestionAnswering: (2, 7 + virtual)}[head]
    assert tuple(logits.shape) == expected
    if method == "prefix" and head is Norbert4ForSequenceClassification:
        # peft hands the prefix to the head's own forward: the first token's state, not a guessed pooler
        from transformers import DynamicCache

        prefix = peft_model.get_prompt(batch_size=2)
        cache = prefix if isinstance(prefix, DynamicCache) else DynamicCache.from_legacy_cache(prefix)
        mask = torch.cat([torch.ones(2, 4, dtype=attention_mask.dtype), attention_mask], dim=1)
        with torch.no_grad():
            direct = model(input_ids=input_ids, attention_mask=mask, past_key_values=cache).logits
        torch.testing.assert_close(logits, direct)


def test_prefix_tuning_with_keys_and_values_of_different_widths_is_a_one_line_error(tokenizer):
    from hf_ltg.adapters import adapter_config

    model = random_model(Norbert4ForCausalLM, tokenizer)  # keys 8, values 12
    with pytest.raises(ValueError, match="query_key_head_size=8 and value_head_size=12") as error:
        adapter_config(model, "prefix")
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------ pretraining

TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "300", "--max-length", "32",
        "--batch-size", "8", "--logging-steps", "2"]


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory):
    from pydoc_data.topics import topics

    from test_hybrid import run_cli

    root = tmp_path_factory.mktemp("norbert4-pretrain")
    (root / "train.txt").write_text(topics["for"] + "\n\n" + topics["while"] + "\n\n" + topics["if"])
    (root / "valid.txt").write_text(topics["break"])
    code, out, err = run_cli("pretrain", "--family", "norbert4", "--objective", "hybrid", "--causal-ratio", "0.5",
                             *TINY, "--max-steps", "6", "--eval-steps", "3", "--train-files", root / "train.txt",
                             "--validation-files", root / "valid.txt", "--output", root / "ckpt", "--work-dir",
                             root / "work")
    assert code == 0, out + err
    return root, out


def test_a_short_hybrid_pretraining_run_reports_both_modes_and_saves_a_norbert4_folder(pretraining_run):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    root, out = pretraining_run
    assert "pretraining NorBERT4" in out and "as a hybrid LM (0.5 of batches causal, spans of 1-3 masked" in out
    assert "validation masked accuracy" in out and "validation causal perplexity" in out
    state = json.loads(max((root / "work").glob("checkpoint-*/trainer_state.json")).read_text())
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert train_logs and all("masked_loss" in e and "causal_loss" in e for e in train_logs)
    config = json.loads((root / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "ltg_norbert4" and config["architectures"] == ["Norbert4ForMaskedLM"]
    assert config["max_position_embeddings"] == 32 and config["query_key_head_size"] == 16
    assert type(AutoModelForMaskedLM.from_pretrained(root / "ckpt")).__name__ == "Norbert4ForMaskedLM"
    assert type(AutoModelForCausalLM.from_pretrained(root / "ckpt")).__name__ == "Norbert4ForCausalLM"


def test_the_saved_heads_give_the_training_losses_of_both_modes(tokenizer):
    from hf_ltg.data.hybrid import HybridCollator, HybridDataset
    from hf_ltg.hybrid_training import Norbert4HybridTrainingModel, export_model

    training = random_model(Norbert4HybridTrainingModel, tokenizer)
    dataset = HybridDataset(TEXTS, tokenizer, max_length=12)
    batches = {mode: HybridCollator(tokenizer, mode=mode, generator=torch.Generator().manual_seed(0))(
        [dataset[i] for i in range(4)]) for mode in ("masked", "causal")}
    with torch.no_grad():
        losses = {mode: training(**batch).loss for mode, batch in batches.items()}
        for objective, mode, head in (("hybrid", "masked", Norbert4ForMaskedLM), ("causal", "causal",
                                                                                  Norbert4ForCausalLM)):
            exported = export_model(training, objective)
            assert type(exported) is head
            batch = batches[mode]
            loss = exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"]).loss
            torch.testing.assert_close(loss, losses[mode], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arguments, message", [
    (["--objective", "masked", "--causal-ratio", "0.5"], "--causal-ratio applies to --objective hybrid only"),
    (["--masking", "subword"], "--masking applies to --family ltg_bert --objective masked only; NorBERT4's"),
    (["--objective", "masked", "--mlm-probability", "0.2"], "--mlm-probability applies to --family ltg_bert"),
    (["--stride", "16"], "--stride 16 applies to GPT's training windows only; NorBERT4's hybrid windows"),
    (["--hidden-size", "30", "--num-heads", "4"], "--hidden-size 30 / --num-heads 4 must be an even whole number"),
])
def test_pretraining_options_norbert4_cannot_use_are_one_line_errors(arguments, message, tmp_path):
    from test_hybrid import run_cli

    code, _, err = run_cli("pretrain", "--family", "norbert4", *arguments, "--max-steps", "1", "--output",
                           tmp_path / "out", "--work-dir", tmp_path / "work")

    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_masked_objective_takes_the_span_options():
    import argparse

    from hf_ltg.commands import pretrain

    parser = argparse.ArgumentParser()
    pretrain.add_parser(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "--family", "norbert4", "--objective", "masked", "--mask-rate-start", "0.2",
                              "--max-span-length", "2"])
    assert pretrain.check_objective(args) == "masked"
    assert pretrain.check_objective(parser.parse_args(["pretrain", "--family", "norbert4"])) == "hybrid"


# ------------------------------------------------------------------ benchmark

@pytest.mark.slow  # a fresh process, two tiny models: 5 s on a quiet machine, 45 s on a loaded one
def test_quick_benchmark_runs_and_its_release_reimplementation_agrees_with_the_family(tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_norbert4.py"), "--quick",
                             "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("bench_norbert4 results")[-1]
    for row in ("forward (masked)", "training step (MLM, AdamW)", "decode b1, 16 new tokens",
                "decode b1, 48 new tokens"):
        assert f"| {row}" in table, table
    rows = {row["row"].split(" B=")[0].split(" after")[0]: row
            for row in json.loads((tmp_path / "rows.json").read_text())["rows"]}
    assert float(rows["forward (masked)"]["agreement"].split()[-1]) < 1e-4
    assert float(rows["training step (MLM, AdamW)"]["agreement"].split()[-1]) < 1e-4
    assert all(rows[f"decode b1, {n} new tokens"]["agreement"] == "greedy tokens identical" for n in (16, 48))
