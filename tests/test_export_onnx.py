"""`hf-ltg export --onnx`: ONNX Runtime decodes with the exported KV cache as torch generates, and
classifier graphs give torch's logits."""

import json

import numpy as np
import pytest
import torch
from gpt_utils import randomize_
from hub_utils import save_tiny_gpt, save_tiny_ltg_bert

from hf_ltg.checkpoint import save_checkpoint
from hf_ltg.cli import main
from hf_ltg.hub.export_onnx import cache_names, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

STEPS = 6


def greedy_with_onnx_cache(folder, input_ids, attention_mask, steps=STEPS):
    """Greedy decoding as ONNX Runtime GenAI runs the graph: the whole prompt with an empty past
    (length 0), then one token per step with the presents fed back as the past."""
    session = ort.InferenceSession(str(folder / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    past_names = [n for n in names if n.startswith("past_key_values.")]
    _, heads, _, head_dim = session.get_inputs()[names.index(past_names[0])].shape
    batch = input_ids.shape[0]
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
    feeds.update({n: np.zeros((batch, heads, 0, head_dim), np.float32) for n in past_names})
    mask, tokens = attention_mask.numpy(), []
    for _ in range(steps):
        logits, *present = session.run(None, feeds)
        next_ids = logits[:, -1].argmax(-1)
        tokens.append(next_ids)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        feeds = {"input_ids": next_ids[:, None].astype(np.int64), "attention_mask": mask}
        feeds.update(dict(zip(past_names, present)))
    return np.stack(tokens, axis=1)


def torch_greedy(model, input_ids, attention_mask, steps=STEPS):
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=steps, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
    return out[:, input_ids.shape[1]:].numpy()


def assert_same_tokens_up_to_eos(got, want, eos):
    """`generate` pads a row after its eos; compare each row up to and including its first eos."""
    for row_got, row_want in zip(got.tolist(), want.tolist()):
        stop = row_want.index(eos) + 1 if eos in row_want else len(row_want)
        assert row_got[:stop] == row_want[:stop]


def left_padded_batch(pad_id, vocab_size):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, vocab_size, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = pad_id, 0
    return input_ids, attention_mask


def standard_ops_only(path) -> bool:
    graph = onnx.load(str(path)).graph
    return {node.domain for node in graph.node} <= {"", "ai.onnx"} and any(n.op_type == "MatMul" for n in graph.node)


def save_random_gpt(folder, tokenizer, head="causal-lm"):
    model = randomize_(save_tiny_gpt(folder, tokenizer, head=head), seed=1)
    save_checkpoint(model, folder, tokenizer=tokenizer, overwrite=True)
    return model


def save_random_ltg_bert(folder, head_class=None, **config):
    model, tokenizer = save_tiny_ltg_bert(folder)
    if head_class is not None:
        model.config.update(config)
        model = head_class(model.config).eval()
    randomize_(model, seed=1)
    save_checkpoint(model, folder, tokenizer=tokenizer, overwrite=True)
    return model, tokenizer


def test_gpt_onnx_greedy_decoding_with_cache_matches_torch_generate(tmp_path, tiny_tokenizer):
    model = save_random_gpt(tmp_path / "ckpt", tiny_tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "onnx")]) == 0

    folder = tmp_path / "onnx"
    assert {"model.onnx", "config.json", "genai_config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    session = ort.InferenceSession(str(folder / "model.onnx"))
    past, present = cache_names(model.config.num_hidden_layers)
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", *past]
    assert [o.name for o in session.get_outputs()] == ["logits", *present]
    assert session.get_inputs()[2].shape == ["batch_size", 4, "past_sequence_length", 8]
    assert standard_ops_only(folder / "model.onnx")

    input_ids, attention_mask = left_padded_batch(model.config.pad_token_id, model.config.vocab_size)
    got = greedy_with_onnx_cache(folder, input_ids, attention_mask)
    want = torch_greedy(model, input_ids, attention_mask)
    assert_same_tokens_up_to_eos(got, want, model.config.eos_token_id)
    alone = greedy_with_onnx_cache(folder, input_ids[:1, 3:], attention_mask[:1, 3:])  # the padded row alone
    assert_same_tokens_up_to_eos(alone, want[:1], model.config.eos_token_id)
    genai = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    assert genai["inputs"]["past_key_names"] % 1 == past[2] and genai["num_hidden_layers"] == 2


def test_onnx_runtime_genai_generates_torch_greedy_tokens_from_the_export(tmp_path, tiny_tokenizer):
    og = pytest.importorskip("onnxruntime_genai")
    model = save_random_gpt(tmp_path / "ckpt", tiny_tokenizer)
    export_onnx(tmp_path / "ckpt", tmp_path / "onnx")
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]

    genai_model = og.Model(str(tmp_path / "onnx"))  # reads genai_config.json
    params = og.GeneratorParams(genai_model)
    params.set_search_options(do_sample=False, max_length=prompt.shape[1] + STEPS)
    generator = og.Generator(genai_model, params)
    generator.append_tokens(prompt.numpy().astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    got = np.array(generator.get_sequence(0), dtype=np.int64)[None, prompt.shape[1]:]

    assert_same_tokens_up_to_eos(got, torch_greedy(model, prompt, torch.ones_like(prompt)), model.config.eos_token_id)


def test_ltg_bert_causal_lm_onnx_greedy_decoding_with_cache_matches_torch_generate(tmp_path):
    from hf_ltg.ltg_bert import LtgBertForCausalLM

    save_random_ltg_bert(tmp_path / "ckpt")  # a masked LM; its causal head shares the weights

    export_onnx(tmp_path / "ckpt", tmp_path / "onnx", task="causal-lm")

    model = LtgBertForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    assert standard_ops_only(tmp_path / "onnx" / "model.onnx")
    input_ids, attention_mask = left_padded_batch(model.config.pad_token_id, model.config.vocab_size)
    got = greedy_with_onnx_cache(tmp_path / "onnx", input_ids, attention_mask)
    want = torch_greedy(model, input_ids, attention_mask)
    assert_same_tokens_up_to_eos(got, want, model.config.eos_token_id)


ISOLATED_ORT_GREEDY = """
import json
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)  # config.json names the config code
tokenizer.padding_side = "left"
batch = tokenizer(["The for statement", "A function"], return_tensors="np", padding=True)
session = ort.InferenceSession(CKPT + "/model.onnx")
past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
feeds = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
feeds.update({i.name: np.zeros((2, i.shape[1], 0, i.shape[3]), np.float32) for i in past})
tokens = []
for _ in range(6):
    logits, *present = session.run(None, feeds)
    next_ids = logits[:, -1].argmax(-1)
    tokens.append(next_ids.tolist())
    mask = np.concatenate([feeds["attention_mask"], np.ones((2, 1), np.int64)], axis=1)
    feeds = {"input_ids": next_ids[:, None].astype(np.int64), "attention_mask": mask, **dict(zip([i.name for i in past], present))}
print(json.dumps({"input_ids": batch["input_ids"].tolist(), "attention_mask": batch["attention_mask"].tolist(),
                  "tokens": np.array(tokens).T.tolist()}))
"""


def test_shipped_gpt_checkpoint_exported_to_onnx_decodes_without_hf_ltg(tmp_path):
    from helpers import REPO, run_without_hf_ltg
    from transformers import AutoModelForCausalLM

    assert main(["export", str(REPO / "checkpoints" / "ltg-gpt-lm"), "--onnx", str(tmp_path / "onnx")]) == 0

    report = json.loads(run_without_hf_ltg(ISOLATED_ORT_GREEDY, tmp_path / "onnx", tmp_path).strip().splitlines()[-1])
    model = AutoModelForCausalLM.from_pretrained(REPO / "checkpoints" / "ltg-gpt-lm").eval()
    input_ids, attention_mask = torch.tensor(report["input_ids"]), torch.tensor(report["attention_mask"])
    assert not attention_mask.all()  # one prompt is left-padded
    want = torch_greedy(model, input_ids, attention_mask)
    assert_same_tokens_up_to_eos(np.array(report["tokens"]), want, model.config.eos_token_id)


def logits_only_cases():
    from hf_ltg.ltg_bert import LtgBertForSequenceClassification, LtgBertForTokenClassification

    labels = dict(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    return [
        pytest.param("gpt", "sequence-classification", {}, id="gpt-sequence"),
        pytest.param("gpt", "token-classification", {}, id="gpt-token"),
        pytest.param("ltg_bert", LtgBertForSequenceClassification, labels, id="ltg-bert-sequence"),
        pytest.param("ltg_bert", LtgBertForTokenClassification, labels, id="ltg-bert-token"),
        pytest.param("ltg_bert", None, {}, id="ltg-bert-masked-lm"),
    ]


@pytest.mark.parametrize("family, head, config", logits_only_cases())
def test_classifier_and_masked_lm_onnx_logits_match_torch(tmp_path, tiny_tokenizer, family, head, config):
    if family == "gpt":
        model = save_random_gpt(tmp_path / "ckpt", tiny_tokenizer, head=head)
        padding_side = "left"
    else:
        model, _ = save_random_ltg_bert(tmp_path / "ckpt", head, **config)
        padding_side = "right"

    export_onnx(tmp_path / "ckpt", tmp_path / "onnx")

    generator = torch.Generator().manual_seed(5)
    input_ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, slice(None, 4) if padding_side == "left" else slice(5, None)] = 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    (logits,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        want = model(input_ids, attention_mask=attention_mask).logits
    keep = attention_mask.bool() if want.ndim == 3 else torch.ones(3, dtype=torch.bool)  # padding tokens: any value
    np.testing.assert_allclose(logits[keep.numpy()], want[keep].numpy(), rtol=0, atol=1e-4)
    assert standard_ops_only(tmp_path / "onnx" / "model.onnx")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_ltg_bert_traced_graph_holds_public_ops_only(tmp_path):
    model, _ = save_random_ltg_bert(tmp_path / "ckpt")
    input_ids = torch.randint(0, model.config.vocab_size, (2, 6))
    with torch.no_grad():
        traced = torch.jit.trace(model, (input_ids,), strict=False, check_trace=False)
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::linear" in graph


def test_onnx_export_refuses_a_head_the_family_lacks(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), "--onnx", str(tmp_path / "onnx"), "--task", "masked-lm"]) == 2

    error = capsys.readouterr().err.strip()
    assert "error:" in error and "masked-lm" in error and "causal-lm" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "onnx").exists()
