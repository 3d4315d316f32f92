"""One prepared GPU check (issue 19, item 3): the CUDA tests and the CUDA benchmark in ~8 minutes.

Here, once (downloads the wheels the device lacks into the git-ignored .device-wheels/):
    python scripts/device_wheels.py
    python benchmarks/gpu_check.py --dry-run      # the plan, without a GPU: wheels, sizes, commands, collection
On the device (the `run` tool, carrying .device-wheels):
    python3 benchmarks/gpu_check.py               # writes $OUT/gpu_check.md and the raw JSON when $OUT is set

Steps, each a subprocess with its own time limit inside --minutes (default 8):
1. install the carried wheels: pip install --no-index --no-deps --target <site>; <site> and the
   repository go first on PYTHONPATH (the image's torch stays; its transformers 5.17 is shadowed);
2. versions: torch, CUDA, GPU, transformers (>= 5.23 or stop), peft;
3. `pytest -m cuda tests/test_cuda.py` (JUnit XML);
4. `benchmarks/bench_gpt.py --device cuda --json` with the time that is left as its budget.
Then gpu_check.md (date, GPU, versions, test results, the benchmark table) and gpu_check.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = "tests/test_cuda.py"
REQUIRED = {"transformers": (5, 23), "peft": (0, 21)}  # what hf_ltg needs (pyproject.toml)
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the carried working tree
PYTEST_SECONDS = 210


def wheel_version(path: Path):
    """(name, (major, minor)) from a wheel file name, e.g. transformers-5.24.0-py3-none-any.whl."""
    name, ver = path.name.split("-")[:2]
    return name.lower().replace("_", "-"), tuple(int(x) for x in ver.split(".")[:2] if x.isdigit())


def check_wheels(folder: Path) -> list[str]:
    """Problems with the carried wheels (empty when they will do)."""
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if not wheels:
        return [f"no wheels in {folder}: run `python scripts/device_wheels.py` first (transformers and peft for "
                "Python 3.12; the device has no network)"]
    problems = []
    found = dict(wheel_version(w) for w in wheels)
    for name, minimum in REQUIRED.items():
        if name not in found:
            problems.append(f"{folder} has no {name} wheel (need >= {'.'.join(map(str, minimum))}): "
                            "run `python scripts/device_wheels.py`")
        elif found[name] < minimum:
            problems.append(f"{folder} holds {name} {'.'.join(map(str, found[name]))}, hf_ltg needs >= "
                            f"{'.'.join(map(str, minimum))}: run `python scripts/device_wheels.py`")
    if any(w.name.startswith("torch-") for w in wheels):
        problems.append(f"{folder} holds a torch wheel: the device keeps its own CUDA torch; remove it")
    return problems


def carried_bytes(wheels: Path) -> int:
    """The tracked + untracked-not-ignored files of the repository plus the wheels."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    total = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())
    return total + sum(w.stat().st_size for w in wheels.glob("*.whl"))


def commands(site: Path, wheels: Path, out: Path, bench_budget: float) -> dict:
    python = sys.executable
    return {
        "install": [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))],
        "versions": [python, "-c", VERSIONS_CODE],
        "pytest": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", TESTS,
                   "--junitxml", str(out / "cuda-tests.xml")],
        "bench": [python, "benchmarks/bench_gpt.py", "--device", "cuda", "--json", str(out / "bench.json"),
                  "--budget", f"{bench_budget:.0f}"],
    }


VERSIONS_CODE = """
import json, torch, transformers, peft
cuda = torch.cuda.is_available()
print(json.dumps(dict(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name() if cuda else None,
                      transformers=transformers.__version__, transformers_file=transformers.__file__,
                      peft=peft.__version__, cuda_available=cuda)))
"""


def run(command, env, timeout, log: Path):
    """(return code or 'timeout', seconds); stdout and stderr go to `log` and to our stdout."""
    start = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)

        def copy():  # in a thread, so that a child silent for minutes (compiling) still meets its limit
            for line in child.stdout:
                sink.write(line)
                print(line, end="", flush=True)

        reader = threading.Thread(target=copy, daemon=True)
        reader.start()
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            code = "timeout"
        reader.join(timeout=10)
    return code, time.perf_counter() - start


def junit_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    results = []
    for case in ET.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = "skipped" if kind == "skipped" else "failed"
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
        results.append(dict(test=case.get("name"), outcome=outcome, seconds=float(case.get("time") or 0),
                            message=message))
    return results


def markdown(summary: dict) -> str:
    v = summary.get("versions") or {}
    lines = [f"# GPU check, {summary['date']}", "",
             f"GPU: {v.get('gpu')}; torch {v.get('torch')} (CUDA {v.get('cuda')}); transformers "
             f"{v.get('transformers')}; peft {v.get('peft')}; wall time {summary['elapsed_s']:.0f} s"
             + (" (dry run: nothing ran on a GPU)" if summary.get("dry_run") else ""), ""]
    for step, info in summary["steps"].items():
        lines.append(f"- {step}: exit {info['code']} in {info['seconds']:.0f} s")
    tests = summary.get("tests") or []
    if tests:
        counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
        lines += ["", f"## pytest -m cuda: {counts['passed']} passed, {counts['failed']} failed, "
                  f"{counts['skipped']} skipped", "", "| test | outcome | s | message |", "|---|---|---|---|"]
        lines += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | {t['message'].replace('|', '/')} |"
                  for t in tests]
    bench = summary.get("bench") or {}
    if bench.get("markdown"):
        c = bench.get("ceilings_gflops_gbps", {})
        lines += ["", f"## bench_gpt --device cuda (batch {bench['settings']['batch']} x {bench['settings']['seq']}; "
                  f"measured bf16 matmul {c.get('bf16', 0) / 1e3:.0f} TFLOP/s, copy {c.get('copy', 0):.0f} GB/s)",
                  "", bench["markdown"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the plan here, without a GPU")
    parser.add_argument("--wheels", default=str(REPO / ".device-wheels"), help="the carried wheels")
    parser.add_argument("--minutes", type=float, default=8.0, help="wall-time budget of the whole check")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    wheels = Path(args.wheels)
    out_env = os.environ.get("OUT")
    out = Path(out_env) if out_env else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.gettempdir()) / "hf_ltg_device_site"
    budget = args.minutes * 60

    problems = check_wheels(wheels)
    if problems:
        for problem in problems:
            print(f"gpu_check: error: {problem}", file=sys.stderr)
        return 2
    size = carried_bytes(wheels)
    if size >= CARRY_LIMIT:
        print(f"gpu_check: error: the repository plus {wheels} is {size / 2**20:.1f} MiB; the device takes at most "
              f"{CARRY_LIMIT / 2**20:.0f} MiB: ignore or remove large files", file=sys.stderr)
        return 2
    plan = commands(site, wheels, out, budget)
    print(f"gpu_check: carried tree {size / 2**20:.1f} MiB (limit {CARRY_LIMIT / 2**20:.0f}); output in {out}")
    for name, command in plan.items():
        print(f"  {name}: {' '.join(command) if name != 'versions' else command[0] + ' -c <versions>'}")

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    summary = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), dry_run=args.dry_run,
                   carried_mib=round(size / 2**20, 1), commands=plan, steps={})

    if args.dry_run:
        collect = [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider", "-m", "cuda", TESTS]
        code, seconds = run(collect, dict(os.environ), 300, out / "collect.log")
        text = (out / "collect.log").read_text()
        collected = sum(1 for line in text.splitlines() if line.startswith(TESTS + "::"))
        summary["steps"]["pytest --collect-only -m cuda"] = dict(code=code, seconds=seconds, collected=collected)
        bench = [sys.executable, "benchmarks/bench_gpt.py", "--device", "cuda", "--dry-run",
                 "--json", str(out / "bench-plan.json")]
        code_b, seconds_b = run(bench, dict(os.environ), 120, out / "bench-plan.log")
        summary["steps"]["bench_gpt --device cuda --dry-run"] = dict(code=code_b, seconds=seconds_b)
        ok = code == 0 and collected > 0 and code_b == 0
        print(f"gpu_check dry run: {collected} cuda tests collected, benchmark plan "
              f"{'ok' if code_b == 0 else 'FAILED'}: {'ready' if ok else 'NOT ready'}")
    else:
        code, seconds = run(plan["install"], env, 120, out / "install.log")
        summary["steps"]["install wheels"] = dict(code=code, seconds=seconds)
        code, seconds = run(plan["versions"], env, 120, out / "versions.log")
        summary["steps"]["versions"] = dict(code=code, seconds=seconds)
        try:
            summary["versions"] = json.loads((out / "versions.log").read_text().strip().splitlines()[-1])
        except (ValueError, IndexError):
            summary["versions"] = None
        ready = summary["versions"] and summary["versions"]["cuda_available"] and tuple(
            int(x) for x in summary["versions"]["transformers"].split(".")[:2]) >= REQUIRED["transformers"]
        if not ready:
            v = summary["versions"] or {}
            why = ("the versions step failed" if not v else "torch sees no CUDA device" if not v["cuda_available"]
                   else f"transformers {v['transformers']} is older than 5.23 (were the wheels installed?)")
            print(f"gpu_check: error: not ready to run: {why}; see {out / 'install.log'} and {out / 'versions.log'}",
                  file=sys.stderr)
        else:
            left = budget - (time.perf_counter() - started)
            code, seconds = run(plan["pytest"], env, min(PYTEST_SECONDS, left - 120), out / "pytest.log")
            summary["steps"]["pytest -m cuda"] = dict(code=code, seconds=seconds)
            summary["tests"] = junit_results(out / "cuda-tests.xml")
            left = budget - (time.perf_counter() - started)
            # the benchmark stops starting sections 60 s before its limit; a section may still run over
            bench = plan["bench"][:-1] + [f"{max(30.0, left - 90):.0f}"]
            code, seconds = run(bench, env, max(60.0, left - 10), out / "bench.log")
            summary["steps"]["bench_gpt --device cuda"] = dict(code=code, seconds=seconds)
            if (out / "bench.json").exists():
                summary["bench"] = json.loads((out / "bench.json").read_text())
        ok = bool(ready) and all(step["code"] == 0 for step in summary["steps"].values())

    summary["elapsed_s"] = time.perf_counter() - started
    report = markdown(summary)
    (out / "gpu_check.md").write_text(report)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n" + report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
