"""README promises of the data side: loader workers that start afresh every epoch, ``augment_on`` in every
labelled DataModule, the converters' defaults (crop size, samples per shard) and the shard counts the README's
table derives from them."""

import importlib
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import LabelledDataModule, MeshDataModule, PairDataModule
from datamodules.base import ShardDataModule
from datamodules.shards import StreamSeeds
from tests.conftest import REPO
from crocoman.convert import CONVERTERS
from crocoman.data import main as data_main
from crocoman.synth import write_labelled_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batches(dm: ShardDataModule, epochs: int) -> list[list[dict]]:
    """``epochs`` passes over one training loader, the way Lightning iterates it once per epoch."""
    loader = dm.train_dataloader()
    return [list(loader) for _ in range(epochs)]


def same(first: list[dict], second: list[dict]) -> bool:
    return len(first) == len(second) and all(
        a["key"] == b["key"] and torch.equal(a["image1"], b["image1"]) for a, b in zip(first, second))


def test_loader_workers_restart_every_epoch_and_take_its_seeds(pair_shards: Path, monkeypatch):
    """Epoch 1 of a loader that ran epoch 0 (same loader, its worker started again) reads exactly what a loader
    started at epoch 1 reads (a resumed run), samples and augmentation alike, and not epoch 0's stream."""
    def pairs() -> PairDataModule:
        return PairDataModule(str(pair_shards / "train"), batch_size=2, num_workers=1, image_size=32,
                              epoch_pairs=6, shuffle_buffer=4)

    epoch0, epoch1 = batches(pairs(), 2)
    resumed = pairs()
    monkeypatch.setattr(resumed, "stream_seeds",
                        lambda: StreamSeeds(torch.initial_seed(), rank=0, epoch=1, skip_batches=0))
    (started_at_1,) = batches(resumed, 1)
    assert len(epoch1) == 3 and same(epoch1, started_at_1)
    assert not same(epoch0, epoch1)


@pytest.fixture(scope="module")
def hand_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("augment_on_hands")
    write_labelled_shards(out, 8, task="hand", image_size=32, samples_per_shard=4)
    return out


def first_batch(dm: ShardDataModule) -> tuple[dict, dict]:
    """The first training batch as the workers hand it over, and after the transfer hook; drawn from the same
    seeded generators whatever the DataModule (in-process loading augments with the process's generators)."""
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    handed_over = next(iter(dm.train_dataloader()))
    keys = set(handed_over)
    return keys, dm.on_after_batch_transfer(handed_over, 0)


@pytest.mark.parametrize(("datamodule", "options"),
                         [(LabelledDataModule, {"label_keys": ("cls", "json", "npz")}), (MeshDataModule, {})])
def test_labelled_and_mesh_datamodules_take_augment_on(hand_shards: Path, datamodule: type, options: dict):
    """``augment_on: device`` sends the jitter's parameters with the uint8 image and jitters after the transfer;
    both modes give the same batch (the worker rounds to 8 bits after each op), and the jitter does change it."""
    def make(augment_on: str, color_jitter: float = 0.4) -> ShardDataModule:
        return datamodule(str(hand_shards / "train"), batch_size=4, num_workers=0, image_size=32, epoch_samples=8,
                          shuffle_buffer=4, color_jitter=color_jitter, augment_on=augment_on, **options)

    (worker_keys, worker), (device_keys, device) = first_batch(make("worker")), first_batch(make("device"))
    _, unjittered = first_batch(make("worker", color_jitter=0.0))
    assert "image_jitter" in device_keys and "image_jitter" not in worker_keys | set(device)
    difference = (worker["image"] - device["image"]).abs()
    assert difference.max() <= 4 / 255 and difference.mean() < 0.5 / 255
    assert (worker["image"] - unjittered["image"]).abs().mean() > 4 / 255
    assert worker["key"] == device["key"] and worker["has"].keys() == device["has"].keys()
    for name in {name for name in worker if not name.startswith("__")} - {"image", "key", "has"}:
        assert torch.equal(worker[name], device[name]), name
    for name in worker["has"]:
        assert torch.equal(worker["has"][name], device["has"][name]), name


def parsed_options(dataset: str, monkeypatch, *options: str) -> dict:
    """The options ``crocoman-data convert <dataset>`` hands its converter, as a user's command line parses."""
    converter = importlib.import_module(CONVERTERS[dataset])
    seen = {}
    monkeypatch.setattr(converter, "convert", lambda args: seen.update(vars(args)))
    data_main(["convert", dataset, "--root", "in", "--out", "out", *options])
    return seen


@pytest.mark.parametrize("dataset", sorted(CONVERTERS))
def test_converters_crop_224_px_and_write_100_samples_a_shard_by_default(dataset: str, monkeypatch):
    """README: `--size` is 224 by default, 256 for 3DPW and DensePose-COCO; shards hold 100 samples (or groups)
    unless `--samples-per-shard` says otherwise."""
    defaults = parsed_options(dataset, monkeypatch)
    assert defaults["size"] == (256 if dataset in ("threedpw", "densepose_coco") else 224)
    assert defaults["samples_per_shard"] == 100
    chosen = parsed_options(dataset, monkeypatch, "--samples-per-shard", "7", "--size", "96")
    assert (chosen["samples_per_shard"], chosen["size"]) == (7, 96)


# Where the README's fine-tuning table row of each converter gives its sample and shard counts: as "samples /
# ... then shards / ..." (three splits) or "samples, shards, samples, shards" (two).
LABEL_TABLE_COUNTS = {
    "threedpw": r"~(\S+) / (\S+) / (\S+) train / val / test crops, ~(\S+) / (\S+) / (\S+) shards",
    "freihand": r"up to (\S+) train crops .*? in (\S+) shards; (\S+) test in (\S+) ",
    "densepose_coco": r"~(\S+) train people \(~(\S+) shards\), ~(\S+) minival \(~(\S+)\)",
    "hagrid": r"v2: ~(\S+) / (\S+) / (\S+) boxes, ~(\S+) / (\S+) / (\S+) shards",
}


def figure(text: str) -> float:
    """A count as the README writes it: 130,240 / 23k / 1.4k / 1.1M."""
    text = text.replace(",", "")
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("kM")) * scale


@pytest.mark.parametrize("dataset", sorted(LABEL_TABLE_COUNTS))
def test_the_label_tables_shard_counts_are_its_sample_counts_at_100_a_shard(dataset: str, monkeypatch):
    """README's fine-tuning table: each split's shard count is its sample count over the converter's default
    samples per shard (exactly where the counts are exact, to the written precision where they are "~").
    The sample counts themselves are the datasets' published sizes, which only a real conversion shows."""
    per_shard = parsed_options(dataset, monkeypatch)["samples_per_shard"]
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("|") and f"crocoman-data convert {dataset} " in line)
    counts = [figure(group) for group in re.search(LABEL_TABLE_COUNTS[dataset], row).groups()]
    pairs = list(zip(counts[:3], counts[3:])) if len(counts) == 6 else [tuple(counts[i:i + 2]) for i in (0, 2)]
    for samples, shards in pairs:
        if "~" in row:
            assert shards == pytest.approx(samples / per_shard, rel=0.05), (samples, shards)
        else:
            assert shards == math.ceil(samples / per_shard), (samples, shards)
