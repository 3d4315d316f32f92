"""The checkpoint doctor: is a folder self-contained and ready for the Hub?

Static checks run here (files, pickles, auto_map, the imports of the code files); everything
that needs the folder's own code runs in one fresh subprocess where hf_ltg cannot be imported
(`isolated_checks.py`): loading through every Auto class of the auto_map, a tiny forward of
each, the matching pipeline, and the tokenizer against the config. Nothing here is specific to
a model family: what to check comes from the folder's `config.json`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")

# Class-name suffix -> Auto class, to notice heads that the folder's code defines but whose
# auto_map entry is missing (the Auto class and its pipeline could not load the folder).
HEAD_SUFFIXES = {
    "ForCausalLM": "AutoModelForCausalLM",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
}
AUTO_MODEL_CLASSES = ("AutoModel", *HEAD_SUFFIXES.values())
PIPELINE_OF = {
    "AutoModel": "feature-extraction",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
}
ISOLATED_TIMEOUT_S = 600


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL, WARN or SKIP
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


@dataclass
class DoctorReport:
    folder: Path
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str, status: str | None = None) -> None:
        self.checks.append(Check(name, status or ("PASS" if ok else "FAIL"), detail))

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"hf-ltg doctor: {self.folder}"]
        lines += [f"{c.status:<4}  {c.name}: {c.detail}" for c in self.checks]
        if self.ok:
            lines.append(f"OK: {self.folder.name} is self-contained and ready to push.")
        else:
            lines.append(f"{len(self.problems)} problem(s): " + ", ".join(c.name for c in self.problems) + ".")
        return "\n".join(lines)


def diagnose(folder: str | os.PathLike, isolated: bool = True) -> DoctorReport:
    """Run every check on `folder`; `isolated=False` skips the subprocess (static checks only)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the checkpoint folder to check.")
    report = DoctorReport(folder)
    config = _check_config(report, folder)
    _check_no_pickles(report, folder)
    _check_weights(report, folder)
    _check_tokenizer_files(report, folder)
    classes, remote = _check_auto_map(report, folder, config)
    modules = _check_code_imports(report, folder)
    _check_model_card(report, folder)
    if isolated and config is not None:
        _run_isolated(report, folder, remote, classes, modules)
    return report


# ---------------------------------------------------------------------------------------------
# Static checks


def _check_config(report: DoctorReport, folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.is_file():
        report.add("config.json", False, "missing; every transformers checkpoint needs one (save_pretrained writes it)")
        return None
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        report.add("config.json", False, f"not valid JSON: {error}")
        return None
    if not config.get("model_type"):
        report.add("config.json", False, "has no model_type; the Auto classes cannot tell what model this is")
        return None
    report.add("config.json", True,
               f"model_type {config['model_type']!r}, architectures {config.get('architectures') or 'not recorded'}")
    return config


def _check_no_pickles(report: DoctorReport, folder: Path) -> None:
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        report.add("no pickle files", False,
                   f"found {pickles}: pickles can run arbitrary code when loaded and the Hub flags them. "
                   "Keep the weights as safetensors only (hf-ltg export writes them) and delete these files.")
    else:
        report.add("no pickle files", True, f"none of {', '.join('*' + s for s in PICKLE_SUFFIXES)}")


def _check_weights(report: DoctorReport, folder: Path) -> None:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            report.add("weights", False, f"{index.name} is not a valid index ({error!r})")
            return
        shards = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        weight_map, shards = None, ["model.safetensors"]
    else:
        report.add("weights", False, "no model.safetensors or model.safetensors.index.json; "
                   "save the model with save_pretrained (safetensors is its default)")
        return
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        report.add("weights", False, f"the index names shard(s) that are absent: {missing}")
        return
    stored = set()
    for shard in shards:
        try:
            with safe_open(folder / shard, framework="pt") as handle:
                names = set(handle.keys())
        except Exception as error:  # noqa: BLE001 - any unreadable file is the finding
            report.add("weights", False, f"{shard} is not a readable safetensors file: {error}")
            return
        if weight_map is not None:
            listed = {k for k, v in weight_map.items() if v == shard}
            if listed - names:
                report.add("weights", False, f"{shard} lacks tensors its index lists, e.g. {sorted(listed - names)[:3]}")
                return
        stored |= names
    size = sum((folder / s).stat().st_size for s in shards)
    report.add("weights", True, f"{len(stored)} tensors in {len(shards)} safetensors file(s), {_human_size(size)}")


def _check_tokenizer_files(report: DoctorReport, folder: Path) -> None:
    present = [n for n in TOKENIZER_VOCAB_FILES if (folder / n).is_file()]
    has_config = (folder / "tokenizer_config.json").is_file()
    if not present:
        report.add("tokenizer files", False,
                   f"none of {', '.join(TOKENIZER_VOCAB_FILES)}: users cannot tokenize text for this model. "
                   "Save the tokenizer into the folder (tokenizer.save_pretrained(FOLDER)).")
    elif not has_config:
        report.add("tokenizer files", False,
                   f"{', '.join(present)} but no tokenizer_config.json; save the tokenizer with save_pretrained")
    else:
        report.add("tokenizer files", True, ", ".join([*present, "tokenizer_config.json"]))


def _check_auto_map(report: DoctorReport, folder: Path, config: dict | None) -> tuple[list[str] | None, bool]:
    """(Auto classes to load in the subprocess, whether the folder needs remote code).

    A folder without auto_map is fine when transformers has its model_type built in (then the
    classes come from `architectures`, decided in the subprocess: None)."""
    if config is None:
        return [], False
    auto_map = config.get("auto_map")
    if not auto_map:
        from transformers import CONFIG_MAPPING

        if config["model_type"] in CONFIG_MAPPING:
            report.add("auto_map", True,
                       f"none needed: model_type {config['model_type']!r} is built into transformers (no remote code)")
            return None, False
        report.add("auto_map", False,
                   f"config.json has no auto_map and model_type {config['model_type']!r} is not built into "
                   "transformers: no Auto class can load this folder. Save with hf_ltg (its configs set the full "
                   "auto_map) or add the entries to config.json.")
        return [], True

    problems, declared = [], {}
    for auto_name, reference in auto_map.items():
        if not isinstance(reference, str):  # tokenizer entries are [slow, fast] pairs
            references = [r for r in reference if r]
        else:
            references = [reference]
        for ref in references:
            problem = _check_reference(folder, auto_name, ref)
            if problem:
                problems.append(problem)
        if isinstance(reference, str):
            declared[auto_name] = reference
    if "AutoConfig" not in auto_map:
        problems.append("no AutoConfig entry: AutoConfig cannot load the config class")

    for auto_name, reference in sorted(_heads_defined_in_code(folder).items()):
        if auto_name not in auto_map:
            task = PIPELINE_OF.get(auto_name)
            use = f"; the {task} pipeline cannot load this folder" if task else ""
            problems.append(
                f"no {auto_name} entry although the code defines {reference.split('.')[-1]}{use}: add "
                f"\"{auto_name}\": \"{reference}\" to config.json's auto_map (hf-ltg export writes the full map)"
            )
    if problems:
        report.add("auto_map", False, "; ".join(problems))
    else:
        report.add("auto_map", True, ", ".join(sorted(auto_map)))
    return [a for a in AUTO_MODEL_CLASSES if a in declared], True


def _check_reference(folder: Path, auto_name: str, reference: str) -> str | None:
    if "--" in reference:
        return (f"{auto_name} -> {reference!r} refers to code in another repository; "
                "copy the code into this folder so that it is self-contained")
    module, _, class_name = reference.rpartition(".")
    if not module or not class_name:
        return f"{auto_name} -> {reference!r} is not of the form 'module_file.ClassName'"
    path = folder / f"{module.replace('.', '/')}.py"
    if not path.is_file():
        return f"{auto_name} -> {reference!r} but {path.name} is not in the folder"
    if class_name not in _classes_defined(path):
        return f"{auto_name} -> {reference!r} but {path.name} defines no class {class_name}"
    return None


def _classes_defined(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text())
    except SyntaxError:
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def _heads_defined_in_code(folder: Path) -> dict[str, str]:
    """{Auto class: 'module.Class'} for every model class the folder's code declares.

    A class counts when the code registers it (`X.register_for_auto_class("AutoModelFor...")`)
    or when its name ends in a head suffix and it derives from a `...PreTrainedModel`."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError:
            continue
        module = path.stem
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.endswith("PreTrainedModel"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith("PreTrainedModel") for b in bases):
                    for suffix, auto_name in HEAD_SUFFIXES.items():
                        if node.name.endswith(suffix):
                            found.setdefault(auto_name, f"{module}.{node.name}")
                    if node.name.endswith("Model") and not any(node.name.endswith(s) for s in HEAD_SUFFIXES):
                        found.setdefault("AutoModel", f"{module}.{node.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "register_for_auto_class" and isinstance(node.func.value, ast.Name)
                    and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value in AUTO_MODEL_CLASSES):
                found[node.args[0].value] = f"{module}.{node.func.value.id}"
    return found


def _check_code_imports(report: DoctorReport, folder: Path) -> dict[str, list[str]]:
    """Flag imports that break in a clean environment; return {top-level module: [files]} to
    check for installation in the subprocess (imports inside `try:` are optional and skipped,
    as transformers skips them)."""
    files = sorted(folder.glob("*.py"))
    siblings = {p.stem for p in files}
    stdlib = set(sys.stdlib_module_names)
    problems, modules = [], {}
    for path in files:
        try:
            tree = ast.parse(path.read_text())
        except SyntaxError as error:
            problems.append(f"{path.name} does not parse: {error}")
            continue
        optional = _nodes_inside_try(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                problem = _check_relative_import(node, path.name, siblings)
                if problem:
                    problems.append(problem)
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "hf_ltg":
                    problems.append(
                        f"{path.name} line {node.lineno} imports `{name}`: the folder would need hf_ltg installed "
                        "(or silently run the installed package's code). Import the sibling file instead: "
                        "`from .configuration_x import ...`"
                    )
                elif top in siblings:
                    problems.append(
                        f"{path.name} line {node.lineno} imports its sibling `{name}` absolutely; in the "
                        f"transformers module cache that fails: write `from .{name} import ...`"
                    )
                elif top and top not in stdlib and id(node) not in optional:
                    modules.setdefault(top, []).append(path.name)
    if not files:
        report.add("code files", True, "none (a folder for a model built into transformers needs none)",
                   status="PASS")
    elif problems:
        report.add("code imports", False, "; ".join(problems))
    else:
        report.add("code imports", True,
                   f"{', '.join(p.name for p in files)} import only siblings, the standard library and "
                   f"{', '.join(sorted(modules)) or 'nothing else'}")
    return modules


def _check_relative_import(node: ast.ImportFrom, filename: str, siblings: set[str]) -> str | None:
    if node.level > 1 or (node.module and "." in node.module):
        return (f"{filename} line {node.lineno} imports from a package outside the folder "
                f"(`from {'.' * node.level}{node.module or ''} import ...`); transformers copies only flat sibling files")
    if node.module is None:
        return (f"{filename} line {node.lineno}: `from . import {node.names[0].name}` is not copied by "
                f"transformers; write `from .{node.names[0].name} import ...`")
    if node.module not in siblings:
        return f"{filename} line {node.lineno} imports `.{node.module}`, but {node.module}.py is not in the folder"
    return None


def _nodes_inside_try(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            for child in node.body:
                inside |= {id(n) for n in ast.walk(child)}
    return inside


def _check_model_card(report: DoctorReport, folder: Path) -> None:
    card = folder / "README.md"
    if not card.is_file():
        report.add("model card", False, "no README.md: the Hub page will be empty; hf-ltg export writes one",
                   status="WARN")
        return
    text = card.read_text()
    if not text.startswith("---"):
        report.add("model card", False, "README.md has no YAML metadata block (library_name, pipeline_tag, ...)",
                   status="WARN")
        return
    import yaml

    try:
        metadata = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as error:
        report.add("model card", False, f"README.md's YAML metadata does not parse: {error}")
        return
    report.add("model card", True,
               ", ".join(f"{k}: {metadata[k]}" for k in ("library_name", "pipeline_tag", "license") if k in metadata)
               or "README.md present")


# ---------------------------------------------------------------------------------------------
# The isolated subprocess


def _run_isolated(report: DoctorReport, folder: Path, remote: bool, classes: list[str] | None,
                  modules: dict[str, list[str]]) -> None:
    source = (Path(__file__).parent / "isolated_checks.py").read_text()
    request = {"remote": remote, "classes": classes, "modules": modules, "strip_paths": _paths_to_strip()}
    with tempfile.TemporaryDirectory(prefix="hf-ltg-doctor-") as work:
        result = Path(work) / "result.json"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_MODULES_CACHE=str(Path(work) / "modules"), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
        try:
            done = subprocess.run(
                [sys.executable, "-c", source, str(folder), json.dumps(request), str(result)],
                cwd=work, env=env, capture_output=True, text=True, timeout=ISOLATED_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            report.add("isolated load", False, f"the clean process did not finish within {ISOLATED_TIMEOUT_S} s")
            return
        if not result.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            report.add("isolated load", False, f"the clean process crashed (exit {done.returncode}): {' | '.join(tail)}")
            return
        for check in json.loads(result.read_text()):
            report.add(check["name"], check["status"] == "PASS", check["detail"], status=check["status"])


def _paths_to_strip(package_dir: Path | None = None, site_dirs: list[str] | None = None) -> list[str]:
    """The source tree's import root: the folder that holds the hf_ltg package, resolved.

    The clean process drops the sys.path entry that is this folder (compared whole, see
    isolated_checks.kept_paths), so that nothing else of the checkout (scripts, tests) imports
    there. None when the package is installed in a site-packages folder, which the clean
    process needs.
    """
    root = (package_dir or Path(__file__).resolve().parents[1]).resolve().parent
    if site_dirs is None:
        site_dirs = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    return [] if root in {Path(p).resolve() for p in site_dirs} else [str(root)]


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
