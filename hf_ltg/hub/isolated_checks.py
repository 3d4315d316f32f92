"""The doctor's checks that must run where hf_ltg cannot be imported.

`hf_ltg.hub.doctor` runs this file's source with `python -c` in a fresh process, in an empty
working folder, with its own transformers module cache. It must therefore import nothing from
hf_ltg (tests import `kept_paths` from it; the block on hf_ltg is set only when it runs). It loads the folder through every
Auto class the folder declares, runs a tiny forward of each and the matching pipeline, and
checks that the tokenizer agrees with the config.

Usage: python -c "$(cat isolated_checks.py)" FOLDER REQUEST_JSON RESULT_JSON
REQUEST_JSON: {"remote": bool, "classes": [auto class names] | null, "modules": {module: file},
"strip_paths": [paths]}. RESULT_JSON receives a list of {"name", "status", "detail"}.
"""

import importlib.util
import json
import os
import site
import sys
import traceback


def kept_paths(entries, roots, site_dirs=None):
    """`entries` (sys.path) without the source tree's import roots `roots` and the working folder.

    An entry goes only if it resolves to one of the roots itself: paths are compared whole (so
    component by component), never by prefix, so a virtual environment inside the checkout
    (ROOT/.venv/lib/python3.X/site-packages) or beside it with a longer name (ROOT-venv) stays.
    A site-packages folder always stays: the clean process needs torch and transformers.
    """
    if site_dirs is None:  # old virtualenv releases' site module lacks getsitepackages
        site_dirs = [*getattr(site, "getsitepackages", list)(), site.getusersitepackages()]
    keep = {os.path.realpath(p) for p in site_dirs}
    strip = {os.path.realpath(r) for r in roots} - keep
    return [p for p in entries if p not in ("", ".") and os.path.realpath(p) not in strip]

SAMPLE = "The cat sat on the mat."

# Auto class -> (pipeline task or None, how the pipeline is called)
TASKS = {
    "AutoModel": "feature-extraction",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    # transformers 5 removed the question-answering pipeline; multiple choice never had one
    # (its forward takes [batch, choices, length]). Both get the forward only.
    "AutoModelForQuestionAnswering": None,
    "AutoModelForMultipleChoice": None,
}


class Report:
    def __init__(self):
        self.checks = []

    def add(self, name, ok, detail, status=None):
        self.checks.append({"name": name, "status": status or ("PASS" if ok else "FAIL"), "detail": detail})


def _error(exc):
    """The last line of an exception, which is where transformers puts the reason."""
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line for line in text.splitlines() if line.strip()]
    message = " ".join(lines[-3:])[:600]
    if "hf_ltg" in message:
        message += " (the folder's code imports hf_ltg, which users of the folder do not have)"
    return message


def check_modules(report, modules):
    """Every top-level module the code files import outside `try:` must be installed here."""
    missing = {name: files for name, files in modules.items() if importlib.util.find_spec(name) is None}
    if missing:
        where = "; ".join(f"`{name}` (imported by {', '.join(files)})" for name, files in sorted(missing.items()))
        report.add("code imports installed", False,
                   f"not installed in a clean environment: {where}. Users would need to install them; "
                   "import only torch, transformers and their dependencies, or move the import inside `try:`.")
    else:
        report.add("code imports installed", True,
                   f"every imported package is installed: {', '.join(sorted(modules)) or 'none'}")


def load_tokenizer(report, folder, remote):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report.add("tokenizer loads", False, f"AutoTokenizer.from_pretrained failed: {_error(exc)}")
        return None
    report.add("tokenizer loads", True, f"{type(tokenizer).__name__} with {len(tokenizer)} tokens")
    return tokenizer


def check_tokenizer_matches_config(report, tokenizer, config, classes):
    problems = []
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        problems.append(
            f"the tokenizer has {len(tokenizer)} tokens but config.vocab_size is {vocab_size}: ids >= {vocab_size} "
            "index past the embedding; resize the embeddings or use the tokenizer the model was trained with"
        )
    for kind in ("bos", "eos", "pad"):
        config_id = getattr(config, f"{kind}_token_id", None)
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if config_id is not None and token_id is not None and config_id != token_id:
            problems.append(
                f"config.{kind}_token_id is {config_id} but the tokenizer's {kind} token "
                f"{getattr(tokenizer, f'{kind}_token')!r} has id {token_id}; make them equal"
            )
    for token, token_id in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids):
        if vocab_size is not None and token_id is not None and token_id >= vocab_size:
            problems.append(f"special token {token!r} has id {token_id} >= config.vocab_size {vocab_size}")
    if "AutoModelForMaskedLM" in classes and tokenizer.mask_token is None:
        problems.append("the folder declares a masked LM but the tokenizer has no mask token; set mask_token")
    if problems:
        report.add("tokenizer matches config", False, "; ".join(problems))
    else:
        ids = {k: getattr(config, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
        report.add("tokenizer matches config", True,
                   f"{len(tokenizer)} tokens <= vocab_size {vocab_size}; special ids agree "
                   f"({', '.join(f'{k}={v}' for k, v in ids.items() if v is not None) or 'none set'})")


def model_inputs(tokenizer, config, auto_name):
    import torch

    if tokenizer is not None:
        inputs = dict(tokenizer(SAMPLE, return_tensors="pt"))
    else:  # the tokenizer failure is reported already; still exercise the model
        vocab = getattr(config, "vocab_size", 8) or 8
        ids = torch.arange(1, 7).remainder(vocab).unsqueeze(0)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if auto_name == "AutoModelForMultipleChoice":  # [batch, choices, length]
        inputs = {k: v.unsqueeze(1).expand(-1, 2, -1).contiguous() for k, v in inputs.items()}
    return inputs


def check_model(report, folder, remote, auto_name, config, tokenizer):
    import torch
    import transformers

    name = f"{auto_name} loads and runs"
    auto = getattr(transformers, auto_name)
    try:
        model, info = auto.from_pretrained(folder, trust_remote_code=remote, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        report.add(name, False, f"{auto_name}.from_pretrained failed: {_error(exc)}")
        return False
    cls = type(model).__name__
    if (type(model).__module__ or "").startswith("hf_ltg"):
        report.add(name, False, f"{cls} came from the installed hf_ltg package, not from the folder's code")
        return False
    saved = cls in (getattr(config, "architectures", None) or [])
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    missing = list(info.get("missing_keys", []))
    if not saved and prefix:  # another head: only its own new head may be missing
        missing = [k for k in missing if k.startswith(prefix) or auto_name == "AutoModel"]
    unexpected = list(info.get("unexpected_keys", [])) if saved else []
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"the weights lack {len(missing)} tensor(s) the model needs, e.g. {sorted(missing)[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) in the weights have no place, e.g. {sorted(unexpected)[:3]}")
        if mismatched:
            parts.append(f"{len(mismatched)} tensor(s) have the wrong shape, e.g. {mismatched[:2]}")
        report.add(name, False, f"{cls}: " + "; ".join(parts) + "; the config does not match the weights")
        return False
    model.eval()
    inputs = model_inputs(tokenizer, config, auto_name)
    try:
        with torch.no_grad():
            output = model(**inputs)
    except Exception as exc:  # noqa: BLE001
        report.add(name, False, f"{cls} forward failed on {SAMPLE!r}: {_error(exc)}")
        return False
    first = output[0]
    suppressed = list(getattr(config, "masked_lm_suppressed_token_ids", None) or ())
    if auto_name == "AutoModelForMaskedLM" and suppressed:
        # the release's -inf over its special and unused ids is by design; every other logit must be finite
        first = first.clone()
        first[..., suppressed] = torch.where(first[..., suppressed] == float("-inf"), 0.0, first[..., suppressed])
    if not torch.isfinite(first).all():
        report.add(name, False, f"{cls} forward gave non-finite values (shape {tuple(first.shape)})")
        return False
    report.add(name, True, f"{cls}, forward on {tuple(inputs['input_ids'].shape)} -> {tuple(first.shape)}")
    return True


def check_pipeline(report, folder, remote, auto_name, tokenizer):
    from transformers import pipeline

    task = TASKS[auto_name]
    name = f"pipeline {task}"
    if tokenizer is None:
        report.add(name, False, "skipped: the tokenizer does not load (see above)", status="SKIP")
        return
    try:
        pipe = pipeline(task, model=folder, trust_remote_code=remote)
        if task == "text-generation":
            out = pipe(SAMPLE, max_new_tokens=2, do_sample=False)
            summary = repr(out[0]["generated_text"][:60])
        elif task == "fill-mask":
            if tokenizer.mask_token is None:
                raise ValueError("the tokenizer has no mask token")
            out = pipe(f"The cat sat on the {tokenizer.mask_token}.", top_k=1)
            summary = f"top prediction {out[0]['token_str']!r}"
        elif task == "text-classification":
            out = pipe(SAMPLE)
            summary = f"label {out[0]['label']!r}"
        elif task == "token-classification":
            out = pipe(SAMPLE)
            summary = f"{len(out)} entities"
        else:
            out = pipe(SAMPLE)
            summary = f"features of width {len(out[0][0])}"
    except Exception as exc:  # noqa: BLE001
        report.add(name, False, f"pipeline({task!r}) failed: {_error(exc)}")
        return
    report.add(name, True, summary)


def native_classes(config):
    """The Auto classes that map a built-in config to one of its saved architectures (plus AutoModel)."""
    import transformers

    architectures = set(getattr(config, "architectures", None) or [])
    found = []
    for auto_name in TASKS:
        mapping = getattr(transformers, auto_name)._model_mapping
        try:
            cls = mapping[type(config)]
        except KeyError:
            continue
        if auto_name == "AutoModel" or cls.__name__ in architectures:
            found.append(auto_name)
    return found


def main(folder, request, result_path):
    sys.path[:] = kept_paths(sys.path, request.get("strip_paths", []))
    report = Report()
    try:
        check_modules(report, request.get("modules", {}))
        from transformers import AutoConfig

        remote = request["remote"]
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
        except Exception as exc:  # noqa: BLE001
            report.add("config loads", False, f"AutoConfig.from_pretrained failed: {_error(exc)}")
            return report
        if (type(config).__module__ or "").startswith("hf_ltg"):
            report.add("config loads", False, "the config class came from the installed hf_ltg package")
            return report
        report.add("config loads", True,
                   f"{type(config).__name__} from {'the folder code' if remote else 'transformers'}")
        classes = request.get("classes")
        if classes is None:
            classes = native_classes(config)
        tokenizer = load_tokenizer(report, folder, remote)
        if tokenizer is not None:
            check_tokenizer_matches_config(report, tokenizer, config, classes)
        for auto_name in classes:
            if auto_name not in TASKS:
                continue
            if check_model(report, folder, remote, auto_name, config, tokenizer) and TASKS[auto_name]:
                check_pipeline(report, folder, remote, auto_name, tokenizer)
    except Exception:  # noqa: BLE001 - anything unexpected is a finding too
        report.add("isolated load", False, traceback.format_exc()[-800:])
    return report


if __name__ == "__main__":
    # hf_ltg must be unimportable, whatever is installed: a modeling file that imports it fails
    # here as it would on a user's machine.
    sys.modules["hf_ltg"] = None
    _folder, _request, _result = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _report = main(_folder, _request, _result)
    with open(_result, "w") as handle:
        json.dump(_report.checks, handle)
