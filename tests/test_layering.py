"""The packages import one way, from the top floor down: run tools (crocoman) -> lightning_modules -> datamodules,
heads -> backbone -> body. A package may import only the floors its row names (README, "Layout")."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

from body import BodyModel
from tests.conftest import REPO

PACKAGES = ("body", "backbone", "heads", "datamodules", "lightning_modules", "crocoman")
MAY_IMPORT = {
    "body": set(),
    "backbone": {"body"},
    "heads": {"body", "backbone"},
    "datamodules": {"body"},
    "lightning_modules": {"body", "backbone", "heads", "datamodules"},
    "crocoman": {"body", "backbone", "heads", "datamodules", "lightning_modules"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(first-party package, line) of every import in a file, function-level ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in PACKAGES}
    return found


def test_every_import_runs_down_the_floors():
    against = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for imported, line in sorted(imported_packages(path)):
                if imported != package and imported not in MAY_IMPORT[package]:
                    against.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert not against, "imports against the floors:\n" + "\n".join(against)


def test_converters_and_synthetic_world_do_not_import_each_other():
    """Two rooms of the run tools, each writing shards through ``datamodules.format``; only ``crocoman.data``
    (the ``crocoman-data`` command above them) imports both."""
    against = []
    for room, other in (("convert", "synth"), ("synth", "convert")):
        for path in sorted((REPO / "crocoman" / room).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            modules = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
            modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
            against += [f"{path.relative_to(REPO)} imports {m}" for m in modules if m.startswith(f"crocoman.{other}")]
    assert not against, "\n".join(against)


def test_the_rule_sees_an_import_against_it(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from lightning_modules.mesh import MeshRecoveryModule\n")
    assert imported_packages(path) == {("lightning_modules", 2)}


@pytest.mark.parametrize(("old", "new"), [("heads.body_model", "body.model"), ("heads.rotations", "body.rotations"),
                                          ("heads.camera", "body.camera"), ("datamodules.mirror", "body.mirror")])
def test_moved_modules_still_import_with_a_warning(old, new, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        moved = importlib.import_module(old)
    public = [name for name in vars(importlib.import_module(new)) if not name.startswith("_")]
    assert all(getattr(moved, name) is getattr(importlib.import_module(new), name) for name in public)


def test_old_yaml_class_path_of_the_body_model_resolves_with_a_warning():
    import heads

    with pytest.warns(DeprecationWarning, match="heads.BodyModel moved to body.BodyModel"):
        assert heads.BodyModel is BodyModel
