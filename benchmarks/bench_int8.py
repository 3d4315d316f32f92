"""Decode speed of int8 vs fp32 vs bf16 LTG GPT at batch 1 (greedy generate, KV cache).

    python benchmarks/bench_int8.py --preset gpt2-small            # random weights, GPT-2 small shape
    python benchmarks/bench_int8.py --checkpoint checkpoints/run    # a trained checkpoint

Every variant is timed in turn within one run, `--repeats` rounds, and the best round counts
(the machine is shared: the minimum is the least disturbed). Tokens/s counts new tokens only;
the prompt is short so that decoding dominates. The load average is printed with the figures.
On a busy shared machine, `--clock cpu --threads 1` times the process's CPU time instead of the
wall clock: it leaves out the time spent waiting for a core (memory-bandwidth contention remains).
"""

import argparse
import copy
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_ltg import LtgGptConfig, LtgGptForCausalLM  # noqa: E402
from hf_ltg.quantization import quantize_model  # noqa: E402

VARIANTS = ("fp32", "bf16", "absmax", "zeropoint", "llm-int8", "absmax+head", "absmax-bf16+head", "torchao-int8wo")


def build(variant, float_model):
    model = copy.deepcopy(float_model)
    if variant == "fp32":
        return model
    if variant == "bf16":
        return model.to(torch.bfloat16)
    if variant == "torchao-int8wo":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
        return model
    scheme, _, head = variant.partition("+")
    dtype = torch.bfloat16 if scheme.endswith("-bf16") else None
    model = quantize_model(model, scheme.removesuffix("-bf16"), include_lm_head=bool(head))
    return model.to(dtype) if dtype else model


def weight_bytes(model):
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


@torch.no_grad()
def decode_time(model, prompt, new_tokens):
    start = clock()
    out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)
    elapsed = clock() - start
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default="gpt2-small", help="random-weight model of this size")
    source.add_argument("--checkpoint", help="trained checkpoint folder")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.checkpoint:
        float_model = LtgGptForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    else:
        float_model = LtgGptForCausalLM(LtgGptConfig.from_preset(args.preset)).eval()
    config = float_model.config
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_length))
    variants = []
    for name in args.variants:
        try:
            variants.append((name, build(name, float_model).eval()))
        except ImportError as error:
            print(f"skipping {name}: {error}")
    del float_model
    gc.collect()

    load_before = os.getloadavg()
    best = {name: float("inf") for name, _ in variants}
    for _, model in variants:
        decode_time(model, prompt, 4)  # warm-up
    for _ in range(args.repeats):
        for name, model in variants:
            best[name] = min(best[name], decode_time(model, prompt, args.new_tokens))
    load_after = os.getloadavg()

    size = args.checkpoint or args.preset
    print(f"\n{size}: hidden {config.hidden_size}, layers {config.num_hidden_layers}, vocab {config.vocab_size}; "
          f"batch 1, prompt {args.prompt_length}, {args.new_tokens} new tokens, best of {args.repeats}, "
          f"{args.threads} threads, {args.clock} clock; load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    bf16 = best.get("bf16")
    rows = {}
    print(f"{'variant':<18}{'tok/s':>9}{'vs fp32':>9}{'vs bf16':>9}{'weights MB':>12}")
    for name, model in variants:
        tps = args.new_tokens / best[name]
        rows[name] = dict(tokens_per_s=tps, weight_bytes=weight_bytes(model))
        vs_fp32 = best["fp32"] / best[name] if "fp32" in best else float("nan")
        vs_bf16 = bf16 / best[name] if bf16 else float("nan")
        print(f"{name:<18}{tps:>9.1f}{vs_fp32:>8.2f}x{vs_bf16:>8.2f}x{weight_bytes(model) / 1e6:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(model=size, load_average=[load_before, load_after],
                                                   new_tokens=args.new_tokens, clock=args.clock,
                                                   threads=args.threads, results=rows), indent=2))


if __name__ == "__main__":
    main()
