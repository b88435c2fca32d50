"""Bad data is skipped, counted and logged; good data around it still arrives."""

import csv
import itertools
import tarfile

import pytest
import torch
import webdataset as wds

from datamodules import PairDataModule
from datamodules.health import SKIP_KINDS, SKIPPED_KEY
from datamodules.shards import expand_shards


def write(path, samples) -> None:
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})


@pytest.fixture(scope="module")
def faulty_shards(pair_shards, tmp_path_factory):
    """Shard 0: 4 good groups, one with corrupt JPEGs, one naming frames that are not in the tar.
    Shard 1: 3 good groups, cut off inside the last member (the 3rd group's group.json)."""
    out = tmp_path_factory.mktemp("faulty")
    good = list(wds.WebDataset(expand_shards(str(pair_shards / "train")), shardshuffle=False))
    corrupt = {k: (b"not a jpeg" if k.endswith(".jpg") else v) for k, v in good[4].items()}
    missing = {k: v for k, v in good[5].items() if not k.endswith((".jpg", ".png"))}
    write(out / "pairs-000000.tar", [*good[:4], corrupt, missing])
    truncated = out / "pairs-000001.tar"
    write(truncated, good[6:9])
    with tarfile.open(truncated) as tar:
        last = tar.getmembers()[-1]
    assert last.name.endswith("group.json")
    with open(truncated, "r+b") as f:
        f.truncate(last.offset_data + 5)
    return out


def test_faults_are_skipped_and_counted(faulty_shards):
    dm = PairDataModule(str(faulty_shards), val_shards=str(faulty_shards), batch_size=2, num_workers=0,
                        image_size=32)
    batches = list(dm.val_dataloader())
    skipped = stream_skips(batches)
    # the cut-off group arrives without its group.json: counted as a missing key
    assert skipped == {"unreadable_shard": 1, "corrupt_image": 1, "missing_key": 2, "bad_sample": 0}
    assert sum(len(b["pair_type"]) for b in batches) == 4 + 2


def stream_skips(batches) -> dict[str, int]:
    """Skips per kind that a loader handed over with ``batches``, as the DataModule adds them up."""
    return dict(zip(SKIP_KINDS, sum(batch[SKIPPED_KEY] for batch in batches).tolist()))


@pytest.mark.parametrize("augment_on", ["worker", "device"])
def test_faulty_shards_train_through_the_cli_and_log_counts(faulty_shards, tmp_path, monkeypatch, augment_on):
    from tests.test_cli import REPO, TINY_MODEL
    from crocoman.main import main

    monkeypatch.chdir(tmp_path)
    data = {"batch_size": 2, "num_workers": 0, "epoch_pairs": 16, "shuffle_buffer": 4, "image_size": 64}
    main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL,
          f"--data.train_shards={faulty_shards}", f"--data.val_shards={faulty_shards}",
          *(f"--data.{name}={value}" for name, value in data.items()), f"--data.augment_on={augment_on}",
          "--trainer.max_steps=8",
          "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=logs"])
    with open(tmp_path / "logs/lightning_logs/version_0/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["data/skipped/unreadable_shard"]]
    final = {kind: int(float(rows[-1][f"data/skipped/{kind}"])) for kind in SKIP_KINDS}
    # The run reads: the sanity check's 2 validation batches, one epoch of 8 steps x 2 pairs, one validation
    # pass. A full validation pass meets every fault once (test above); the sanity check's 2 batches meet
    # shard 0's two bad groups (the batcher reads on to the sample after a full batch before it hands it over).
    # Training draws shards with replacement, so its skips are those of the same seeded stream, read here
    # again outside the trainer (seed_everything(0) in the run).
    one_validation = {"unreadable_shard": 1, "corrupt_image": 1, "missing_key": 2, "bad_sample": 0}
    sanity_check = {"unreadable_shard": 0, "corrupt_image": 1, "missing_key": 1, "bad_sample": 0}
    torch.manual_seed(0)
    replay = PairDataModule(str(faulty_shards), val_shards=str(faulty_shards), augment_on=augment_on, **data)
    assert stream_skips(itertools.islice(replay.val_dataloader(), 2)) == sanity_check
    training = stream_skips(replay.train_dataloader())
    assert training["corrupt_image"] and training["unreadable_shard"]  # training did read through faults
    assert final == {kind: sanity_check[kind] + training[kind] + one_validation[kind] for kind in SKIP_KINDS}


def test_a_stream_of_only_unreadable_shards_is_an_error_not_an_endless_loop(tmp_path):
    for index in range(2):
        (tmp_path / f"pairs-00000{index}.tar").write_bytes(b"this is not a tar file" * 40)
    dm = PairDataModule(str(tmp_path), batch_size=2, num_workers=0, image_size=32)
    with pytest.raises(RuntimeError, match="skips in a row without one good batch"):
        next(iter(dm.train_dataloader()))
