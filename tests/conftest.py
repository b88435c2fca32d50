"""Shared fixtures: real shards on disk, written by our own synthetic-world tool."""

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backbone.weights import read_checkpoint
from crocoman.synth import write_pair_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


def run_job(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """A command-line job as a cluster runs it, in its own process group. A job still running after ``timeout``
    seconds fails the test with where every process of it was (faulthandler's stacks, on SIGABRT); so does one
    whose ranks, loader workers or their server outlive it, killed or not (``subprocess.run`` would wait
    for them, or kill the first process only)."""
    job = subprocess.Popen(command, cwd=cwd, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGABRT)
        try:
            stdout, stderr = job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            stdout, stderr = job.communicate()
        pytest.fail(f"{' '.join(command[:5])} ... still running after {timeout} s; its processes' stacks:\n"
                    f"{stderr[-20000:]}")
    left = _processes_left(job.pid, grace=15.0)
    if left:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"{' '.join(command[:5])} ... ended (exit {job.returncode}) and left these running: {left}")
    return subprocess.CompletedProcess(command, job.returncode, stdout, stderr)


def _processes_left(group: int, grace: float) -> list[str]:
    """Command lines of the processes still in ``group`` after up to ``grace`` seconds (zombies are gone)."""
    deadline = time.monotonic() + grace
    while True:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group and fields[0] != "Z":
                    left.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except (OSError, IndexError, ValueError):
                continue  # ended while being read
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def pair_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic pair-shard set: 3 train shards and 2 val shards of 64 px groups."""
    out = tmp_path_factory.mktemp("pairs")
    write_pair_shards(out, num_groups=24, val_groups=8, image_size=64, cameras=2, times=3, seed=0,
                      groups_per_shard=8)
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models and many small tensor ops run no faster on a second intra-op thread, and on cores
    shared with other jobs it only adds synchronisation (several times the work). Module scope, and
    requested through ``pytestmark``, so module-scoped fixtures that render or build models get it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same random state, whatever ran before it in this process: DataModules seed
    their streams from ``torch.initial_seed()``, so an earlier test's seed would otherwise change what a later
    one reads (and a test would pass or fail depending on which tests ran first)."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def finish_wandb_runs():
    """Each CLI run in a test gets its own W&B run, as separate processes would."""
    yield
    import wandb

    wandb.finish()


def end_state(checkpoint: Path) -> dict:
    """A checkpoint file's entries; for a distributed checkpoint folder (FSDP2, FSDP) the same entries, its
    shards gathered by ``read_checkpoint`` (weights under ``state_dict`` from FSDP2, ``model`` from FSDP) and the
    rest from ``meta.pt``."""
    entries = read_checkpoint(checkpoint)
    if not checkpoint.is_dir():
        return entries
    weights = entries["state_dict"] if "state_dict" in entries else entries["model"]
    return {**torch.load(checkpoint / "meta.pt", weights_only=True), "state_dict": weights,
            "optimizer_states": [entries["optimizer_0"]]}


def assert_same_end_state(checkpoint: Path, reference: Path, step: int) -> None:
    """Two runs ended at ``step`` with the same weights, optimiser state, learning rates and LR schedule."""
    ends = [end_state(path) for path in (checkpoint, reference)]
    assert ends[0]["global_step"] == ends[1]["global_step"] == step
    for name, tensor in ends[1]["state_dict"].items():
        assert torch.equal(ends[0]["state_dict"][name], tensor), name
    optimizers = [end["optimizer_states"][0] for end in ends]
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]  # learning rates included
    for index, state in optimizers[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizers[0]["state"][index][key], value), (index, key)
    assert ends[0]["lr_schedulers"] == ends[1]["lr_schedulers"]
