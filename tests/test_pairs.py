import json
import random

import pytest
import torch

from torch.utils.data import default_collate

from datamodules.pairs import CROSS_POSE, CROSS_VIEW, PairDataModule, candidate_pairs, choose_pair
from datamodules.shards import expand_shards

FRAMES = [{"camera": f"cam{c}", "time": t} for c in range(3) for t in range(4)]


def test_candidate_pairs_follow_the_schema():
    cross_view, cross_pose = candidate_pairs(FRAMES, time_gap=(1, 1))
    for i, j in cross_view:
        assert FRAMES[i]["time"] == FRAMES[j]["time"] and FRAMES[i]["camera"] != FRAMES[j]["camera"]
    for i, j in cross_pose:
        assert FRAMES[i]["camera"] == FRAMES[j]["camera"] and abs(FRAMES[i]["time"] - FRAMES[j]["time"]) == 1
    assert len(cross_view) == 4 * 3 * 2 and len(cross_pose) == 3 * 3 * 2


@pytest.mark.parametrize(("ratio", "expected"), [(1.0, {CROSS_VIEW}), (0.0, {CROSS_POSE})])
def test_ratio_selects_pair_type(ratio, expected):
    rng = random.Random(0)
    assert {choose_pair(FRAMES, rng, ratio, (1, 3))[2] for _ in range(50)} == expected


def test_mixed_ratio_and_fallback():
    rng = random.Random(0)
    types = [choose_pair(FRAMES, rng, 0.3, (1, 3))[2] for _ in range(2000)]
    assert 0.25 < types.count(CROSS_VIEW) / len(types) < 0.35
    one_camera = [f for f in FRAMES if f["camera"] == "cam0"]
    assert choose_pair(one_camera, rng, 1.0, (1, 3))[2] == CROSS_POSE  # no second camera: falls back
    with pytest.raises(ValueError, match="no cross-view or cross-pose pair"):
        choose_pair(one_camera[:1], rng, 0.5, (1, 3))


def test_expand_shards_forms(pair_shards):
    train = expand_shards(str(pair_shards / "train"))
    assert len(train) == 3 and all(u.endswith(".tar") for u in train)
    pattern = str(pair_shards / "train" / "pairs-{000000..000001}.tar")
    assert expand_shards(pattern) == train[:2]
    assert expand_shards([str(pair_shards / "train"), str(pair_shards / "val")])[3:] == expand_shards(
        str(pair_shards / "val"))
    assert expand_shards("pipe:cat /x/a-{0..2}.tar") == [f"pipe:cat /x/a-{i}.tar" for i in range(3)]
    with pytest.raises(FileNotFoundError, match="no shards found"):
        expand_shards(str(pair_shards / "missing"))


def test_train_batches_are_full_and_well_formed(pair_shards):
    dm = PairDataModule(str(pair_shards / "train"), batch_size=4, num_workers=0, image_size=32,
                        epoch_pairs=12, shuffle_buffer=4)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert batch["image1"].shape == (4, 3, 32, 32) and batch["image2"].shape == (4, 3, 32, 32)
        assert batch["person1"].shape == (4, 32, 32) and batch["pair_type"].shape == (4,)
        assert batch["image1"].dtype == torch.uint8 and batch["person1"].dtype == torch.bool  # workers hand over bytes
        assert batch["person1"].sum() > 0
        finished = dm.on_after_batch_transfer(batch, 0)
        assert finished["image1"].dtype == torch.float32 and finished["image1"].max() <= 1.0
        assert finished["image1"].max() > 0.5 and finished["image2"].min() >= 0.0


def test_validation_is_deterministic_and_complete(pair_shards):
    dm = PairDataModule(str(pair_shards / "train"), val_shards=str(pair_shards / "val"), batch_size=3,
                        num_workers=0, image_size=32)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert sum(len(b["pair_type"]) for b in first) == 8
    for a, b in zip(first, second):
        torch.testing.assert_close(a["image1"], b["image1"])
        torch.testing.assert_close(a["pair_type"], b["pair_type"])


def test_too_few_shards_for_workers_is_an_error_not_a_hang(pair_shards):
    dm = PairDataModule(str(pair_shards / "train"), val_shards=str(pair_shards / "val"), num_workers=4)
    with pytest.raises(ValueError, match="cannot be split over 1 ranks x 4 workers"):
        dm.val_dataloader()


def test_person_mask_falls_back_to_bbox(pair_shards, tmp_path):
    import webdataset as wds

    sample = next(iter(wds.WebDataset(expand_shards(str(pair_shards / "val")), shardshuffle=False)))
    group = json.loads(sample["group.json"])
    for frame in group["frames"]:
        frame.pop("mask")
    frame = group["frames"][0]
    x, y, w, h = (int(round(v)) for v in frame["bbox"])
    sample["group.json"] = json.dumps(group).encode()
    dm = PairDataModule("unused", image_size=64, augment=False)
    view, _ = dm._sampler(train=False).view(sample, frame, None, with_mask=True)
    person = view["person"]
    assert person[y:y + h, x:x + w].all() and person.sum() == pytest.approx(min(h, 64 - y) * min(w, 64 - x))


def test_sources_mix_with_configured_weights(pair_shards):
    """Val groups are numbered after the 24 train groups, so keys tell the two sources apart."""
    dm = PairDataModule([str(pair_shards / "train"), str(pair_shards / "val")], train_weights=[1.0, 3.0],
                        batch_size=16, num_workers=0, image_size=16, epoch_pairs=640, shuffle_buffer=1, augment=False)
    keys = [k for batch in dm.train_dataloader() for k in batch["key"]]
    val_share = sum(int(k.removeprefix("group")) >= 24 for k in keys) / len(keys)
    assert len(keys) == 640 and 0.68 < val_share < 0.82


def test_bad_weights_are_refused(pair_shards):
    dm = PairDataModule([str(pair_shards / "train")], train_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="one non-negative weight per train_shards entry"):
        dm.train_dataloader()


def test_pipe_urls_read_like_files(pair_shards):
    shard = expand_shards(str(pair_shards / "val"))[0]
    direct = PairDataModule("unused", val_shards=shard, batch_size=8, num_workers=0, image_size=16)
    piped = PairDataModule("unused", val_shards=f"pipe:cat {shard}", batch_size=8, num_workers=0, image_size=16)
    a, b = next(iter(direct.val_dataloader())), next(iter(piped.val_dataloader()))
    assert a["key"] == b["key"]
    torch.testing.assert_close(a["image1"], b["image1"])


def test_time_gap_range_bounds_cross_pose_pairs():
    _, cross_pose = candidate_pairs(FRAMES, time_gap=(2, 3))
    gaps = {abs(FRAMES[i]["time"] - FRAMES[j]["time"]) for i, j in cross_pose}
    assert gaps == {2, 3}


@pytest.mark.parametrize("augment_on", ["worker", "device"])
@pytest.mark.parametrize("independent", [True, False])
def test_shared_or_independent_augmentation(pair_shards, independent, augment_on):
    """With one shared draw, a cross-view pair of identical images stays identical; independent draws differ."""
    import webdataset as wds

    sample = next(iter(wds.WebDataset(expand_shards(str(pair_shards / "val")), shardshuffle=False)))
    group = json.loads(sample["group.json"])
    for frame in group["frames"]:  # make every frame the same picture
        sample[frame["name"]] = sample[group["frames"][0]["name"]]
    sample["group.json"] = json.dumps(group).encode()
    dm = PairDataModule("unused", image_size=32, independent_augmentation=independent, augment_on=augment_on)
    torch.manual_seed(0)
    pair = dm.on_after_batch_transfer(default_collate([dm._sampler(train=True)(sample)]), 0)
    assert torch.equal(pair["image1"], pair["image2"]) != independent
