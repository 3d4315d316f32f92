"""`hf-ltg perplexity` says what it computes."""

from hub_utils import save_tiny_gpt, save_tiny_ltg_bert

from hf_ltg.cli import main

TEXT = "The cat sat on the mat. A language model predicts tokens. Norway has fjords. " * 3


def test_perplexity_of_a_masked_lm_says_it_is_the_causal_use_not_the_training_objective(tmp_path, capsys):
    save_tiny_ltg_bert(tmp_path / "mlm")
    (tmp_path / "text.txt").write_text(TEXT)

    assert main(["perplexity", str(tmp_path / "text.txt"), "--model", str(tmp_path / "mlm"), "--max-length", "32"]) == 0

    out = capsys.readouterr().out
    assert "trained as a masked language model (LtgBertForMaskedLM)" in out
    assert "not of its training objective" in out
    assert "causal (left-to-right) perplexity" in out


def test_perplexity_of_a_causal_lm_has_no_note(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    (tmp_path / "text.txt").write_text(TEXT)

    assert main(["perplexity", str(tmp_path / "text.txt"), "--model", str(tmp_path / "lm"), "--max-length", "32"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("perplexity ") and "masked" not in out
