"""Self-contained model code for a saved folder: transformers' custom-code (`trust_remote_code`) convention.

`write_remote_code(folder)` writes `configuration_nasbert.py` and `modeling_nasbert.py` beside a saved
`config.json` and adds `auto_map` to it, so that `AutoModel.from_pretrained(folder, trust_remote_code=True)`
-- and optimum's ORTModel classes, sentence-transformers and `pipeline(...)`, which go through it --
load the model where nasbert-deploy is not installed. Where it is installed and imported, the
registered local classes are used as before (no `trust_remote_code` needed).

The two files are assembled from this package's own modules, so there is one source of truth:

    configuration_nasbert.py = errors.py + space/arch.py + space/searchspace.py + model/configuration.py
    modeling_nasbert.py      = model/ops.py + model/modeling.py  (+ `from .configuration_nasbert import ...`)

Assembly drops module docstrings, `from __future__` lines, `__all__`, the `AutoXxx.register(...)` calls
(transformers registers remote classes itself) and every `from nasbert_deploy... import` line; names
those lines imported must be defined by the assembled parts (checked, `ExportError` otherwise), and
the result must import only the standard library, torch and transformers (checked too).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

from nasbert_deploy.errors import ExportError

CONFIG_FILE = "configuration_nasbert.py"
MODELING_FILE = "modeling_nasbert.py"
CONFIG_MODULES = (
    "nasbert_deploy.errors",
    "nasbert_deploy.space.arch",
    "nasbert_deploy.space.searchspace",
    "nasbert_deploy.model.configuration",
)
MODELING_MODULES = ("nasbert_deploy.model.ops", "nasbert_deploy.model.modeling")
AUTO_MAP = {
    "AutoConfig": "configuration_nasbert.NasBertConfig",
    "AutoModel": "modeling_nasbert.NasBertModel",
    "AutoModelForSequenceClassification": "modeling_nasbert.NasBertForSequenceClassification",
}
ALLOWED_IMPORTS = {"torch", "transformers"} | set(sys.stdlib_module_names)
PACKAGE = "nasbert_deploy"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nasbert-deploy")
    except PackageNotFoundError:
        return "unknown"


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise ExportError(f"cannot read the source of {module}: the custom model code is assembled from it")
    return Path(spec.origin).read_text(encoding="utf-8")


def _is_register_call(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "register"
    )


def _split(module: str) -> tuple[list[str], set[str], set[str], str]:
    """(import statements kept, names imported from this package, top-level names defined, body text)."""
    text = _source(module)
    tree = ast.parse(text)
    lines = text.splitlines()
    drop: set[int] = set()  # 0-based line numbers
    imports: list[str] = []
    from_package: set[str] = set()
    defined: set[str] = set()
    for i, node in enumerate(tree.body):
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        span = range(first, node.end_lineno or node.lineno)
        is_docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
            from_package |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            pass
        elif isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(ast.get_source_segment(text, node) or "")
        elif is_docstring or _is_register_call(node) or _assigns(node) == {"__all__"}:
            pass
        else:
            defined |= _defines(node)
            continue
        drop.update(span)
    body = "\n".join(line for n, line in enumerate(lines) if n not in drop).strip("\n")
    return imports, from_package, defined, body


def _assigns(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def _defines(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return {node.name}
    return _assigns(node)


def _assemble(modules: tuple[str, ...], provided: set[str], relative: str | None) -> tuple[str, set[str]]:
    """One self-contained file from `modules` (names in `provided` come `from .relative import`); (text, defined)."""
    imports: list[str] = []
    needed: set[str] = set()
    defined: set[str] = set()
    bodies = []
    for m in modules:
        imp, from_pkg, names, body = _split(m)
        imports += [s for s in imp if s not in imports]
        needed |= from_pkg
        defined |= names
        bodies.append(f"# ---- from {m}\n\n{body}")
    missing = needed - defined - provided
    if missing:
        names = ", ".join(sorted(missing))
        raise ExportError(f"cannot assemble the custom model code: {names} not defined by {', '.join(modules)}")
    if relative and needed - defined:
        imports.append(f"from .{relative} import {', '.join(sorted(needed - defined))}")
    header = (
        f"# Generated by nasbert-deploy {_version()} from {', '.join(modules)}.\n"
        "# Self-contained: imports only the Python standard library, torch and transformers. Do not edit; re-export.\n"
        '"""NAS-BERT model code for transformers\' trust_remote_code loading (see the folder\'s README.md)."""\n\n'
        "from __future__ import annotations\n\n"
    )
    text = header + "\n".join(imports) + "\n\n\n" + "\n\n\n".join(bodies) + "\n"
    _check_imports(text, modules)
    return text, defined


def _check_imports(text: str, modules: tuple[str, ...]) -> None:
    for node in ast.walk(ast.parse(text)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        bad = [n for n in names if n.split(".")[0] not in ALLOWED_IMPORTS]
        if bad:
            raise ExportError(f"the custom model code assembled from {', '.join(modules)} would import {', '.join(bad)}")


def remote_code_files() -> dict[str, str]:
    """{file name: source} of the two self-contained files."""
    config_text, config_names = _assemble(CONFIG_MODULES, set(), None)
    modeling_text, _ = _assemble(MODELING_MODULES, config_names, CONFIG_FILE.removesuffix(".py"))
    return {CONFIG_FILE: config_text, MODELING_FILE: modeling_text}


def write_remote_code(folder: str | os.PathLike[str]) -> list[Path]:
    """Write the two files into `folder` (a saved model with `config.json`) and add `auto_map` to its config.

    Returns the paths written. `ExportError` if `folder` has no readable `config.json`.
    """
    from nasbert_deploy.fileio import write_json_atomic, write_text_atomic

    folder = Path(folder)
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{cfg_path} is not a readable model config: {exc}") from None
    written = []
    for name, text in remote_code_files().items():
        write_text_atomic(folder / name, text)
        written.append(folder / name)
    cfg["auto_map"] = dict(AUTO_MAP)
    write_json_atomic(cfg_path, cfg)
    return written
