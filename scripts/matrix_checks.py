"""The version matrix's checks, run inside one environment (torch + transformers, no hf_ltg).

`scripts/version_matrix.py` runs this file with each environment's python, from an empty working
folder, so that `import hf_ltg` fails as it does for a user of a checkpoint folder. It imports
nothing but the standard library, torch and transformers.

    python matrix_checks.py RESULT_JSON TENSORS_PT [REFERENCE_PT] FOLDER...

Each FOLDER is a checkpoint folder. TENSORS_PT receives this run's fp32 logits and greedy tokens;
with REFERENCE_PT (the same file from the reference environment) they are compared with it.
RESULT_JSON receives {"transformers": version, "checkpoints": {name: {check: [ok, detail]}}}.
"""

import sys

sys.modules["hf_ltg"] = None  # a model file that imports hf_ltg fails here as on a user's machine

import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

TOLERANCE = 1e-5
MAX_NEW_TOKENS = 8
PROMPTS = ["The cat sat on the mat and", "Once"]  # the second is left-padded in the batch
# Pipelines the README lists for each family.
PIPELINES = {
    "ltg_gpt": ("text-generation", "text-classification", "token-classification", "feature-extraction"),
    "ltg_bert": ("fill-mask", "text-classification", "token-classification", "feature-extraction"),
}
# Loads each folder's tokenizer as a user does, in a fresh process with stdin closed: any prompt or
# warning shows up in the output between the markers.
TOKENIZER_CODE = """
import sys
sys.modules["hf_ltg"] = None
from transformers import AutoTokenizer
for folder in sys.argv[1:]:
    print("@@", folder, flush=True)
    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
"""


def main_output(output):
    for name in ("logits", "last_hidden_state", "start_logits"):
        value = getattr(output, name, None)
        if value is not None:
            return value if name != "start_logits" else torch.stack([output.start_logits, output.end_logits], -1)
    raise ValueError(f"no logits in {type(output).__name__}")


def error(exc):
    lines = [line for line in f"{type(exc).__name__}: {exc}".splitlines() if line.strip()]
    return " ".join(lines[-2:])[:300]


class Checks:
    def __init__(self, reference):
        self.results = {}
        self.reference = reference
        self.compared, self.largest_diff = 0, 0.0  # heads compared with the reference, their largest |diff|

    def record(self, check, ok, detail=""):
        """Keep the first failure of a check (later passes of the same check do not hide it)."""
        previous = self.results.get(check)
        if previous is None or (previous[0] and not ok):
            self.results[check] = [bool(ok), detail]

    def compare_tensor(self, key, value, tensors):
        tensors[key] = value.detach().float().clone()
        if self.reference is None:
            return
        if key not in self.reference:
            self.record("fp32 logits = reference", False, f"{key}: no reference")
            return
        ref = self.reference[key]
        if ref.shape != value.shape:
            self.record("fp32 logits = reference", False, f"{key}: shape {tuple(value.shape)} != {tuple(ref.shape)}")
            return
        diff = (value.float() - ref).abs().max().item()
        self.record("fp32 logits = reference", diff <= TOLERANCE, f"{key}: max |diff| {diff:.2e}")
        self.largest_diff = max(self.largest_diff, diff)
        self.compared += 1

    def compare_tokens(self, key, tokens, tensors):
        tensors[key] = tokens.clone()
        if self.reference is not None:
            ref = self.reference.get(key)
            ok = ref is not None and ref.shape == tokens.shape and bool((ref == tokens).all())
            self.record("greedy = reference", ok, "" if ok else f"{key}: {tokens.tolist()} != {None if ref is None else ref.tolist()}")


def tokenizer_outputs(folders):
    """{folder: what loading its tokenizer printed} from one fresh process (None: it crashed first)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFORMERS_VERBOSITY")}
    run = subprocess.run([sys.executable, "-c", TOKENIZER_CODE, *map(str, folders)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=600)
    outputs, current = {}, None
    for line in run.stdout.splitlines():
        if line.startswith("@@ "):
            current = line[3:]
            outputs[current] = ""
        elif current is not None:
            outputs[current] += line + "\n"
    if run.returncode != 0 and current is not None:
        outputs[current] = (outputs[current] + f"exit status {run.returncode}").strip()
    return outputs


def check_tokenizer(folder, config, checks, output):
    if output is None or output.strip():
        detail = output.strip().splitlines()[-1][:300] if output and output.strip() else "the loading process crashed"
        checks.record("tokenizer (silent)", False, detail)
        return
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    mismatched = [
        kind for kind in ("bos", "eos", "pad")
        if getattr(config, f"{kind}_token_id", None) is not None
        and getattr(tokenizer, f"{kind}_token_id") != getattr(config, f"{kind}_token_id")
    ]
    checks.record("tokenizer (silent)", not mismatched, f"special ids differ from config: {mismatched}" if mismatched else "")


def batch(tokenizer, texts, padding_side):
    tokenizer.padding_side = padding_side
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def check_heads(folder, name, config, tokenizer, checks, tensors):
    inputs = batch(tokenizer, PROMPTS, "right")
    inputs.pop("token_type_ids", None)
    models = {}
    for auto_name in sorted(config.auto_map):
        if auto_name == "AutoConfig":
            continue
        try:
            torch.manual_seed(0)
            model, info = getattr(transformers, auto_name).from_pretrained(
                folder, trust_remote_code=True, output_loading_info=True
            )
            model.eval()
            args = inputs
            if auto_name == "AutoModelForMultipleChoice":  # [batch, choices, length]
                args = {k: v.unsqueeze(1).expand(-1, 2, -1).contiguous() for k, v in inputs.items()}
            with torch.no_grad():
                value = main_output(model(**args))
            if not torch.isfinite(value).all():
                raise ValueError("non-finite outputs")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            checks.record("load + forward (every head)", False, f"{auto_name}: {error(exc)}")
            continue
        checks.record("load + forward (every head)", True)
        models[auto_name] = model
        # A head the checkpoint does not hold is freshly initialised: its values are not comparable.
        if not info.get("missing_keys"):
            checks.compare_tensor(f"{name}/{auto_name}", value, tensors)
    return models


def generate(model, tokenizer, texts, use_cache):
    inputs = batch(tokenizer, texts, "left")
    inputs.pop("token_type_ids", None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS,
                             do_sample=False, use_cache=use_cache, pad_token_id=pad)
    return out[:, inputs["input_ids"].size(1):]


def check_generate(name, model, tokenizer, checks, tensors, check="greedy: cache = no cache, padded = alone"):
    try:
        alone = generate(model, tokenizer, PROMPTS[1:], use_cache=True)
        cached = generate(model, tokenizer, PROMPTS, use_cache=True)
        uncached = generate(model, tokenizer, PROMPTS, use_cache=False)
    except Exception as exc:  # noqa: BLE001
        checks.record(check, False, error(exc))
        return None
    ok = bool((cached == uncached).all()) and bool((cached[1:] == alone).all())
    checks.record(check, ok, "" if ok else f"cache {cached.tolist()} / no cache {uncached.tolist()} / alone {alone.tolist()}")
    if tensors is not None:
        checks.compare_tokens(f"{name}/greedy", cached, tensors)
    return cached


def check_user_generate(model, tokenizer, checks, check="generate(**tokenizer(text))"):
    """generate() on everything the tokenizer returns, as the README and model cards write it."""
    try:
        with torch.no_grad():
            out = model.generate(**tokenizer(PROMPTS[0], return_tensors="pt"), max_new_tokens=4, do_sample=False)
        if out.shape[0] != 1:
            raise ValueError(f"output shape {tuple(out.shape)}")
    except Exception as exc:  # noqa: BLE001
        checks.record(check, False, error(exc))
        return
    checks.record(check, True)


def check_pipelines(folder, family, tokenizer, checks):
    for task in PIPELINES.get(family, ()):
        text = f"The cat {tokenizer.mask_token} on the mat." if task == "fill-mask" else PROMPTS[0]
        kwargs = dict(max_new_tokens=4, do_sample=False) if task == "text-generation" else {}
        try:
            result = transformers.pipeline(task, model=str(folder), trust_remote_code=True)(text, **kwargs)
            if not result:
                raise ValueError("empty result")
        except Exception as exc:  # noqa: BLE001
            checks.record("pipelines", False, f"{task}: {error(exc)}")
            continue
        checks.record("pipelines", True, "")


def check_bf16(name, config, models, tokenizer, checks):
    main = next((a for a in config.auto_map if config.auto_map[a].split(".")[-1] in (config.architectures or [])), None)
    heads = [a for a in (main, "AutoModelForCausalLM") if a in models]
    for auto_name in dict.fromkeys(heads):
        model = models[auto_name].to(torch.bfloat16)
        try:
            inputs = batch(tokenizer, PROMPTS, "right")
            inputs.pop("token_type_ids", None)
            with torch.no_grad():
                value = main_output(model(**inputs))
            if value.dtype != torch.bfloat16 or not torch.isfinite(value).all():
                raise ValueError(f"outputs {value.dtype}, finite={bool(torch.isfinite(value).all())}")
        except Exception as exc:  # noqa: BLE001
            checks.record("bf16 forward + generate", False, f"{auto_name}: {error(exc)}")
            continue
        checks.record("bf16 forward + generate", True)
        if auto_name == "AutoModelForCausalLM":
            try:
                generate(model, tokenizer, PROMPTS, use_cache=True)
            except Exception as exc:  # noqa: BLE001
                checks.record("bf16 forward + generate", False, f"generate: {error(exc)}")


def check_config(folder, config, checks, check="config = config.json"):
    """The token ids and flags the folder saved, as the loaded config holds them (4.x's base class resets some)."""
    saved = json.loads((folder / "config.json").read_text())
    keys = [k for k in saved if k.endswith("_token_id") or k in ("tie_word_embeddings", "use_cache", "is_decoder")]
    wrong = [f"{k}={getattr(config, k, None)!r}, saved {saved[k]!r}" for k in keys if getattr(config, k, None) != saved[k]]
    checks.record(check, not wrong, "; ".join(wrong[:3]) or f"{len(keys)} fields")


def check_folder(folder, reference, tensors, tokenizer_output):
    folder = Path(folder)
    name = folder.name
    checks = Checks(reference)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    check_config(folder, config, checks)
    check_tokenizer(folder, config, checks, tokenizer_output)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    models = check_heads(folder, name, config, tokenizer, checks, tensors)
    if "AutoModelForCausalLM" in models:
        check_generate(name, models["AutoModelForCausalLM"], tokenizer, checks, tensors)
        check_user_generate(models["AutoModelForCausalLM"], tokenizer, checks)
    check_pipelines(folder, config.model_type, tokenizer, checks)
    check_bf16(name, config, models, tokenizer, checks)
    fp32 = checks.results.get("fp32 logits = reference")
    if fp32 is not None and fp32[0]:
        fp32[1] = f"{checks.compared} heads, max |diff| {checks.largest_diff:.1e}"
    return checks.results


def main(argv):
    result_path, tensors_path, *rest = argv
    reference = None
    if rest and rest[0].endswith(".pt"):
        reference = torch.load(rest.pop(0))
    tensors, results = {}, {}
    tokenizer_printed = tokenizer_outputs(rest)
    for folder in rest:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                results[Path(folder).name] = check_folder(folder, reference, tensors, tokenizer_printed.get(folder))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results[Path(folder).name] = {"load + forward (every head)": [False, error(exc)]}
    torch.save(tensors, tensors_path)
    Path(result_path).write_text(json.dumps({"transformers": transformers.__version__, "checkpoints": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
