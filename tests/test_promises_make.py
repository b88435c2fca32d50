"""README promises of `make pretrain` and `make finetune*`: what make would run (``make -n``) in a fresh folder and
in one where earlier runs left their files, and that the configs it runs read what it renders. The runs themselves
are not made here: the targets' data sizes are fixed (1000 groups and more), minutes of rendering each."""

import contextlib
import functools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crocoman.main import cli
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make, as the README's commands do")

PRETRAIN_CONFIG = "configs/pretrain/cpu_demo.yaml"
FINETUNE_TARGETS = re.findall(r"^(finetune[\w-]*):", (REPO / "Makefile").read_text(), flags=re.MULTILINE)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A checkout as make sees it: the Makefile and the pyproject.toml the install depends on."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").touch()
    return tmp_path


def dry_run(folder: Path, target: str, *flags: str) -> list[str]:
    """The commands make would run, as a user's top-level make prints them: under ``make test`` the outer make's
    MAKELEVEL and MAKEFLAGS would add "Entering directory" lines and its options."""
    env = {name: value for name, value in os.environ.items() if name not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(
        ["make", "-n", *flags, target], cwd=folder, env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def leave_files_of_a_previous_run(folder: Path, target: str) -> None:
    """Every file the target's rules make (as ``make -t`` would touch them), newer than pyproject.toml."""
    for line in dry_run(folder, target, "-t"):
        path = folder / line.removeprefix("touch ")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@functools.cache
def checkpoint_folders() -> tuple[str, ...]:
    """Where the pretraining config's checkpoint callbacks write, as ``crocoman fit`` builds them from the repo root."""
    with contextlib.chdir(REPO):
        built = cli(["-c", PRETRAIN_CONFIG], run=False)
    return tuple(callback.dirpath for callback in built.trainer.checkpoint_callbacks)


def option(line: str, name: str) -> str | None:
    words = shlex.split(line)
    return words[words.index(name) + 1] if name in words else None


def crocoman(lines: list[str], subcommand: str, config: str | None = None) -> list[int]:
    """Indices of the lines running ``crocoman <subcommand> -c <config>`` (any config when None)."""
    return [i for i, line in enumerate(lines) if re.search(rf"/crocoman {subcommand} -c {config or ''}", line)]


def rendered(lines: list[str]) -> dict[str, int]:
    """Folder -> index of the ``crocoman-data`` line that writes it."""
    return {option(line, "--out"): i for i, line in enumerate(lines) if "/crocoman-data " in line}


def values(node, key: str) -> Iterator:
    """Every value under ``key`` anywhere in a parsed YAML."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                yield value
            yield from values(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from values(item, key)


def data_folders(config: str) -> set[str]:
    """The folders a config reads data from: its shards' dataset folders and its body-model folder."""
    parsed = yaml.safe_load((REPO / config).read_text())
    shards = [value for key in ("train_shards", "val_shards", "shards") for value in values(parsed, key)]
    return {str(Path(path).parent) for path in shards} | set(values(parsed, "model_path"))


def test_make_pretrain_installs_renders_its_data_once_then_pretrains(folder: Path):
    fresh = dry_run(folder, "pretrain")
    venv = next(i for i, line in enumerate(fresh) if " -m venv " in line)
    install = next(i for i, line in enumerate(fresh) if "pip install" in line and " -e " in line)
    data = rendered(fresh)
    assert crocoman(fresh, "fit", PRETRAIN_CONFIG) == [len(fresh) - 1]  # pretrains, last
    assert sorted(data) == ["data/synth", "data/synth_probe"] and data_folders(PRETRAIN_CONFIG) == set(data)
    assert venv < install < min(data.values())
    leave_files_of_a_previous_run(folder, "pretrain")
    assert dry_run(folder, "pretrain") == fresh[-1:]  # installed and rendered once: only the training runs again


@pytest.mark.parametrize("target", FINETUNE_TARGETS)
def test_make_finetune_pretrains_first_when_the_checkpoint_is_missing_and_renders_its_data(folder: Path, target: str):
    fresh = dry_run(folder, target)
    (validate,), (fit,) = crocoman(fresh, "validate"), crocoman(fresh, "fit", "configs/finetune/")
    config = option(fresh[validate], "-c")
    assert option(fresh[fit], "-c") == config and fit == validate + 1 == len(fresh) - 1  # validate, then fit
    pretraining = crocoman(fresh, "fit", PRETRAIN_CONFIG)
    assert len(pretraining) == 1 and pretraining[0] < validate, "no checkpoint yet: pretrains first"
    data = rendered(fresh)
    assert data_folders(config) <= set(data) and max(data.values()) < validate
    # The config starts from the checkpoint that pretraining leaves.
    (pretrained,) = values(yaml.safe_load((REPO / config).read_text()), "pretrained")
    assert pretrained in [os.path.relpath(Path(folder, "last.ckpt"), REPO) for folder in checkpoint_folders()]
    leave_files_of_a_previous_run(folder, target)
    assert dry_run(folder, target) == fresh[validate:]  # everything there: validate and fit only
    (folder / pretrained).unlink()
    assert dry_run(folder, target) == [fresh[pretraining[0]], *fresh[validate:]]  # the checkpoint alone is missing
