"""A 16-bit precision this CPU emulates gets one note (the probe's verdict, a measured product time,
fp32 as the alternative), and the command carries on; native 16-bit products and fp32 get none."""

import pytest
import torch

import hf_ltg.gpt.kernels_ltg_gpt as kernels
from hf_ltg.cli import build_parser, main
from hf_ltg.commands import _precision, _training
from tests.hub_utils import save_tiny_gpt


@pytest.fixture
def cpu_16bit(monkeypatch):
    """Set whether the probe finds native 16-bit products; each test starts with nothing noted."""
    monkeypatch.setattr(_precision, "_noted", set())

    def set_native(native: bool):
        monkeypatch.setattr(kernels, "native_16bit_matmul", lambda dtype: native)

    return set_native


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("precision") / "gpt"
    save_tiny_gpt(folder, tiny_tokenizer)
    return folder


def test_generate_in_emulated_bfloat16_notes_it_once_and_generates(cpu_16bit, checkpoint, capsys):
    cpu_16bit(False)
    argv = ["generate", "The", "--model", str(checkpoint), "--dtype", "bfloat16", "--max-new-tokens", "3",
            "--temperature", "0"]
    assert main(argv) == 0
    assert main(argv) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("hf-ltg: note:")]
    assert len(notes) == 1, captured.err
    assert notes[0].startswith("hf-ltg: note: bfloat16 is emulated on this CPU (it has no native bfloat16 matrix "
                               "product: oneDNN's probe failed)")
    assert "drop --dtype for float32. Carrying on." in notes[0]
    samples = captured.out.splitlines()
    assert len(samples) == 2 and all(sample.startswith("The") for sample in samples)


@pytest.mark.parametrize("native, dtype", [(True, "bfloat16"), (True, "float16"), (False, "float32")])
def test_no_note_for_native_16bit_products_or_float32(cpu_16bit, checkpoint, capsys, native, dtype):
    cpu_16bit(native)
    assert main(["generate", "The", "--model", str(checkpoint), "--dtype", dtype, "--max-new-tokens", "2"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_no_note_on_a_gpu(cpu_16bit):
    cpu_16bit(False)
    assert _precision.note_if_emulated("bfloat16", "drop --bf16", device="cuda") is None


def test_note_gives_a_measured_product_time_ratio(cpu_16bit, monkeypatch, capsys):
    cpu_16bit(False)
    monkeypatch.setattr(_precision, "_product_time_ratio", lambda dtype: 4.25)
    note = _precision.note_if_emulated("float16", "drop --fp16", device="cpu")
    assert "a 64x1024 by 1024x1024 product took 4.2x as long as in float32" in note
    assert note.endswith("drop --fp16 for float32. Carrying on.")
    assert capsys.readouterr().err.strip() == note
    assert _precision._product_time_ratio(torch.float32) > 0


@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_training_flags_reach_the_trainer_with_one_note(cpu_16bit, capsys, tmp_path, flag):
    cpu_16bit(False)
    args = build_parser().parse_args(["pretrain", flag, "--work-dir", str(tmp_path / "work")])
    first, second = _training.trainer_arguments(args), _training.trainer_arguments(args)
    assert (first.bf16, first.fp16) == ((True, False) if flag == "--bf16" else (False, True))
    assert second.bf16 == first.bf16
    err = capsys.readouterr().err
    assert err.count("hf-ltg: note:") == 1 and f"drop {flag} for float32" in err


def test_training_in_float32_is_not_noted(cpu_16bit, capsys, tmp_path):
    cpu_16bit(False)
    args = build_parser().parse_args(["pretrain", "--work-dir", str(tmp_path / "work")])
    arguments = _training.trainer_arguments(args)
    assert not arguments.bf16 and not arguments.fp16
    assert "note:" not in capsys.readouterr().err


def test_bf16_and_fp16_together_are_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--bf16", "--fp16"])


def test_this_cpu_is_probed_not_named():
    """On this machine the note appears exactly when the probe says bf16 is emulated."""
    _precision._noted.discard("bfloat16")
    note = _precision.note_if_emulated("bfloat16", "drop --bf16", device="cpu")
    assert (note is not None) == (not kernels.native_16bit_matmul(torch.bfloat16))
