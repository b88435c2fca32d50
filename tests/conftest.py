"""Shared fixtures: real shards on disk, written by our own synthetic-world tool."""

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from crocoman.synth import write_pair_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


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
