"""The GPU half of bench_gpt.py (`python benchmarks/bench_gpt.py --device cuda`).

Per size (GPT-2 small, then medium), bf16, T = 1024, against transformers' GPT2LMHeadModel with
the same weights, contestants alternating (A B A B ...), medians over the repeats:
- training tokens/s and MFU (model FLOP/s over the bf16 matmul peak measured in the same run):
  eager (ours, transformers eager and sdpa) and compiled (ours fullgraph=True, transformers with
  its faster eager attention); every step is forward + backward + fused AdamW under bf16 autocast;
- peak memory of one training step above the memory before it (parameters + AdamW state);
- greedy `generate` tokens/s at batch 1 and 64 (bf16 weights, 32-token prompt, 128 new tokens),
  with the dynamic cache and with the static cache (transformers then compiles the decoding step),
  and the share of the HBM bandwidth bound (batch x copy GB/s / weight bytes) at batch 1.
Targets (issue 19): training >= 1.3x transformers compiled and >= 45 % MFU for GPT-2 small at
T=1024; generate b1 >= 1.5x transformers and >= 50 % of the bandwidth bound.

Sections run in the order above, small before medium; with --budget, those that would start
after it are reported as skipped. Prints a Markdown table; --json writes the rows and the machine.
--dry-run prints the plan without touching a GPU.
"""

import gc
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers


def plan(args):
    """[(section, size)] in the order they run."""
    steps = []
    for size in args.sizes.split(","):
        steps += [("train-eager", size), ("train-compiled", size)]
        if size == args.sizes.split(",")[0]:
            steps += [("generate-dynamic", size), ("generate-static", size)]
    return steps


class Report:
    def __init__(self, fmt):
        self.rows = []
        self.fmt = fmt  # bench_gpt.fmt

    def add(self, what, ours=None, hf=None, unit="", hf_name="", eff_ours="", eff_hf="", target="", note=""):
        ratio = ours / hf if isinstance(ours, float) and isinstance(hf, float) and hf else None
        row = dict(measurement=what, ours=ours, transformers=hf, transformers_variant=hf_name, unit=unit,
                   ratio=ratio, eff_ours=eff_ours, eff_transformers=eff_hf, target=target, note=note)
        self.rows.append(row)
        fmt = self.fmt
        print(f"  {what}: ours {fmt(ours)} | transformers {hf_name} {fmt(hf)} {unit} | ratio {fmt(ratio, 2)} "
              f"| {eff_ours} {target} {note}", flush=True)
        return row

    def markdown(self):
        lines = ["| measurement | ours | transformers | unit | ours / transformers | eff ours | eff transformers "
                 "| target | note |", "|---|---|---|---|---|---|---|---|---|"]
        fmt = self.fmt
        for r in self.rows:
            hf = f"{fmt(r['transformers'])} ({r['transformers_variant']})" if r["transformers_variant"] else fmt(
                r["transformers"])
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            lines.append(f"| {r['measurement']} | {fmt(r['ours'])} | {hf} | {r['unit']} | {ratio} | "
                         f"{r['eff_ours']} | {r['eff_transformers']} | {r['target']} | {r['note']} |")
        return "\n".join(lines)


def cuda_main(args, bench):
    """`bench` is the bench_gpt module (its models, timers and FLOP counts)."""
    steps = plan(args)
    header = dict(sizes=args.sizes, batch=args.batch, seq=args.seq, generate_batches=args.generate_batches,
                  prompt=args.prompt, new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats,
                  budget_s=args.budget, plan=[f"{section} {size}" for section, size in steps])
    if args.dry_run:
        print("bench_gpt --device cuda plan: " + json.dumps(header, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(dict(dry_run=True, **header), indent=1))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpt --device cuda: error: no CUDA device here (torch.cuda.is_available() is False); "
                         "run on a GPU machine, or pass --dry-run to check the plan.")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU user runs (training is bf16 autocast anyway)
    started = time.perf_counter()
    report = Report(bench.fmt)
    machine = dict(gpu=torch.cuda.get_device_name(device), torch=torch.__version__, cuda=torch.version.cuda,
                   transformers=transformers.__version__, python=platform.python_version(),
                   date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    print(f"bench_gpt cuda: {json.dumps(machine)}\n{json.dumps(header)}", flush=True)

    ceilings = dict(bf16=bench.matmul_peak(torch.bfloat16, device, 8192, 2.0),
                    copy=bench.copy_bandwidth(device, 1024, 2.0))
    print(f"ceilings: bf16 matmul {ceilings['bf16'] / 1e3:.0f} TFLOP/s, copy {ceilings['copy']:.0f} GB/s", flush=True)

    def out_of_time():
        return args.budget and time.perf_counter() - started > args.budget

    def dump():  # after every section, so that a run stopped from outside keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(dict(
                machine=machine, settings=header, ceilings_gflops_gbps=ceilings,
                elapsed_s=time.perf_counter() - started, rows=report.rows, markdown=report.markdown()), indent=1))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for section, size in steps:
            if out_of_time():
                report.add(f"{section} {size}", note=f"skipped: past the {args.budget:.0f} s budget")
                continue
            if size not in folders:
                folders[size] = Path(tmp) / size
                bench.build_checkpoints(size, folders[size])
            try:
                SECTIONS[section](args, bench, device, folders[size], size, ceilings, report)
            except Exception as error:  # one failed section must not lose the others
                report.add(f"{section} {size}", note=f"failed: {type(error).__name__}: "
                           f"{str(error).splitlines()[0][:150] if str(error) else ''}")
            torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
            dump()

    elapsed = time.perf_counter() - started
    table = report.markdown()
    print(f"\nbench_gpt results ({machine['gpu']}, {machine['date']}, torch {machine['torch']}, transformers "
          f"{machine['transformers']}, batch {args.batch} x {args.seq}, {elapsed:.0f} s; ceilings: bf16 matmul "
          f"{ceilings['bf16'] / 1e3:.0f} TFLOP/s, copy {ceilings['copy']:.0f} GB/s read + write)\n")
    print(table)
    dump()
    return 0


# --------------------------------------------------------------------------- sections


def _train(args, bench, device, folder, size, ceilings, report, compiled):
    names = ["ours", "hf-sdpa"] if compiled else ["ours", "hf-eager", "hf-sdpa"]
    models = {name: bench.load_model(name, folder, device) for name in names}
    compile_kwargs = {name: (dict(fullgraph=True) if name == "ours" else {}) if compiled else None for name in names}
    steps = {name: bench.TrainingStep(m, args.batch, args.seq, device, torch.bfloat16, compile_kwargs[name])
             for name, m in models.items()}
    note = ""
    if compiled:
        start = time.perf_counter()
        for step in steps.values():
            step()
        note = f"ours fullgraph=True; compile of both {time.perf_counter() - start:.0f} s"
    secs = bench.alternate(steps, args.warmup, args.repeats, device)
    tokens = args.batch * args.seq
    tok_s = {name: tokens / s for name, s in secs.items()}
    flops = bench.training_flops_per_token(models["ours"], args.seq)
    hf = max((n for n in names if n != "ours"), key=tok_s.get)

    def mfu(value):
        return bench.pct(value * flops / 1e9 / ceilings["bf16"])

    target = ""
    if compiled and size == "gpt2-small" and args.seq >= 1024:
        met = tok_s["ours"] / tok_s[hf] >= 1.3 and tok_s["ours"] * flops / 1e9 / ceilings["bf16"] >= 0.45
        target = f"{'met' if met else 'NOT met'} (>= 1.3x, >= 45% MFU)"
    report.add(f"{size} train bf16 {'compiled' if compiled else 'eager'}", tok_s["ours"], tok_s[hf], "tok/s", hf[3:],
               mfu(tok_s["ours"]), mfu(tok_s[hf]), target, note)
    if not compiled:  # peak memory of one step, each model alone
        peaks = {}
        for name, step in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize()
            peaks[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        report.add(f"{size} train bf16 peak memory", peaks["ours"], peaks[hf], "MiB", hf[3:],
                   note="peak allocation of one step above the allocation before it (parameters, AdamW "
                   "state); lower is better")
    del models, steps


def train_eager(*a):
    _train(*a, compiled=False)


def train_compiled(*a):
    _train(*a, compiled=True)


def _generate(args, bench, device, folder, size, ceilings, report, static):
    models = {name: bench.load_model(name, folder, device, torch.bfloat16) for name in ("ours", "hf-sdpa")}
    nbytes = bench.weight_bytes(models["ours"])
    extra = dict(cache_implementation="static") if static else {}
    for batch in map(int, args.generate_batches.split(",")):
        runs = {name: bench.generate_fn(m, batch, args.prompt, args.new_tokens, device, **extra)
                for name, m in models.items()}
        note = ""
        if static:  # the first call compiles the decoding step (one shape per batch size)
            start = time.perf_counter()
            for name, run in list(runs.items()):
                try:
                    run()
                except Exception as error:  # time the other contestant alone, say why
                    del runs[name]
                    note += f"{name} failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}; "
            note += f"first calls (compile) {time.perf_counter() - start:.0f} s"
            if "ours" not in runs:
                report.add(f"{size} generate b{batch} bf16 static cache, compiled", note=note)
                continue
        secs = bench.alternate(runs, 1, args.repeats, device)
        tok_s = {name: batch * args.new_tokens / s for name, s in secs.items()}
        tok_s.setdefault("hf-sdpa", None)
        bound = batch * ceilings["copy"] * 1e9 / nbytes  # tokens/s if every step only read the weights once

        eff_ours = bench.pct(tok_s["ours"] / bound) if batch == 1 else ""
        eff_hf = bench.pct(tok_s["hf-sdpa"] / bound) if batch == 1 and tok_s["hf-sdpa"] else ""
        target = ""
        if batch == 1 and static and tok_s["hf-sdpa"]:
            met = tok_s["ours"] / tok_s["hf-sdpa"] >= 1.5 and tok_s["ours"] / bound >= 0.5
            target = f"{'met' if met else 'NOT met'} (>= 1.5x, >= 50% of bound)"
        report.add(f"{size} generate b{batch} bf16 {'static cache, compiled' if static else 'dynamic cache'}",
                   tok_s["ours"], tok_s["hf-sdpa"], "tok/s", "sdpa", eff_ours, eff_hf, target, note)
    del models


def generate_dynamic(*a):
    _generate(*a, static=False)


def generate_static(*a):
    _generate(*a, static=True)


SECTIONS = {"train-eager": train_eager, "train-compiled": train_compiled,
            "generate-dynamic": generate_dynamic, "generate-static": generate_static}
