"""Accuracy and size cost of int8: validation perplexity and checkpoint bytes of each scheme next to fp32.

    python benchmarks/eval_int8.py checkpoints/main-job

Each scheme is written with `quantize_checkpoint` (as `hf-ltg quantize` does) and loaded back with
`from_pretrained`, so the figures are those of the saved checkpoint. Perplexity is measured as the
main job measures it: the validation part of pydoc_data.topics, windows of 128 every 64 tokens.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForCausalLM  # noqa: E402

from hf_ltg.data.core import LanguageModelingDataset  # noqa: E402
from hf_ltg.data.corpus import pretraining_corpus  # noqa: E402
from hf_ltg.quantization import checkpoint_size, quantize_checkpoint  # noqa: E402
from hf_ltg.tokenization import load_tokenizer  # noqa: E402
from hf_ltg.training import sliding_window_perplexity  # noqa: E402

VARIANTS = [("absmax", False), ("zeropoint", False), ("llm-int8", False), ("absmax", True), ("zeropoint", True),
            ("llm-int8", True)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=6.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    tokenizer = load_tokenizer(args.checkpoint)
    _, valid_docs = pretraining_corpus(0.1)
    token_ids = LanguageModelingDataset(valid_docs, tokenizer, args.max_length, args.max_length).token_ids

    def perplexity(folder):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            return sliding_window_perplexity(model, token_ids, args.max_length, args.max_length // 2,
                                             batch_size=32)["perplexity"]

    base_ppl, base_size = perplexity(args.checkpoint), checkpoint_size(args.checkpoint)
    rows = {"fp32": dict(perplexity=base_ppl, bytes=base_size)}
    print(f"{len(token_ids):,} validation tokens; {'variant':<20}{'perplexity':>11}{'increase':>10}{'bytes':>12}{'ratio':>7}")
    print(f"{'':>30}{'fp32':<20}{base_ppl:>11.3f}{'':>10}{base_size:>12,}{1:>7.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme, head in VARIANTS:
            name = scheme + ("+head" if head else "")
            out = quantize_checkpoint(args.checkpoint, Path(tmp) / name, scheme, args.threshold, include_lm_head=head)
            ppl, size = perplexity(out), checkpoint_size(out)
            rows[name] = dict(perplexity=ppl, relative_increase=ppl / base_ppl - 1, bytes=size,
                              size_ratio=size / base_size)
            print(f"{'':>30}{name:<20}{ppl:>11.3f}{100 * (ppl / base_ppl - 1):>9.2f}%{size:>12,}{size / base_size:>7.2f}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
