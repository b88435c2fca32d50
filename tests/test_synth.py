"""The synthetic world writes pair shards that follow the schema, are reproducible and are right
about geometry: joints project where the person is, and times differ in pose."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from body.layouts import SMPL_JOINT_NAMES, SMPL_PARENTS
from crocoman.data import main
from crocoman.synth import BodyShape, Motion, encode_group, forward_kinematics, write_pair_shards
from crocoman.synth.skeleton import JOINT_HIGH_RAD, JOINT_LOW_RAD, rest_offsets

SIZE, CAMERAS, TIMES = 64, 3, 3
TRAIN_GROUPS, VAL_GROUPS = 5, 2
FRAME_KEYS = {"name", "mask", "camera", "time", "K", "R", "t", "bbox", "joints_2d", "joints_3d"}
TORSO = [SMPL_JOINT_NAMES.index(name) for name in ("pelvis", "spine1", "spine2", "spine3")]


def _write(root: Path, workers: int) -> dict:
    return write_pair_shards(
        root, TRAIN_GROUPS, image_size=SIZE, cameras=CAMERAS, times=TIMES, seed=0, workers=workers,
        groups_per_shard=2, val_groups=VAL_GROUPS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth")
    return root, _write(root, workers=1)


def _read(root: Path, split: str) -> list[dict]:
    urls = sorted(str(path) for path in (root / split).glob("pairs-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False))


def _frames(sample: dict) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """(record, rgb, mask) for each frame of a raw tar sample."""
    group = json.loads(sample["group.json"])
    return [
        (
            record,
            np.asarray(Image.open(io.BytesIO(sample[record["name"]]))),
            np.asarray(Image.open(io.BytesIO(sample[record["mask"]]))),
        )
        for record in group["frames"]
    ]


def _all_frames(root: Path) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    return [frame for split in ("train", "val") for sample in _read(root, split) for frame in _frames(sample)]


def test_forward_kinematics_moves_joints_but_keeps_bone_lengths() -> None:
    rng = np.random.default_rng(0)
    offsets = rest_offsets(BodyShape.sample(rng))
    motion = Motion.sample(rng, times=4)
    pose = motion.pose(torch.arange(4))
    assert ((pose >= JOINT_LOW_RAD) & (pose <= JOINT_HIGH_RAD)).all()
    joints, rotations = forward_kinematics(pose, offsets)
    rest, _ = forward_kinematics(torch.zeros(24, 3), offsets)
    bones = (joints[:, 1:] - joints[:, list(SMPL_PARENTS[1:])]).norm(dim=-1)
    torch.testing.assert_close(bones, offsets[1:].norm(dim=-1).expand_as(bones))
    identity = torch.eye(3).expand_as(rotations)
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    assert (joints - rest).norm(dim=-1).amax() > 0.1


def test_shards_follow_the_pair_schema(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    samples = _read(root, "train")
    assert [s["__key__"] for s in samples] == [f"group{i:07d}" for i in range(TRAIN_GROUPS)]
    for sample in samples:
        group = json.loads(sample["group.json"])
        assert isinstance(group["subject"], str)
        frames = group["frames"]
        assert [(f["time"], f["camera"]) for f in frames] == [
            (time, f"cam{camera}") for time in range(TIMES) for camera in range(CAMERAS)
        ]
        for number, record in enumerate(frames):
            assert set(record) == FRAME_KEYS
            assert (record["name"], record["mask"]) == (f"f{number}.jpg", f"f{number}.mask.png")
            assert np.shape(record["K"]) == (3, 3) and np.shape(record["R"]) == (3, 3) and np.shape(record["t"]) == (3,)
            assert np.shape(record["joints_2d"]) == (24, 2) and np.shape(record["joints_3d"]) == (24, 3)
            np.testing.assert_allclose(np.asarray(record["R"]) @ np.asarray(record["R"]).T, np.eye(3), atol=1e-5)
        for _, rgb, mask in _frames(sample):
            assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}


def test_manifest_counts_match_the_shards(dataset: tuple[Path, dict]) -> None:
    root, manifest = dataset
    assert manifest == json.loads((root / "manifest.json").read_text())
    settings = (manifest["seed"], manifest["image_size"], manifest["cameras"], manifest["times"])
    assert settings == (0, SIZE, CAMERAS, TIMES)
    for split, groups in (("train", TRAIN_GROUPS), ("val", VAL_GROUPS)):
        entry = manifest["splits"][split]
        assert entry["groups"] == groups == len(_read(root, split))
        assert entry["frames"] == groups * CAMERAS * TIMES
        on_disk = sorted(path.relative_to(root).as_posix() for path in (root / split).glob("*.tar"))
        assert [shard["path"] for shard in entry["shards"]] == on_disk
        for shard in entry["shards"]:
            assert shard["bytes"] == (root / shard["path"]).stat().st_size
            assert shard["groups"] == len(list(wds.WebDataset(str(root / shard["path"]), shardshuffle=False)))
    val_keys = {s["__key__"] for s in _read(root, "val")}
    assert val_keys.isdisjoint({s["__key__"] for s in _read(root, "train")})


def test_a_seed_renders_the_same_group_every_time() -> None:
    first, again = encode_group(3, seed=0, image_size=SIZE, cameras=2, times=2), encode_group(
        3, seed=0, image_size=SIZE, cameras=2, times=2
    )
    assert first["group.json"] == again["group.json"]
    for name in ("f0.jpg", "f3.jpg", "f2.mask.png"):
        decoded, decoded_again = (np.asarray(Image.open(io.BytesIO(s[name]))) for s in (first, again))
        np.testing.assert_array_equal(decoded, decoded_again)


def test_other_seed_renders_another_group() -> None:
    seed0, seed1 = (encode_group(3, seed=seed, image_size=SIZE, cameras=2, times=2) for seed in (0, 1))
    assert seed0["group.json"] != seed1["group.json"]
    assert seed0["f0.jpg"] != seed1["f0.jpg"]


def test_worker_count_does_not_change_the_shards(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    root, manifest = dataset
    parallel = _write(tmp_path, workers=2)
    for split in ("train", "val"):
        assert parallel["splits"][split] == manifest["splits"][split]
        for shard in manifest["splits"][split]["shards"]:
            assert (tmp_path / shard["path"]).read_bytes() == (root / shard["path"]).read_bytes()


def test_masks_hold_the_person_inside_the_crop(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for record, _, mask in _all_frames(root):
        person = mask > 127
        assert person.sum() > 0.02 * SIZE * SIZE
        x, y, w, h = record["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= SIZE and y + h <= SIZE
        rows, cols = np.nonzero(person)
        assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())


def test_joints_project_onto_the_person(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    inside = []
    for record, _, mask in _all_frames(root):
        joints_3d = np.asarray(record["joints_3d"])
        assert (joints_3d[:, 2] > 0.5).all()
        projected = joints_3d @ np.asarray(record["K"]).T
        joints_2d = np.asarray(record["joints_2d"])
        np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], joints_2d, atol=1e-3)
        pixel = np.clip(np.round(joints_2d).astype(int), 0, SIZE - 1)
        on_person = mask[pixel[:, 1], pixel[:, 0]] > 127
        assert on_person[TORSO].all()
        inside.append(on_person.mean())
    assert np.mean(inside) > 0.95


def test_cross_pose_frames_show_different_poses(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for sample in _read(root, "train"):
        frames = json.loads(sample["group.json"])["frames"]
        for camera in range(CAMERAS):
            poses = [np.asarray(f["joints_3d"]) for f in frames if f["camera"] == f"cam{camera}"]
            relative = [pose - pose[0] for pose in poses]  # about the pelvis
            for a in range(TIMES):
                for b in range(a + 1, TIMES):
                    assert np.linalg.norm(relative[a] - relative[b], axis=1).max() > 0.05
        # Cameras are static: the same camera keeps its extrinsics over time.
        for camera in range(CAMERAS):
            extrinsics = {json.dumps([f["R"], f["t"]]) for f in frames if f["camera"] == f"cam{camera}"}
            assert len(extrinsics) == 1


def test_cli_synth_writes_shards_and_refuses_stale_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["synth", "--out", str(tmp_path), "--groups", "2", "--size", "32", "--cameras", "2", "--times", "2"]
    main([*argv, "--workers", "1"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["splits"]["train"]["groups"] == 2 and "val" not in manifest["splits"]
    assert "synth: 2 train + 0 val body groups" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="pairs-000000.tar"):
        main([*argv, "--workers", "1"])


def test_hand_groups_are_one_hand_seen_by_static_cameras_and_load_as_pairs(tmp_path: Path) -> None:
    from datamodules import PairDataModule

    manifest = write_pair_shards(tmp_path, 3, image_size=SIZE, cameras=2, times=2, groups_per_shard=2, val_groups=1,
                                 task="hand")
    assert manifest["task"] == "hand"
    for sample in _read(tmp_path, "train"):
        frames = _frames(sample)
        assert len(frames) == 4 and json.loads(sample["group.json"])["subject"].startswith("synth-hand-")
        world = {}
        for record, _, mask in frames:
            assert set(record) == FRAME_KEYS and len(record["joints_3d"]) == 21 and (mask > 127).mean() > 0.02
            R, t, joints = (np.asarray(record[key]) for key in ("R", "t", "joints_3d"))
            world.setdefault(record["time"], []).append((joints - t) @ R)  # camera -> world
            x, y = np.asarray(record["joints_2d"])[0]  # the wrist is inside the crop
            assert 0 <= x < SIZE and 0 <= y < SIZE
        for views in world.values():  # cross-view: both cameras see the same hand, 1 mm apart at most
            np.testing.assert_allclose(views[0], views[1], atol=1e-3)
        for camera in ("cam0", "cam1"):  # cross-pose: a camera stays where it is
            assert len({json.dumps([r["R"], r["t"]]) for r, _, _ in frames if r["camera"] == camera}) == 1
    data = PairDataModule(str(tmp_path / "train"), batch_size=2, num_workers=0, image_size=32)
    batch = next(iter(data.train_dataloader()))
    assert batch["image1"].shape == (2, 3, 32, 32) and batch["person1"].sum() > 0
