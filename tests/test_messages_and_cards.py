"""What hf_ltg tells users is true: messages, model cards, docstrings and the README's figures."""

import ast
import json
import re
import shlex

from helpers import REPO
from hub_utils import save_tiny_ltg_bert

from hf_ltg.cli import build_parser, main

TEXT = "The cat sat on the mat. A language model predicts tokens. Norway has fjords. " * 3


def hybrid_checkpoint(folder):
    """A tiny LTG-BERT masked LM saved as `hf-ltg pretrain --objective hybrid` saves it (masked_next_token)."""
    save_tiny_ltg_bert(folder)
    config = json.loads((folder / "config.json").read_text())
    config["masked_next_token"] = True
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", markdown, flags=re.S))


def from_pretrained_calls(code: str) -> list[str]:
    return re.findall(r"\w+\.from_pretrained\([^)]*\)|pipeline\([^)]*\)", code)


def test_perplexity_of_a_hybrid_checkpoint_names_its_hybrid_training(tmp_path, capsys):
    hybrid_checkpoint(tmp_path / "hybrid")
    (tmp_path / "text.txt").write_text(TEXT)

    assert main(["perplexity", str(tmp_path / "text.txt"), "--model", str(tmp_path / "hybrid"),
                 "--max-length", "32"]) == 0

    out = capsys.readouterr().out
    assert "hybrid objective" in out and "causal mode" in out
    assert "trained as a masked language model" not in out


def test_gpt_bert_conversion_card_passes_trust_remote_code_to_every_from_pretrained():
    from hf_ltg.conversion.gpt_bert import model_card
    from hf_ltg.ltg_bert import LtgBertConfig

    card = model_card(LtgBertConfig(masked_next_token=True), "gpt-bert", extra=True, has_tokenizer=True)

    calls = [c for c in from_pretrained_calls(code_blocks(card)) if "from_pretrained(repo" in c]
    assert any(c.startswith("AutoTokenizer") for c in calls)
    assert calls and all("trust_remote_code=True" in c for c in calls), calls


def test_export_card_of_a_hybrid_checkpoint_shows_both_modes(tmp_path):
    from hf_ltg.hub import export_checkpoint

    card = (export_checkpoint(hybrid_checkpoint(tmp_path / "hybrid"), tmp_path / "out") / "README.md").read_text()

    summary = card.split("## Architecture")[0]
    assert "text generation" in summary and "masked and causal" in summary
    code = code_blocks(card)
    assert 'pipeline("fill-mask"' in code and 'pipeline("text-generation"' in code
    assert all("trust_remote_code=True" in c for c in from_pretrained_calls(code) if "repo" in c)


def test_export_card_of_a_plain_masked_lm_shows_no_causal_mode(tmp_path):
    from hf_ltg.hub import export_checkpoint

    save_tiny_ltg_bert(tmp_path / "mlm")
    card = (export_checkpoint(tmp_path / "mlm", tmp_path / "out") / "README.md").read_text()

    assert 'pipeline("text-generation"' not in code_blocks(card) and "text generation" not in card


def test_every_hf_ltg_command_in_the_lm_eval_docstring_parses():
    docstring = ast.get_docstring(ast.parse((REPO / "hf_ltg" / "lm_eval.py").read_text()))
    commands = [line.strip() for line in docstring.splitlines() if line.strip().startswith("hf-ltg ")]

    assert commands
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])  # argparse exits on a bad command line
        assert args.lm_eval_arguments[0] == "run", command


def test_readme_minimal_pair_figures_are_what_eval_pairs_measures_on_the_shipped_checkpoints():
    from hf_ltg.minimal_pairs import SHIPPED_PAIRS, evaluate, read_pairs

    readme = " ".join(REPO.joinpath("README.md").read_text().split())
    found = re.search(r"`ltg-gpt-lm` ([\d.]+) % \(causal\), `ltg-bert-mlm` ([\d.]+) % causal and ([\d.]+) % masked",
                      readme)
    assert found, "the README's minimal-pair sentence changed; update this test with it"
    pairs = read_pairs([SHIPPED_PAIRS])

    gpt = evaluate(REPO / "checkpoints" / "ltg-gpt-lm", pairs)["accuracy"]
    bert = evaluate(REPO / "checkpoints" / "ltg-bert-mlm", pairs)["accuracy"]

    measured = [gpt["causal"], bert["causal"], bert["masked"]]
    assert [f"{100 * a:.1f}" for a in measured] == list(found.groups())
