"""`hf-ltg pretrain` honours or refuses every option under every objective, before any work (and
`hf-ltg convert` takes --layout only where it means something), and the hybrid summary's verdict
agrees with both figures it compares."""

import pytest

from hf_ltg.cli import main

LTG_BERT = ["--family", "ltg_bert"]


@pytest.mark.parametrize("argv, message", [
    (LTG_BERT + ["--objective", "hybrid", "--mlm-probability", "0.3"], "--mlm-probability applies to"),
    (LTG_BERT + ["--objective", "hybrid", "--masking", "subword"], "--masking applies to"),
    (LTG_BERT + ["--objective", "hybrid", "--stride", "16"], "--stride 16 applies to GPT"),
    (LTG_BERT + ["--objective", "causal", "--mlm-probability", "0.3"], "the causal objective masks nothing"),
    (LTG_BERT + ["--stride", "16"], "LTG-BERT's masked windows do not overlap"),
    (["--masking", "subword"], "--masking applies to --family ltg_bert --objective masked only"),
    (["--mlm-probability", "0.2"], "--mlm-probability applies to --family ltg_bert --objective masked only"),
])
def test_an_option_the_objective_would_ignore_is_refused_before_any_work(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["pretrain", *argv, "--output", str(out / "ckpt"), "--work-dir", str(out / "work")])

    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_hybrid_refusal_says_what_masks_instead(capsys):
    main(["pretrain", *LTG_BERT, "--objective", "hybrid", "--mlm-probability", "0.3"])

    assert "--mask-rate-start -> --mask-rate-end" in capsys.readouterr().err


def test_masked_objective_options_get_their_defaults_only_under_the_masked_objective():
    from hf_ltg.commands.pretrain import check_objective

    parser_args = _parse(["pretrain", *LTG_BERT])
    assert check_objective(parser_args) == "masked"
    assert (parser_args.masking, parser_args.mlm_probability) == ("whole-word", 0.15)
    hybrid = _parse(["pretrain", *LTG_BERT, "--objective", "hybrid"])
    assert check_objective(hybrid) == "hybrid" and hybrid.mlm_probability is None


def _parse(argv):
    import argparse

    from hf_ltg.commands import pretrain

    parser = argparse.ArgumentParser()
    pretrain.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.parametrize("accuracy, loss, verdict", [
    (0.20, 5.0, "better in accuracy and loss"),
    (0.20, 5.928, "NOT better in loss: train longer"),  # the run: accuracy up, loss 5.928 > 5.824
    (0.05, 5.0, "NOT better in accuracy: train longer"),
])
def test_hybrid_summary_says_better_only_when_accuracy_and_loss_both_beat_the_unigram_model(
        accuracy, loss, verdict, monkeypatch):
    import hf_ltg.hybrid_training
    from hf_ltg.commands._pretrain_hybrid import summary

    unigram = {"loss": 5.824, "perplexity": 338.4, "accuracy": 0.10, "guess": 5}
    monkeypatch.setattr(hf_ltg.hybrid_training, "unigram_baselines", lambda *a, **k: unigram)
    results = {"masked": {"accuracy": accuracy, "loss": loss, "tokens": 100, "histogram": None},
               "causal": {"loss": 5.0, "tokens": 100, "histogram": None}}

    masked_line = summary(results, [], _Tokenizer()).splitlines()[0]

    assert masked_line.endswith(verdict), masked_line


class _Tokenizer:
    all_special_ids = [0]

    def __len__(self):
        return 10



def test_convert_refuses_layout_for_a_gpt_bert_state_dict_before_reading_it(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"")  # never read: refused first

    code = main(["convert", "--from", "gpt-bert", str(tmp_path / "model.bin"), str(tmp_path / "out"),
                 "--config", str(tmp_path / "config.json"), "--layout", "bnc"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and "--layout" in err and "gpt-bert" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
