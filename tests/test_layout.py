"""The package's shape, checked: each subpackage imports only from the layers below it, the foundation
modules import no other module of the package, and no module or function outgrows a reader.

Layers, top to bottom (README "Where things live"): a module may import its own subpackage and anything
lower, never higher. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # top first
    "cli",
    "pipeline",
    "runs",
    "training",
    "callbacks",
    "evaluation",
    "generation",
    "rewards",
    "models",
    "tiny",
    "data",
    "tools",
    "foundation",
]
FOUNDATION = {"errors", "console", "progress", "text", "hf_compat"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "r1_lightning").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__")] = path
    for path in sorted((ROOT / "callbacks").glob("*.py")):
        found["r1_lightning.callbacks" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of this package (None for the package root ``r1_lightning``)."""
    parts = module.split(".")
    if parts[0] != "r1_lightning" or len(parts) == 1:
        return None
    return "foundation" if parts[1] in FOUNDATION else parts[1]


def imported_modules(path: Path, module: str) -> set[str]:
    """Every ``r1_lightning`` module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # ``from pkg import module`` imports a module
                candidate = f"{base}.{alias.name}"
                names.add(candidate if candidate in MODULES else base)
    return {n for n in names if n.startswith("r1_lightning")}


def test_every_module_belongs_to_a_known_layer():
    unknown = {m for m in MODULES if m != "r1_lightning" and layer_of(m) not in LAYERS}
    assert not unknown, f"modules outside the layers {LAYERS}: {sorted(unknown)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_point_down(module):
    here = layer_of(module)
    if here is None:
        return
    upward = []
    for target in imported_modules(MODULES[module], module):
        there = layer_of(target)
        if there is None:
            continue
        if here == "foundation":
            upward.append(target)  # the foundation imports no module of the package
        elif LAYERS.index(there) < LAYERS.index(here):
            upward.append(target)
    assert not upward, f"{module} ({here}) imports higher layers: {sorted(upward)}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself bites: a rollout module importing the GRPO module is reported."""
    bad = tmp_path / "rollout.py"
    bad.write_text("def f():\n    from r1_lightning.training.grpo import GRPOModule\n")
    targets = imported_modules(bad, "r1_lightning.generation.rollout")
    assert targets == {"r1_lightning.training.grpo"}
    assert LAYERS.index(layer_of("r1_lightning.training.grpo")) < LAYERS.index("generation")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_readable(module):
    source = MODULES[module].read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (> {MAX_MODULE_LINES}): split it by meaning"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"
