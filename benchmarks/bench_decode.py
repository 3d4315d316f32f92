"""CPU decoding: hf_ltg against transformers, llama.cpp and ONNX Runtime GenAI on the same weights.

    python benchmarks/bench_decode.py                         # the full table (~25 min on 2 quiet cores)
    python benchmarks/bench_decode.py --quick                 # a tiny model, one round (a smoke test)
    python benchmarks/bench_decode.py --rows 'ours-*,llama-*' --sections b1 --rounds 3
    python benchmarks/bench_decode.py --work-dir /tmp/bench-decode   # keep the exports for the next run

One random GPT-2 (GPT-2 small's shape by default: 124 M parameters, vocabulary 50257) is built by
transformers, converted by hf_ltg (`convert_from_hf_gpt2`) and exported by hf_ltg to every other
engine (`hf-ltg export --gguf` f32/f16/q8_0/q4_0/q4_1, `hf-ltg export --onnx`, `hf-ltg quantize`),
so every row computes the same function up to its number format:

  ours-fp32 / ours-bf16          hf_ltg, `from_pretrained(dtype=...)`, default settings
  ours-fp32-dynamic              hf_ltg fp32 with transformers' dynamic KV cache (the default before)
  ours-bf16-packed               hf_ltg bf16 with `pack_cpu_weights()` (opt-in second copy)
  ours-int8-absmax               `hf-ltg quantize --scheme absmax` (int8 x int8 products, W8A8)
  ours-int8wo / ours-int4        `hf-ltg quantize --scheme int8-weight-only / int4-weight-only`
  hf-fp32 / hf-bf16              transformers' GPT2LMHeadModel, sdpa attention
  llama-f32 ... llama-q4_1       llama.cpp through llama-cpp-python's low-level API (greedy argmax
                                 on the logits, one sequence per batch row)
  ort-fp32                       ONNX Runtime GenAI on the `--onnx` export
(quantized rows quantize the LM head too, as llama.cpp's types do.)

Sections: b1 and b8 (batch 1 and 8, prompt 16 + 128 new tokens) and long (batch 1, prompt of
1,024 - 128 tokens + 128 new; its tok/s counts the decoded tokens only: total time minus the time
of a prompt + 1 token run, alternated with it). Rows run alternately (A B C ... A B C ...) for
`--rounds` rounds after one warm-up round; each figure is the median.

Bound: a decoded token reads every weight matrix once (and the KV cache), so the fastest a row can
decode is batch x memory bandwidth / bytes per step; the bandwidth is measured here (copy, reads +
writes, best of several) and each row reports its % of that bound. Bytes per weight: fp32 4, bf16 /
f16 2, q8_0 34/32, q4_0 18/32, q4_1 20/32, int8 1, int4 0.5 + bf16 scale and zero per 32 (the kernel's).
Greedy-token agreement: each row's greedy tokens against ours-fp32 (the count of leading tokens
that are equal, worst row of the batch); at fp32 every engine should agree on most of them.

Contestants that are not installed are skipped, with the command that installs them. The load
average is printed at the start, between sections and at the end: timings on a busy machine are
not comparable (run it on a quiet one, or say that it was not).
"""

import argparse
import ctypes
import fnmatch
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_gpt, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_gpt import SIZES, build_checkpoints, copy_bandwidth, cpu_description, fmt, load_average, pct  # noqa: E402

LLAMA_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "f32": 4, "f16": 2, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                    "int8": 1, "int4": 0.5 + 4 / 32}
INSTALL = {
    "llama": "pip install ../shared/wheels/llama_cpp_python-*.whl (AVX-512 build; elsewhere "
             "CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python, ~33 min on 2 cores)",
    "ort": "pip install onnxruntime-genai onnxruntime onnxscript",
    "gguf": "pip install gguf",
}


class Skip(Exception):
    """A contestant that cannot run here; the message says why and how to install it."""


# --------------------------------------------------------------------------- contestants

class Contestant:
    """One row: `run(ids (B, P) int64 numpy, new_tokens) -> (B, new_tokens) int64 numpy` of greedy tokens."""

    def __init__(self, key, engine, weights, run, weight_format, kv_bytes):
        self.key, self.engine, self.weights, self.run = key, engine, weights, run
        self.weight_format, self.kv_bytes = weight_format, kv_bytes  # kv_bytes: per cached value


def torch_contestant(key, engine, weights, model, weight_format, kv_bytes, **generate_kwargs):
    model.eval()

    def run(ids, new_tokens):
        ids = torch.from_numpy(ids)
        with torch.inference_mode():
            # no end-of-text token: every row decodes new_tokens, as llama.cpp's loop here does, without
            # generate's per-step end-of-text check over the vocabulary (min_new_tokens would add one)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0, **generate_kwargs)
        return out[:, ids.shape[1]:].numpy()

    return Contestant(key, engine, weights, run, weight_format, kv_bytes)


def ours_contestants(folder: Path, wanted, work: Path):
    from transformers import AutoModelForCausalLM

    from hf_ltg.quantization import quantize_checkpoint

    def load(path, dtype):
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)

    specs = {
        "ours-fp32": ("fp32", None, torch.float32, 4),
        "ours-fp32-dynamic": ("fp32, dynamic KV cache", None, torch.float32, 4),
        "ours-bf16": ("bf16", None, torch.bfloat16, 2),
        "ours-bf16-packed": ("bf16 + pack_cpu_weights()", None, torch.bfloat16, 2),
        "ours-int8-absmax": ("int8 absmax (W8A8)", "absmax", torch.float32, 4),
        "ours-int8wo": ("int8-weight-only", "int8-weight-only", torch.float32, 4),
        "ours-int4": ("int4-weight-only (group 32)", "int4-weight-only", torch.float32, 4),
    }
    formats = {"ours-fp32": "fp32", "ours-fp32-dynamic": "fp32", "ours-bf16": "bf16", "ours-bf16-packed": "bf16",
               "ours-int8-absmax": "int8", "ours-int8wo": "int8", "ours-int4": "int4"}
    loaded = {}  # (path, dtype) -> model, shared by rows that differ in generate settings only
    for key, (weights, scheme, dtype, kv) in specs.items():
        if not wanted(key):
            continue
        path = folder
        if scheme:
            path = work / f"ours-{scheme}"
            if not (path / "config.json").is_file():
                quantize_checkpoint(folder, path, scheme, include_lm_head=True)
        if key == "ours-bf16-packed":
            model = load(path, dtype).pack_cpu_weights()
        else:
            if (path, dtype) not in loaded:
                loaded[(path, dtype)] = load(path, dtype)
            model = loaded[(path, dtype)]
        cache = dict(cache_implementation="dynamic") if key.endswith("-dynamic") else {}
        yield torch_contestant(key, "hf_ltg", weights, model, formats[key], kv, **cache)


def transformers_contestants(gpt2_folder: Path, wanted):
    from transformers import GPT2LMHeadModel

    for key, dtype, name, kv in (("hf-fp32", torch.float32, "fp32", 4), ("hf-bf16", torch.bfloat16, "bf16", 2)):
        if wanted(key):
            model = GPT2LMHeadModel.from_pretrained(gpt2_folder, dtype=dtype, attn_implementation="sdpa")
            yield torch_contestant(key, "transformers GPT-2 (sdpa)", name, model, name, kv)


def llama_contestants(folder: Path, wanted, work: Path, threads: int, max_cells: int):
    keys = [f"llama-{t}" for t in LLAMA_TYPES if wanted(f"llama-{t}")]
    if not keys:
        return
    llama_cpp = import_llama_cpp()
    from hf_ltg.hub.export_gguf import export_gguf

    llama_cpp.llama_log_set(_SILENT_LLAMA_LOG, ctypes.c_void_p(0))  # its per-context reports would bury the table
    llama_cpp.llama_backend_init()
    for key in keys:
        weight_type = key.split("-", 1)[1]
        path = work / f"model-{weight_type}.gguf"
        if not path.is_file():
            export_gguf(folder, path, weight_type=weight_type)
        yield Contestant(key, "llama.cpp (llama-cpp-python)", weight_type,
                         LlamaRunner(llama_cpp, path, threads, max_cells), weight_type, 2)


_SILENT_LLAMA_LOG = None


def import_llama_cpp():
    """llama_cpp, after importing it in a child process first: a build for a newer CPU dies there
    with an illegal instruction instead of taking this process with it."""
    import subprocess

    child = subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True, text=True)
    if child.returncode != 0:
        reason = "not installed" if "ModuleNotFoundError" in child.stderr else f"import failed ({child.returncode})"
        raise Skip(f"llama-cpp-python {reason}: {INSTALL['llama']}")
    import llama_cpp

    global _SILENT_LLAMA_LOG
    _SILENT_LLAMA_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    return llama_cpp


class LlamaRunner:
    """Greedy decoding of B sequences in one llama.cpp context (one sequence id per row)."""

    def __init__(self, llama_cpp, path: Path, threads: int, max_cells: int):
        self.lc = lc = llama_cpp
        params = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise Skip(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.threads, self.max_cells, self.ctx, self.shape = threads, max_cells, None, None

    def _context(self, batch, cells):
        lc = self.lc
        if self.ctx is None or self.shape != (batch, cells):
            if self.ctx is not None:
                lc.llama_free(self.ctx)
            params = lc.llama_context_default_params()
            params.n_ctx = batch * cells
            params.n_batch = params.n_ubatch = max(512, batch * cells)
            params.n_seq_max = batch
            params.n_threads = params.n_threads_batch = self.threads
            self.ctx, self.shape = lc.llama_init_from_model(self.model, params), (batch, cells)
            if not self.ctx:
                raise RuntimeError("llama.cpp could not create a context")
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        return self.ctx

    def __call__(self, ids, new_tokens):
        lc = self.lc
        batch, prompt = ids.shape
        cells = -(-(prompt + new_tokens) // 256) * 256
        ctx = self._context(batch, cells)
        tokens = lc.llama_batch_init(batch * prompt, 0, batch)
        try:
            self._fill(tokens, [(row, pos, int(ids[row, pos]), pos == prompt - 1)
                                for row in range(batch) for pos in range(prompt)])
            out = np.empty((batch, new_tokens), dtype=np.int64)
            for step in range(new_tokens):
                if lc.llama_decode(ctx, tokens) != 0:
                    raise RuntimeError("llama_decode failed")
                for row in range(batch):  # the logits of each row's last token, in batch order
                    logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, row - batch), shape=(self.vocab,))
                    out[row, step] = int(logits.argmax())
                self._fill(tokens, [(row, prompt + step, int(out[row, step]), True) for row in range(batch)])
        finally:
            lc.llama_batch_free(tokens)
        return out

    @staticmethod
    def _fill(tokens, entries):
        tokens.n_tokens = len(entries)
        for i, (row, pos, token, logits) in enumerate(entries):
            tokens.token[i], tokens.pos[i], tokens.n_seq_id[i] = token, pos, 1
            tokens.seq_id[i][0] = row
            tokens.logits[i] = logits


def ort_contestants(folder: Path, wanted, work: Path, threads: int):
    if not wanted("ort-fp32"):
        return
    try:
        import onnxruntime_genai as og
    except ImportError as error:
        raise Skip(f"onnxruntime-genai not installed ({error}): {INSTALL['ort']}") from None
    from hf_ltg.hub.export_onnx import export_onnx

    out = work / "onnx"
    if not (out / "genai_config.json").is_file():
        export_onnx(folder, out)
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"] = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    model = og.Model(str(out))

    def run(ids, new_tokens):
        batch, prompt = ids.shape
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, batch_size=batch, max_length=prompt + new_tokens,
                                  min_length=prompt + new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids.astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        return np.stack([np.asarray(generator.get_sequence(row))[prompt:prompt + new_tokens] for row in range(batch)])

    yield Contestant("ort-fp32", "ONNX Runtime GenAI", "fp32 (--onnx export)", run, "fp32", 4)


# --------------------------------------------------------------------------- measuring

def step_bytes(config, weight_format, kv_bytes, batch, context):
    """Bytes one decoding step reads: every weight matrix once, and each row's KV cache."""
    width, layers = config.hidden_size, config.num_hidden_layers
    matrices = layers * (4 * width * width + 2 * width * config.intermediate_size) + config.vocab_size * width
    return matrices * BYTES_PER_WEIGHT[weight_format] + batch * 2 * layers * width * context * kv_bytes


def alternate(contestants, calls, rounds, clock=time.perf_counter):
    """{(key, call name): median seconds} over `rounds` rounds of every (contestant, call) in turn,
    after one warm-up round; also the tokens of the last run of each."""
    times, tokens = {}, {}
    for round_index in range(rounds + 1):
        for contestant in contestants:
            for name, (ids, new_tokens) in calls.items():
                start = clock()
                out = contestant.run(ids, new_tokens)
                elapsed = clock() - start
                tokens[(contestant.key, name)] = out
                if round_index:  # round 0 warms up
                    times.setdefault((contestant.key, name), []).append(elapsed)
    return {key: statistics.median(t) for key, t in times.items()}, tokens


def leading_agreement(tokens, reference):
    """The number of leading tokens equal to `reference`, worst row."""
    if tokens.shape != reference.shape:
        return 0
    equal = tokens == reference
    return int(min(np.argmin(row) if not row.all() else len(row) for row in equal))


def prompts(batch, length, vocab, seed=2):
    generator = np.random.default_rng(seed)
    return generator.integers(1, vocab, size=(batch, length), dtype=np.int64)


def build(size, work: Path):
    """work/gpt2 (transformers), work/ours (hf_ltg, with a byte-level BPE tokenizer for the exports)."""
    if (work / "ours" / "config.json").is_file() and (work / "gpt2" / "config.json").is_file():
        return
    from hf_ltg.data.corpus import pretraining_corpus
    from hf_ltg.tokenization import save_tokenizer, train_tokenizer

    build_checkpoints(size, work)
    texts, _ = pretraining_corpus(0.1)
    # a small trained vocabulary: the exports pad it to the model's 50257 ids (prompts are random ids)
    save_tokenizer(train_tokenizer(iterator=texts[:200], vocab_size=1000, kind="bpe"), work / "ours")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="gpt2-small", choices=sorted(SIZES))
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 new tokens, one round (a smoke test)")
    parser.add_argument("--rows", default="*", help="comma list of row keys or patterns (default all): ours-fp32, "
                        "ours-fp32-dynamic, ours-bf16, ours-bf16-packed, ours-int8-absmax, ours-int8wo, ours-int4, hf-fp32, hf-bf16, "
                        "llama-f32, llama-f16, llama-q8_0, llama-q4_0, llama-q4_1, ort-fp32")
    parser.add_argument("--sections", default="b1,b8,long", help="comma list of b1, b8, long")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per section (after one warm-up round)")
    parser.add_argument("--long-rounds", type=int, default=3, help="timed rounds of the long-context section")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--long-context", type=int, default=1024, help="prompt + new tokens of the long section")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", help="keep the checkpoints and exports here and reuse them (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time instead of the wall clock (with --threads 1 only): an "
                             "indication on a busy machine, where waiting for a core would count; not a wall-clock figure")
    args = parser.parse_args(argv)
    if args.cpu_time and args.threads != 1:
        parser.error(f"--cpu-time counts the CPU time of every thread, so it needs --threads 1 (got {args.threads})")
    global CLOCK_NOTE
    CLOCK_NOTE = "CPU time of 1 thread, not wall clock" if args.cpu_time else ""
    if args.quick:
        args.size, args.new_tokens, args.rounds, args.long_rounds, args.long_context = "tiny", 8, 1, 1, 64

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("HF_LTG_PROGRESS", "0")
    patterns = [p.strip() for p in args.rows.split(",") if p.strip()]

    def wanted(key):
        return any(fnmatch.fnmatchcase(key, p) for p in patterns)

    print(f"bench_decode: size {args.size}, threads {args.threads}, prompt {args.prompt} + {args.new_tokens} new "
          f"tokens, long context {args.long_context}, rounds {args.rounds} (long {args.long_rounds}), "
          f"load average {load_average()}", flush=True)
    print(cpu_description(), flush=True)
    from hf_ltg.gpt import weight_only_ltg_gpt as weight_only

    print(f"weight-only kernels: int8pack {weight_only.int8pack_works()}, int4pack {weight_only.int4pack_works()}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    bandwidth = max(copy_bandwidth(torch.device("cpu"), 64 if args.quick else 512, 0.5 if args.quick else 3.0)
                    for _ in range(2))
    print(f"memory bandwidth (copy, reads + writes): {bandwidth:.1f} GB/s (load average {load_average()})", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) / args.size if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        build(args.size, work)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(work / "ours")
        long_context = min(args.long_context, config.max_position_embeddings)
        contestants, skipped = [], []
        sources = (lambda: ours_contestants(work / "ours", wanted, work),
                   lambda: transformers_contestants(work / "gpt2", wanted),
                   lambda: llama_contestants(work / "ours", wanted, work, args.threads, long_context),
                   lambda: ort_contestants(work / "ours", wanted, work, args.threads))
        for source in sources:
            try:
                contestants.extend(source())
            except Skip as reason:
                skipped.append(str(reason))
        print(f"{len(contestants)} rows ready in {time.perf_counter() - started:.0f} s: "
              f"{', '.join(c.key for c in contestants)}", flush=True)
        for reason in skipped:
            print(f"skipped: {reason}", flush=True)

        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        results = []
        for section in sections:
            if section == "long":
                prompt, batch, rounds = long_context - args.new_tokens, 1, args.long_rounds
                calls = {"full": (prompts(1, prompt, config.vocab_size), args.new_tokens),
                         "prefill": (prompts(1, prompt, config.vocab_size), 1)}
            elif section in ("b1", "b8"):
                prompt, batch, rounds = args.prompt, int(section[1:]), args.rounds
                calls = {"full": (prompts(batch, prompt, config.vocab_size), args.new_tokens)}
            else:
                raise SystemExit(f"unknown section {section!r}; choose from b1, b8, long")
            load_before = load_average()
            seconds, tokens = alternate(contestants, calls, rounds, time.process_time if args.cpu_time else time.perf_counter)
            reference = tokens.get(("ours-fp32", "full"))
            context = prompt + args.new_tokens / 2
            for c in contestants:
                total = seconds[(c.key, "full")]
                if section == "long":  # decoded tokens only (none measured if the noise swallowed them)
                    decoding = total - seconds[(c.key, "prefill")]
                    tok_s = (args.new_tokens - 1) / decoding if decoding > 0 else float("nan")
                else:
                    tok_s = batch * args.new_tokens / total
                nbytes = step_bytes(config, c.weight_format, c.kv_bytes, batch, context)
                bound = batch * bandwidth * 1e9 / nbytes
                agree = leading_agreement(tokens[(c.key, "full")], reference) if reference is not None else None
                results.append(dict(section=section, key=c.key, engine=c.engine, weights=c.weights, tok_s=tok_s,
                                    seconds=total, bound_tok_s=bound, of_bound=tok_s / bound,
                                    step_megabytes=nbytes / 1e6, agreement=agree, new_tokens=args.new_tokens))
            print_section(section, batch, prompt, args.new_tokens, results, load_before)

    print_targets(results)
    print(f"load average at the end {load_average()}; total {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(bandwidth_gb_s=bandwidth, rows=results, skipped=skipped,
                                                   cpu=cpu_description(), size=args.size), indent=2))
    return 0


def print_section(section, batch, prompt, new_tokens, results, load_before):
    rows = [r for r in results if r["section"] == section]
    base = next((r["tok_s"] for r in rows if r["key"] == "ours-fp32"), None)
    what = "decoded tok/s (prompt time excluded)" if section == "long" else "tok/s (prompt included)"
    if CLOCK_NOTE:
        what += f"; {CLOCK_NOTE}"
    print(f"\n{section}: batch {batch}, prompt {prompt} + {new_tokens} new tokens, {what}; "
          f"load average {load_before} before, {load_average()} after")
    header = ["row", "engine", "weights", "tok/s", "vs ours-fp32", "% of bound", "MB/step", "greedy = ours-fp32"]
    table = [header] + [[r["key"], r["engine"], r["weights"], fmt(r["tok_s"]),
                         f"{r['tok_s'] / base:.2f}x" if base else "-", pct(r["of_bound"]), fmt(r["step_megabytes"]),
                         "-" if r["agreement"] is None else f"{r['agreement']}/{r['new_tokens']}"] for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


CLOCK_NOTE = ""  # set by --cpu-time

TARGETS = [  # (ours, theirs, wanted ratio): issue 28's "done when"
    ("ours-fp32", "ort-fp32", 1.0), ("ours-fp32", "llama-f32", 0.9), ("ours-bf16", "llama-f16", 0.9),
    ("ours-int8wo", "llama-q8_0", 0.9), ("ours-int4", "ours-int8wo", 1.3), ("ours-int4", "llama-q4_1", 0.9),
]


def print_targets(results):
    print("\ntargets (issue 28): ratio of tok/s, per section")
    for ours, theirs, wanted in TARGETS:
        cells = []
        for section in dict.fromkeys(r["section"] for r in results):
            rows = {r["key"]: r for r in results if r["section"] == section}
            if ours in rows and theirs in rows:
                ratio = rows[ours]["tok_s"] / rows[theirs]["tok_s"]
                cells.append(f"{section} {ratio:.2f}x {'met' if ratio >= wanted else 'MISSED'}")
        if cells:
            print(f"  {ours} / {theirs} >= {wanted}x: {', '.join(cells)}")


if __name__ == "__main__":
    sys.exit(main())
