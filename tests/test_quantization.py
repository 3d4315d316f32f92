"""Int8 quantization: round-trip bounds, the int8 products, LLM.int8 outliers, checkpoints, errors."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from hf_ltg import LtgGptConfig, LtgGptForCausalLM, LtgGptForSequenceClassification
from hf_ltg.cli import main as cli_main
from hf_ltg.quantization import (
    LtgGptInt8Linear,
    dequantize_weight,
    quantize_checkpoint,
    quantize_model,
    quantize_weight,
)
from tests.helpers import run_without_hf_ltg

SCHEMES = ["absmax", "zeropoint", "llm-int8"]


def random_matrix():
    return torch.randn(96, 80, generator=torch.Generator().manual_seed(0)) * 0.02


def outlier_matrix():
    """Heavy-tailed rows: a few entries per row 50-500x the rest, one all-positive row, one zero row."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(96, 80, generator=g) * 0.02
    rows, cols = torch.randint(0, 96, (40,), generator=g), torch.randint(0, 80, (40,), generator=g)
    w[rows, cols] = torch.randn(40, generator=g) * torch.logspace(0, 1, 40)
    w[3] = w[3].abs() + 0.5
    w[7] = 0.0
    return w


def tiny_config(**overrides):
    return LtgGptConfig(**{**dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=64, bos_token_id=0, eos_token_id=0), **overrides})


def tiny_model(seed=0, cls=LtgGptForCausalLM, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


# --- the formulas ------------------------------------------------------------------------------

@pytest.mark.parametrize("make_matrix", [random_matrix, outlier_matrix], ids=["random", "outliers"])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_round_trip_error_is_at_most_half_a_step_per_channel(make_matrix, scheme):
    w = make_matrix()
    q, scale, zero_point = quantize_weight(w, scheme)
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0],)
    error = (w - dequantize_weight(q, scale, zero_point)).abs()
    bound = scale[:, None] / 2 * (1 + 1e-5) + 1e-12
    assert (error <= bound).all(), f"worst excess {(error - bound).max().item():.3g}"


def test_an_all_zero_row_stays_exactly_zero():
    for scheme in ("absmax", "zeropoint"):
        q, scale, zero_point = quantize_weight(outlier_matrix(), scheme)
        assert (dequantize_weight(q, scale, zero_point)[7] == 0).all()


def test_absmax_uses_max_abs_over_127_and_symmetric_range():
    w = outlier_matrix()
    q, scale, _ = quantize_weight(w, "absmax")
    nonzero = w.abs().amax(1) > 0
    torch.testing.assert_close(scale[nonzero], w.abs().amax(1)[nonzero] / 127)
    assert q.min() >= -127 and q.max() <= 127
    assert (q.abs().amax(1)[nonzero] == 127).all()  # the largest |w| of each row maps to +-127


def test_zeropoint_uses_the_full_range_with_an_integer_zero_point():
    w = random_matrix()  # every row spans both signs, so min/max are the row's own
    q, scale, zero_point = quantize_weight(w, "zeropoint")
    low, high = w.amin(1), w.amax(1)
    torch.testing.assert_close(scale, (high - low) / 255)
    torch.testing.assert_close(zero_point.float(), torch.round(-128 - low / scale))
    assert (q.amin(1) == -128).all() and (q.amax(1) >= 126).all()
    # zero is exactly representable
    torch.testing.assert_close(dequantize_weight(zero_point[:, None].expand(-1, 2), scale, zero_point),
                               torch.zeros(96, 2))


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_linear_equals_reference_integer_product(scheme):
    """The int8 kernel (and the zero-point corrections) compute exactly sx*sw*(xq - zx).(q - zw)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(80, 96)
    module = LtgGptInt8Linear.from_linear(linear, scheme)
    x = torch.randn(3, 5, 80)
    rows = x.reshape(-1, 80)
    if scheme == "absmax":  # reference activation quantization, written here
        sx = rows.abs().amax(1) / 127
        xq, zx = torch.round(rows / sx[:, None]).clamp(-127, 127), torch.zeros(15)
    else:
        low, high = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)
        sx = (high - low) / 255
        zx = torch.round(-128 - low / sx)
        xq = (torch.round(rows / sx[:, None]) + zx[:, None]).clamp(-128, 127)
    q = module.weight.double()
    zw = module.weight_zero_point.double() if scheme == "zeropoint" else torch.zeros(96, dtype=torch.float64)
    expected = ((xq.double() - zx.double()[:, None]) @ (q - zw[:, None]).t()) * sx.double()[:, None] \
        * module.weight_scale.double()[None] + linear.bias.double()
    torch.testing.assert_close(module(x).double(), expected.reshape(3, 5, 96), rtol=1e-5, atol=1e-6)
    # and it is close to the float layer
    torch.testing.assert_close(module(x), linear(x), rtol=0, atol=0.02)


def test_llm_int8_keeps_outlier_columns_out_of_int8_and_beats_absmax():
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    x = torch.randn(16, 256)
    x[:, [5, 77, 200]] *= 40  # systematic outlier features, as in large transformers
    reference = F.linear(x.double(), linear.weight.double(), linear.bias.double())
    errors = {}
    for scheme in ("absmax", "llm-int8"):
        out = LtgGptInt8Linear.from_linear(linear, scheme, threshold=6.0)(x)
        errors[scheme] = ((out.double() - reference).norm() / reference.norm()).item()
    print(f"relative error vs fp64 matmul: {errors}")
    assert errors["llm-int8"] < errors["absmax"] / 4, errors


def test_llm_int8_without_outliers_is_absmax():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(4, 64).clamp(-5, 5)
    absmax = LtgGptInt8Linear.from_linear(linear, "absmax")(x)
    llm = LtgGptInt8Linear.from_linear(linear, "llm-int8", threshold=6.0)(x)
    torch.testing.assert_close(llm, absmax, rtol=0, atol=0)


def test_int8_linear_keeps_bfloat16_inputs_in_bfloat16():
    linear = torch.nn.Linear(64, 32)
    out = LtgGptInt8Linear.from_linear(linear, "absmax")(torch.randn(2, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


# --- models and checkpoints --------------------------------------------------------------------

@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_model_stays_close_to_float_and_reloads_identically(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
        quantize_model(model, scheme)
        quantized = model(ids).logits
    assert isinstance(model.transformer.h[0].attn.qkv_proj, LtgGptInt8Linear)
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head stays float unless asked
    assert (quantized - reference).abs().max() < 0.05 * reference.abs().max()

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["scheme"] == scheme
    assert len(config["quantization"]["modules"]) == 4 * 2
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.get_slice("transformer.h.1.mlp.fc_in.weight").get_dtype() == "I8"
        assert f.get_slice("transformer.h.1.mlp.fc_in.weight_scale").get_dtype() == "F32"
        assert ("transformer.h.1.mlp.fc_in.weight_zero_point" in f.keys()) == (scheme == "zeropoint")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.transformer.h[1].mlp.fc_out.weight.dtype == torch.int8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, quantized, rtol=0, atol=0)


def test_include_lm_head_quantizes_and_unties_the_head(tmp_path):
    from transformers import AutoModelForCausalLM

    model = quantize_model(tiny_model(), "absmax", include_lm_head=True)
    assert isinstance(model.lm_head, LtgGptInt8Linear)
    assert model.config.tie_word_embeddings is False
    ids = torch.randint(0, 300, (1, 8))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight.dtype == torch.int8
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_classification_heads_stay_float_and_base_model_loads_a_quantized_head_checkpoint(tmp_path):
    from transformers import AutoModel

    model = quantize_model(tiny_model(cls=LtgGptForSequenceClassification, num_labels=3), "zeropoint")
    assert isinstance(model.score, torch.nn.Linear)
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(base.h[0].mlp.fc_in, LtgGptInt8Linear)
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(base(ids).last_hidden_state, model.transformer(ids).last_hidden_state)


def save_float_checkpoint(folder, tokenizer=None):
    model = tiny_model()
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


@pytest.mark.slow
def test_quantized_checkpoint_loads_without_hf_ltg_and_generates(tmp_path, tiny_tokenizer, capsys):
    save_float_checkpoint(tmp_path / "float", tiny_tokenizer)
    assert cli_main(["quantize", str(tmp_path / "float"), str(tmp_path / "int8"), "--scheme", "llm-int8"]) == 0
    assert "llm-int8" in capsys.readouterr().out
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(tmp_path / "int8").eval()
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt").input_ids
    expected = local.generate(prompt, max_new_tokens=8, do_sample=False)[0].tolist()

    out = run_without_hf_ltg(
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True).eval()
        layer = model.transformer.h[0].attn.qkv_proj
        print(type(layer).__name__, layer.weight.dtype, model.config.quantization["scheme"])
        ids = tok("The quick brown fox", return_tensors="pt").input_ids
        print(model.generate(ids, max_new_tokens=8, do_sample=False)[0].tolist())
        """,
        tmp_path / "int8",
        tmp_path,
    )
    lines = out.strip().splitlines()
    assert lines[-2] == "LtgGptInt8Linear torch.int8 llm-int8"
    assert lines[-1] == str(expected)


# --- bad input ---------------------------------------------------------------------------------

def test_quantizing_a_quantized_model_is_refused():
    model = quantize_model(tiny_model(), "absmax")
    with pytest.raises(ValueError, match=r"already quantized \(scheme 'absmax'\).*original floating-point"):
        quantize_model(model, "zeropoint")


def test_quantizing_a_quantized_checkpoint_is_refused(tmp_path):
    quantize_model(tiny_model(), "absmax").save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_checkpoint(tmp_path / "q", tmp_path / "qq")
    assert not (tmp_path / "qq").exists()


@pytest.mark.parametrize("scheme", ["int4", "llm.int8", "", None])
def test_unknown_scheme_is_refused(scheme):
    with pytest.raises(ValueError, match=re.escape(f"Unknown quantization scheme {scheme!r}") + ".*absmax, zeropoint, llm-int8"):
        quantize_model(tiny_model(), scheme)


@pytest.mark.parametrize("threshold", [0, -1.0, float("nan")])
def test_non_positive_threshold_is_refused(threshold):
    with pytest.raises(ValueError, match=r"threshold must be a positive number, got .*default 6\.0"):
        quantize_model(tiny_model(), "llm-int8", threshold=threshold)


def test_cli_reports_bad_threshold_and_writes_nothing(tmp_path, capsys):
    save_float_checkpoint(tmp_path / "float")
    code = cli_main(["quantize", str(tmp_path / "float"), str(tmp_path / "out"), "--scheme", "llm-int8",
                     "--threshold", "0"])
    assert code == 2
    assert "hf-ltg quantize: error: The outlier threshold must be a positive number, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_rejects_unknown_scheme(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["quantize", str(tmp_path), str(tmp_path / "out"), "--scheme", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_ltg_bert_is_refused_with_a_clear_error():
    from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM

    config = LtgBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=32)
    with pytest.raises(ValueError, match=r"supports the model types \('ltg_gpt',\).*LTG-BERT checkpoints are not supported yet"):
        quantize_model(LtgBertForMaskedLM(config), "absmax")


def test_perplexity_and_generate_quantize_on_the_fly_with_int8(tmp_path, tiny_tokenizer, capsys):
    from tests.conftest import CORPUS

    save_float_checkpoint(tmp_path / "float", tiny_tokenizer)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(CORPUS))
    figures = {}
    for flag in ([], ["--int8"], ["--int8", "zeropoint"]):
        assert cli_main(["perplexity", str(text), "--model", str(tmp_path / "float"), "--max-length", "32", *flag]) == 0
        figures[" ".join(flag)] = float(re.search(r"perplexity ([\d.]+)", capsys.readouterr().out).group(1))
    assert figures["--int8"] != figures[""]  # the flag changed the model ...
    for value in figures.values():  # ... and int8 costs little
        assert abs(value / figures[""] - 1) < 0.02, figures
    assert cli_main(["generate", "The cat", "--model", str(tmp_path / "float"), "--int8", "llm-int8",
                     "--temperature", "0", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The cat")


def test_int8_flag_on_a_quantized_checkpoint_is_refused(tmp_path, tiny_tokenizer, capsys):
    save_float_checkpoint(tmp_path / "float", tiny_tokenizer)
    assert cli_main(["quantize", str(tmp_path / "float"), str(tmp_path / "int8")]) == 0
    assert cli_main(["generate", "The cat", "--model", str(tmp_path / "int8"), "--int8"]) == 2
    assert "already quantized" in capsys.readouterr().err
