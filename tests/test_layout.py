"""The layers import downwards only: scripts > lib/ > model.py, data.py > lib/common.py, read from the sources."""

from __future__ import annotations

import ast

import pytest
from helpers import ROOT

SCRIPTS = {"train", "test", "predict"}


def layer(module: str) -> int:
    """0 the shared errors and constants, 1 the data and the network, 2 lib/, 3 the scripts and benchmarks."""
    if module == "lib.common":
        return 0
    if module in ("data", "model"):
        return 1
    if module.startswith("lib"):
        return 2
    return 3


def project_imports(path) -> set[str]:
    """The project's modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        for name in names:
            if name in ("lib", "data", "model", "benchmarks") or name in SCRIPTS or name.startswith(("lib.",
                                                                                                   "benchmarks.")):
                found.add(name)
        if isinstance(node, ast.ImportFrom) and node.module == "lib":  # from lib import training
            found |= {f"lib.{alias.name}" for alias in node.names}
    return found - {"lib"}


SOURCES = sorted([*ROOT.glob("*.py"), *(ROOT / "lib").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_no_module_imports_one_above_it_and_no_script_another(path):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for imported in project_imports(path):
        if layer(name) == 2 and layer(imported) == 2:
            continue  # lib/ modules use each other
        assert layer(imported) < layer(name), f"{name} imports {imported}"


def test_the_check_sees_an_import_from_above_even_inside_a_function(tmp_path):
    # What data.py once did (lib.cli for UserError), and a lazy import of the kind the scripts use.
    source = tmp_path / "data.py"
    source.write_text("from lib.cli import progress\n\ndef f():\n    from lib import checkpoints\n    import torch\n")
    imported = project_imports(source)
    assert imported == {"lib.cli", "lib.checkpoints"}
    assert all(layer(module) > layer("data") for module in imported)


@pytest.mark.parametrize("module, allowed", [
    ("lib/checkpoints.py", {"lib.common", "lib.files", "model"}),  # the file format: no run folder, no plotting
    ("data.py", {"lib.common"}),  # MNIST only: users' images are lib.images'
    ("lib/fast_copies.py", {"lib.common", "model"}),  # folding and int8: no data loading, no evaluation
])
def test_each_job_lives_apart(module, allowed):
    assert project_imports(ROOT / module) <= allowed
