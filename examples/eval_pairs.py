"""Minimal pairs: does a checkpoint score the grammatical sentence of each pair higher?

    python examples/eval_pairs.py checkpoints/ltg-bert-mlm                  # the pairs shipped with hf_ltg
    python examples/eval_pairs.py checkpoints/ltg-bert-mlm --pairs blimp/data/anaphor_gender_agreement.jsonl
    python examples/eval_pairs.py --tiny     # the committed LTG-BERT, every 5th pair (the test suite runs this)

The command line does the same: `hf-ltg eval-pairs checkpoints/ltg-bert-mlm [FILE ...] [--mode both]`.
A masked LM (LTG-BERT) is scored both ways: causally (each token given the ones before it, through the
causal-LM head on the same weights) and by masked pseudo-log-likelihood (each token masked in turn, the
way LTG-BERT and BabyLM evaluate masked LMs).
"""

import argparse
from pathlib import Path

from transformers import AutoModelForMaskedLM, AutoTokenizer

from hf_ltg.minimal_pairs import SHIPPED_PAIRS, evaluate, format_table, read_pairs
from hf_ltg.scoring import pseudo_log_likelihood_scores, special_tokens_around

COMMITTED = Path(__file__).resolve().parents[1] / "checkpoints" / "ltg-bert-mlm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="checkpoint folder (default with --tiny: the committed LTG-BERT)")
    parser.add_argument("--pairs", default=str(SHIPPED_PAIRS), help="BLiMP-style JSONL (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="every 5th pair only")
    args = parser.parse_args()
    model_dir = args.model or (str(COMMITTED) if args.tiny else parser.error("give MODEL or --tiny"))

    # 1. Accuracy per phenomenon, as `hf-ltg eval-pairs` prints it.
    pairs = read_pairs([args.pairs])[::5 if args.tiny else 1]
    results = evaluate(model_dir, pairs)
    print(format_table(results))

    # 2. One pair by hand: the pseudo-log-likelihood is built from the tokenizer's [CLS] ... [SEP]
    #    frame and one masked copy per token, scored in a single batch.
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    before, after = special_tokens_around(tokenizer)
    good, bad = pairs[0]["sentence_good"], pairs[0]["sentence_bad"]
    requests = [(before, tokenizer(s, add_special_tokens=False)["input_ids"], after) for s in (good, bad)]
    good_score, bad_score = pseudo_log_likelihood_scores(model, requests, tokenizer.mask_token_id)
    print(f"first pair, masked PLL: {good!r} {good_score.log_likelihood:.2f} vs {bad!r} {bad_score.log_likelihood:.2f} "
          f"({'right' if good_score.log_likelihood > bad_score.log_likelihood else 'wrong'})")


if __name__ == "__main__":
    main()
