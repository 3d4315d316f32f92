"""LTG GPT against transformers' GPT2LMHeadModel: same config, same weights, one process.

    python benchmarks/bench_gpt.py --size gpt2-small      # the full table (~10 min on 2 CPU cores)
    python benchmarks/bench_gpt.py --quick                # a tiny model, a few steps (CI)
    python benchmarks/bench_gpt.py --device cuda          # GPU: GPT-2 small + medium, bf16, T=1024 (cuda_main)
    python benchmarks/bench_gpt.py --device cuda --dry-run --json plan.json   # the GPU plan, without a GPU
    python benchmarks/bench_gpt.py --isa avx2             # as on an AVX2-only CPU (oneDNN and ATen capped)

The header names the CPU, the ISA flags that decide the CPU paths (avx2, avx512f, avx512_bf16,
amx), the ISA cap in force, and what the model's one-time probes decided (oneDNN linear per dtype,
native 16-bit products).

A random GPT2LMHeadModel is saved and converted with `convert_from_hf_gpt2`, so both sides
compute the same function. Contestants run alternately (A B C A B C ...) so that both see the
same machine load; each figure is the median over the timed repeats. transformers runs with
both attention implementations (eager, sdpa) and ours is compared with the faster one.

Measured:
- the machine's ceilings: fp32 and bf16 matmul GFLOP/s, memory copy GB/s (reads + writes);
- a training step (forward + backward + AdamW), fp32 and bf16 autocast, eager and compiled;
- greedy `generate` tok/s at batch 1 and 8 (32-token prompt, 128 new tokens), fp32 and bf16
  weights; on CPU ours also with `pack_cpu_weights()` (opt-in, a second copy of the weights);
- the peak memory of a training step, each model in its own child process (peak resident
  set size above the resident size before the step, with parameters and AdamW state loaded).

Efficiency: training FLOPs = 6 * (matmul parameters) * tokens + 12 * layers * width * seq
* tokens (attention); a decoded token reads every weight once, so the memory bound on
decoding is batch * bandwidth / weight bytes.
"""

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SIZES = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=256),
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- helpers

ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
DECIDING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
                  "avx_ne_convert", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """The CPU model, the flags that decide the kernels, the cap in force and the probes' verdicts."""
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    from hf_ltg.gpt import kernels_ltg_gpt as kernels

    present = [flag for flag in DECIDING_FLAGS if flag in flags] or ["(flags unknown)"]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "none")
    verdicts = (f"oneDNN linear fp32 {kernels.onednn_linear_works(torch.float32)}, "
                f"bf16 {kernels.onednn_linear_works(torch.bfloat16)}; "
                f"native bf16 products {kernels.native_16bit_matmul(torch.bfloat16)}")
    return (f"cpu: {model}; flags: {' '.join(present)}; ISA cap: oneDNN {cap}, ATen "
            f"{os.environ.get('ATEN_CPU_CAPABILITY', 'none')} (ATen uses {torch.backends.cpu.get_cpu_capability()}); "
            f"probes: {verdicts}")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(contestants: dict, warmup: int, repeats: int, device) -> dict:
    """{name: fn} -> {name: median seconds}, running the contestants in turn (ABCABC...)."""
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def load_average():
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- ceilings

def matmul_peak(dtype, device, n, seconds):
    """Best GFLOP/s of an n x n x n matrix product over repeated runs."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 2 * n**3 / timed(lambda: torch.mm(a, b), device) / 1e9)
    return best


def copy_bandwidth(device, megabytes, seconds):
    """Best GB/s of a tensor copy, counting bytes read plus bytes written."""
    src = torch.ones(megabytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = max(best, 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), device) / 1e9)
    return best


# --------------------------------------------------------------------------- models

def build_checkpoints(size, folder: Path):
    """A random GPT2LMHeadModel saved to folder/'gpt2', converted to folder/'ours'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ltg.conversion import convert_from_hf_gpt2

    torch.manual_seed(0)
    config = GPT2Config(**SIZES[size], bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder / "gpt2")
    convert_from_hf_gpt2(folder / "gpt2", folder / "ours")


def load_model(name, folder: Path, device, dtype=torch.float32):
    """name: 'ours' or 'hf-eager' / 'hf-sdpa' (transformers with that attention)."""
    from transformers import GPT2LMHeadModel

    from hf_ltg.gpt import LtgGptForCausalLM

    if name == "ours":
        model = LtgGptForCausalLM.from_pretrained(folder / "ours", dtype=dtype)
    else:
        model = GPT2LMHeadModel.from_pretrained(folder / "gpt2", dtype=dtype, attn_implementation=name[3:])
    return model.to(device)


def matmul_parameters(model):
    """Parameters that enter a matrix product (every Linear/Conv1D weight and the LM head)."""
    config = model.config  # an LtgGptConfig
    width = config.hidden_size
    per_layer = 4 * width * width + 2 * width * config.intermediate_size
    return config.num_hidden_layers * per_layer + config.vocab_size * width


def training_flops_per_token(model, seq):
    config = model.config
    return 6 * matmul_parameters(model) + 12 * config.num_hidden_layers * config.hidden_size * seq


def weight_bytes(model):
    """Bytes a decoded token reads: every parameter except the position table (one row)."""
    total = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "wpe" not in n)
    return total


class TrainingStep:
    """One forward + backward + AdamW step on a fixed random batch."""

    def __init__(self, model, batch, seq, device, autocast_dtype=None, compile_kwargs=None):
        generator = torch.Generator().manual_seed(1)
        vocab = model.config.vocab_size
        self.ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(device)
        self.model = model.train()
        self.forward = torch.compile(model, **compile_kwargs) if compile_kwargs is not None else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        self.autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                         else nullcontext())

    def __call__(self):
        with self.autocast:
            loss = self.forward(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def generate_fn(model, batch, prompt, new_tokens, device, **generate_kwargs):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, model.config.vocab_size, (batch, prompt), generator=generator).to(device)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                    attention_mask=torch.ones_like(ids), **generate_kwargs)
    model.eval()

    def run():
        with torch.inference_mode():
            return model.generate(ids, **settings)
    return run


# --------------------------------------------------------------------------- memory (child process)

def _status_kb(key):
    return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def memory_child(args):
    """Peak RSS of one training step above the RSS before it; prints one JSON line."""
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cpu")
    model = load_model(args.memory_child, Path(args.folder), device)
    step = TrainingStep(model, args.batch, args.seq, device, DTYPES[args.dtype] if args.dtype != "fp32" else None)
    step()  # AdamW state now exists; gradients are freed by zero_grad(set_to_none=True)
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM)
    before = _status_kb("VmRSS")
    step()
    peak = _status_kb("VmHWM")
    print(json.dumps(dict(before_mb=before / 1024, peak_mb=peak / 1024, step_mb=(peak - before) / 1024)))


def measure_memory(names, dtype, args, folder, parallel):
    """{name: figures} from one child process per model (all at once when `parallel`)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")  # return freed memory
    results, running = {}, {}
    for name in names:
        cmd = [sys.executable, __file__, "--memory-child", name, "--dtype", dtype, "--folder", str(folder),
               "--batch", str(args.batch), "--seq", str(args.seq), "--threads", str(args.threads)]
        running[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not parallel:
            results[name] = _child_result(name, dtype, running.pop(name))
    for name, child in running.items():
        results[name] = _child_result(name, dtype, child)
    return results


def _child_result(name, dtype, child):
    out, err = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"memory child {name} {dtype} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report

class Table:
    def __init__(self):
        self.rows = []

    def add(self, what, ours, eager, sdpa, unit, ratio=None, eff_ours="", eff_hf="", note=""):
        best = None if eager is None and sdpa is None else max(v for v in (eager, sdpa) if v is not None)
        if ratio is None and best:
            ratio = ours / best
        self.rows.append((what, ours, eager, sdpa, unit, ratio, eff_ours, eff_hf, note))
        print(f"  {what}: ours {fmt(ours)} | hf eager {fmt(eager)} | hf sdpa {fmt(sdpa)} {unit}"
              f" | ratio {fmt(ratio, 2)}x {note}", flush=True)

    def print(self):
        header = ("measurement", "ours", "hf eager", "hf sdpa", "unit", "ours/hf best", "eff ours", "eff hf best",
                  "note")
        rows = [header] + [(w, fmt(o), fmt(e), fmt(s), u, f"{fmt(r, 2)}x" if r is not None else "-",
                            eo() if callable(eo) else eo, eh() if callable(eh) else eh, n)
                           for w, o, e, s, u, r, eo, eh, n in self.rows]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
        line = "+".join("-" * (w + 2) for w in widths)
        print("\n" + line)
        for i, row in enumerate(rows):
            print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
            if i == 0:
                print(line)
        print(line)


def fmt(value, digits=None):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}"


def pct(x):
    return f"{100 * x:.0f}%"


# --------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="gpt2-small", choices=sorted(SIZES))
    parser.add_argument("--quick", action="store_true", help="tiny model, short sequences, few steps (CI)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--generate-batches", default="1,8")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: "
                        "ceilings,train,compile,generate,static,memory")
    parser.add_argument("--train-dtypes", default="fp32,bf16", help="eager training dtypes (fp32,bf16)")
    parser.add_argument("--memory-dtypes", default="fp32,bf16", help="training dtypes whose peak memory is measured")
    parser.add_argument("--compile-dtypes", default="bf16", help="training dtypes to compile (fp32,bf16)")
    parser.add_argument("--isa", default="default", choices=["default", *ISA_CAPS],
                        help="run the whole table with oneDNN and ATen capped at this ISA level (a subprocess)")
    parser.add_argument("--sizes", default="gpt2-small,gpt2-medium", help="GPU: model sizes, in order")
    parser.add_argument("--json", help="GPU: also write the rows and the machine as JSON to this path")
    parser.add_argument("--budget", type=float, default=0.0,
                        help="GPU: seconds after which the remaining sections are skipped (0: no limit)")
    parser.add_argument("--dry-run", action="store_true", help="GPU: print the plan and exit, without a GPU")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):  # GPU defaults: the T=1024, batch-64 decoding, more repeats
        parser.set_defaults(batch=8, seq=1024, generate_batches="1,64", repeats=5, warmup=3)
        args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if args.device.startswith("cuda"):
        from bench_gpt_cuda import cuda_main  # benchmarks/bench_gpt_cuda.py, beside this file

        return cuda_main(args, sys.modules[__name__])
    if args.isa != "default" and any(os.environ.get(k) != v for k, v in ISA_CAPS[args.isa].items()):
        # both libraries read the cap once, when torch is imported: rerun in a process that has it
        env = {**os.environ, **ISA_CAPS[args.isa]}
        return subprocess.call([sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env=env)
    if args.quick:
        args.size, args.batch, args.seq, args.warmup, args.repeats = "tiny", 2, 64, 1, 2
        args.prompt, args.new_tokens = 8, 8
    skip = set(filter(None, args.skip.split(",")))
    if args.quick:
        skip |= {"compile", "static"}

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    device = torch.device(args.device)
    table = Table()
    started = time.perf_counter()
    print(f"bench_gpt: size {args.size}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} x {args.seq}, load average {load_average()}", flush=True)
    if device.type == "cpu":
        print(cpu_description(), flush=True)

    # ceilings: measured at the start and again at the end, keeping the best (the load varies)
    ceilings = {}

    def measure_ceilings():
        if "ceilings" in skip:
            return
        n, seconds = (512, 0.3) if args.quick else (8192 if device.type == "cuda" else 2048, 3.0)
        found = dict(fp32=matmul_peak(torch.float32, device, n, seconds),
                     bf16=matmul_peak(torch.bfloat16, device, n, seconds),
                     copy=copy_bandwidth(device, 64 if args.quick else 512, seconds))
        for key, value in found.items():
            ceilings[key] = max(value, ceilings.get(key, 0.0))
        print(f"ceilings now: fp32 matmul {found['fp32']:.0f} GFLOP/s, bf16 matmul {found['bf16']:.0f} GFLOP/s, "
              f"copy {found['copy']:.1f} GB/s (load average {load_average()})", flush=True)

    def train_efficiency(tok_s, flops_per_token, dtype):
        return lambda: pct(tok_s * flops_per_token / 1e9 / ceilings[dtype]) if dtype in ceilings else ""

    def decode_efficiency(tok_s, batch, nbytes):
        return lambda: pct(tok_s / (batch * ceilings["copy"] * 1e9 / nbytes)) if "copy" in ceilings else ""

    measure_ceilings()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_checkpoints(args.size, folder)
        names = ["ours", "hf-eager", "hf-sdpa"]
        tokens = args.batch * args.seq

        # training, eager mode -------------------------------------------------
        best_hf_attn = {}
        if "train" not in skip:
            for dtype in args.train_dtypes.split(","):
                models = {name: load_model(name, folder, device) for name in names}
                autocast = DTYPES[dtype] if dtype != "fp32" else None
                steps = {name: TrainingStep(m, args.batch, args.seq, device, autocast) for name, m in models.items()}
                secs = alternate(steps, args.warmup, args.repeats, device)
                tok_s = {name: tokens / s for name, s in secs.items()}
                flops = training_flops_per_token(models["ours"], args.seq)
                best_hf_attn[dtype] = max(("hf-eager", "hf-sdpa"), key=tok_s.get)
                table.add(f"train step {dtype}{' autocast' if autocast else ''}", tok_s["ours"],
                          tok_s["hf-eager"], tok_s["hf-sdpa"], "tok/s",
                          eff_ours=train_efficiency(tok_s["ours"], flops, dtype),
                          eff_hf=train_efficiency(tok_s[best_hf_attn[dtype]], flops, dtype))
                del models, steps
                gc.collect()

        # training, compiled -----------------------------------------------------
        def compiled_training(dtype):
            hf_name = best_hf_attn.get(dtype, "hf-sdpa")
            models = {"ours": load_model("ours", folder, device), hf_name: load_model(hf_name, folder, device)}
            autocast = DTYPES[dtype] if dtype != "fp32" else None
            compile_start = time.perf_counter()
            steps = {"ours": TrainingStep(models["ours"], args.batch, args.seq, device, autocast,
                                          compile_kwargs=dict(fullgraph=True)),
                     hf_name: TrainingStep(models[hf_name], args.batch, args.seq, device, autocast,
                                           compile_kwargs={})}
            for step in steps.values():  # compile outside the timed loop
                step()
            print(f"  compiled both ({dtype}) in {time.perf_counter() - compile_start:.0f} s", flush=True)
            secs = alternate(steps, args.warmup, args.repeats, device)
            tok_s = {name: tokens / s for name, s in secs.items()}
            flops = training_flops_per_token(models["ours"], args.seq)
            table.add(f"train step {dtype} compiled", tok_s["ours"], tok_s.get("hf-eager"),
                      tok_s.get("hf-sdpa"), "tok/s", ratio=tok_s["ours"] / tok_s[hf_name],
                      eff_ours=train_efficiency(tok_s["ours"], flops, dtype),
                      eff_hf=train_efficiency(tok_s[hf_name], flops, dtype),
                      note=f"ours fullgraph=True; hf {hf_name[3:]} (faster eager-mode attention)")
            del models, steps

        if "compile" not in skip:
            for dtype in filter(None, args.compile_dtypes.split(",")):
                try:
                    compiled_training(dtype)
                except Exception as error:  # report it in the table and go on with the other sections
                    table.add(f"train step {dtype} compiled", "failed", None, None, "", ratio=None,
                              note=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
                torch._dynamo.reset()
                gc.collect()

        # generation ------------------------------------------------------------
        if "generate" not in skip:
            for dtype in ("fp32", "bf16"):
                models = {name: load_model(name, folder, device, DTYPES[dtype]) for name in names}
                if device.type == "cpu":  # a second copy of ours with oneDNN-packed weights (opt-in)
                    models["ours-packed"] = load_model("ours", folder, device, DTYPES[dtype]).pack_cpu_weights()
                for batch in map(int, args.generate_batches.split(",")):
                    runs = {name: generate_fn(m, batch, args.prompt, args.new_tokens, device)
                            for name, m in models.items()}
                    secs = alternate(runs, 1, args.repeats, device)
                    tok_s = {name: batch * args.new_tokens / s for name, s in secs.items()}
                    nbytes = weight_bytes(models["ours"])
                    best = max(tok_s["hf-eager"], tok_s["hf-sdpa"])
                    table.add(f"generate b{batch} {dtype}", tok_s["ours"], tok_s["hf-eager"], tok_s["hf-sdpa"],
                              "tok/s", eff_ours=decode_efficiency(tok_s["ours"], batch, nbytes),
                              eff_hf=decode_efficiency(best, batch, nbytes),
                              note="eff = of the memory-bandwidth bound (batch x copy GB/s / weight bytes)")
                    if "ours-packed" in tok_s:
                        table.add(f"generate b{batch} {dtype}, ours pack_cpu_weights()", tok_s["ours-packed"],
                                  tok_s["hf-eager"], tok_s["hf-sdpa"], "tok/s",
                                  eff_ours=decode_efficiency(tok_s["ours-packed"], batch, nbytes),
                                  eff_hf=decode_efficiency(best, batch, nbytes),
                                  note="opt-in: a second, oneDNN-reordered copy of the linear weights in memory")
                if "static" not in skip:
                    run = generate_fn(models["ours"], 1, args.prompt, args.new_tokens, device,
                                      cache_implementation="static")
                    dynamic = generate_fn(models["ours"], 1, args.prompt, args.new_tokens, device)
                    secs = alternate({"static": run, "dynamic": dynamic}, 1, args.repeats, device)
                    table.add(f"generate b1 {dtype}, ours static cache", args.new_tokens / secs["static"],
                              None, None, "tok/s", ratio=secs["dynamic"] / secs["static"],
                              note="ratio = static / dynamic cache (ours)")
                del models
                gc.collect()

        # peak memory -----------------------------------------------------------
        if "memory" not in skip and device.type == "cpu":
            for dtype in ("fp32",) if args.quick else args.memory_dtypes.split(","):
                mem = measure_memory(names, dtype, args, folder, parallel=args.quick)
                hf_best = best_hf_attn.get(dtype, "hf-sdpa")
                table.add(f"train step peak memory {dtype}", mem["ours"]["step_mb"], mem["hf-eager"]["step_mb"],
                          mem["hf-sdpa"]["step_mb"], "MB", ratio=mem["ours"]["step_mb"] / mem[hf_best]["step_mb"],
                          note=f"peak RSS above the {mem['ours']['before_mb']:.0f} MB before the step "
                          f"(params + AdamW); vs hf {hf_best[3:]}")
                table.add(f"  (absolute peak RSS {dtype})", mem["ours"]["peak_mb"], mem["hf-eager"]["peak_mb"],
                          mem["hf-sdpa"]["peak_mb"], "MB", ratio=mem["ours"]["peak_mb"] / mem[hf_best]["peak_mb"])
        elif "memory" not in skip and device.type == "cuda":
            for dtype in ("fp32", "bf16"):
                mem = {}
                for name in names:
                    model = load_model(name, folder, device)
                    step = TrainingStep(model, args.batch, args.seq, device, DTYPES[dtype] if dtype != "fp32" else None)
                    step()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                    step()
                    mem[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
                    del model, step
                table.add(f"train step peak memory {dtype}", mem["ours"], mem["hf-eager"], mem["hf-sdpa"], "MB",
                          ratio=mem["ours"] / mem[best_hf_attn.get(dtype, "hf-sdpa")])

    measure_ceilings()
    print(f"\nbench_gpt results: {args.size}, {device}, batch {args.batch} x {args.seq}, "
          f"load average now {load_average()}, {time.perf_counter() - started:.0f} s")
    if device.type == "cpu":
        print(cpu_description())
    if ceilings:
        print(f"ceilings (best of start and end): fp32 matmul {ceilings['fp32']:.0f} GFLOP/s, "
              f"bf16 matmul {ceilings['bf16']:.0f} GFLOP/s, copy {ceilings['copy']:.1f} GB/s (read + write)")
    print("ratio: ours / transformers at its faster attention (for memory: lower is better); "
          "train eff = model FLOP/s / matmul peak of that dtype (MFU); generate eff = of the bandwidth bound")
    table.print()


if __name__ == "__main__":
    main()
