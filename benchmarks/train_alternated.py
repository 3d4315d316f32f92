"""Training steps of hf_ltg's GPT and transformers' GPT-2, alternated step by step in one process.

    python benchmarks/train_alternated.py                       # fp32 and bf16 autocast, 2 threads
    python benchmarks/train_alternated.py --threads 1 --mask    # also with an all-ones attention mask
    python benchmarks/train_alternated.py --off onednn_training_linear   # a speed path switched off

A second opinion on `bench_gpt.py`'s training rows, shaped like a harness a user would write: one
random GPT-2 small (transformers, converted by hf_ltg), batch 4 x 256, `model(input_ids, labels)`,
backward, AdamW (foreach, torch's default), and the two models' steps alternate (ours, theirs, ours,
...) so that a slow stretch of a shared machine hits both. Prints tok/s (median of the timed steps)
and the ratio per dtype and variant. `--off NAME` marks a probe of `kernels_ltg_gpt` as failed
(e.g. `onednn_training_linear`, `onednn_linear`) to see what a machine where it fails would get;
`--mkl-gradients` computes the gradients in MKL with oneDNN forward products.
"""

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model, after one warm-up step")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    parser.add_argument("--mask", action="store_true", help="also time steps given an all-ones attention_mask")
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "eager"], help="transformers' attention")
    parser.add_argument("--off", default="", help="comma list of kernels_ltg_gpt probes to mark as failed")
    parser.add_argument("--mkl-gradients", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (a smoke test)")
    args = parser.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ltg.conversion import convert_from_hf_gpt2
    from hf_ltg.gpt import LtgGptForCausalLM
    from hf_ltg.gpt import kernels_ltg_gpt as kernels

    torch.set_num_threads(args.threads)
    for name in filter(None, (n.strip() for n in args.off.split(","))):
        for dtype in (torch.float32, torch.bfloat16):
            kernels._PROBED[(name, dtype)] = False
    if args.mkl_gradients:
        kernels.onednn_gradients_are_faster = lambda: False
    size = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512) if args.tiny else dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257)
    batch, length = (2, 32) if args.tiny else (4, 256)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        GPT2LMHeadModel(GPT2Config(**size, n_positions=1024, bos_token_id=0, eos_token_id=0)).save_pretrained(folder / "gpt2")
        convert_from_hf_gpt2(folder / "gpt2", folder / "ours")
        models = {
            "ours": LtgGptForCausalLM.from_pretrained(folder / "ours"),
            "transformers": GPT2LMHeadModel.from_pretrained(folder / "gpt2", attn_implementation=args.attention),
        }
    ids = torch.randint(0, size["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))
    print(f"train_alternated: GPT-2 {'tiny' if args.tiny else 'small'}, batch {batch} x {length}, threads "
          f"{args.threads}, transformers attention {args.attention}, probes off: {args.off or 'none'}"
          f"{', MKL gradients' if args.mkl_gradients else ''}", flush=True)
    for dtype in args.dtypes.split(","):
        for masked in ([False, True] if args.mask else [False]):
            optimizers = {k: torch.optim.AdamW(m.train().parameters(), lr=1e-5) for k, m in models.items()}
            times = {k: [] for k in models}
            for _ in range(args.steps + 1):
                for key, model in models.items():
                    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
                    start = time.perf_counter()
                    with autocast:
                        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids) if masked else None,
                                     labels=ids).loss
                    loss.backward()
                    optimizers[key].step()
                    optimizers[key].zero_grad(set_to_none=True)
                    times[key].append(time.perf_counter() - start)
            rate = {k: batch * length / statistics.median(t[1:]) for k, t in times.items()}
            print(f"{dtype}{' masked' if masked else ''}: ours {rate['ours']:.0f} tok/s, transformers "
                  f"{rate['transformers']:.0f} tok/s, ratio {rate['ours'] / rate['transformers']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
