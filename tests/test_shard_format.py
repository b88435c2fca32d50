"""The shard format pinned: shards written by the synthetic world and by the converters hold the members that
shards on disk already hold, decode through the one decoder of ``datamodules.format``, and the readers hand on
what the batch contracts (``datamodules.format.batches``) say."""

import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from body.layouts import SMPL_JOINT_NAMES
from crocoman.convert.common import encode_pair_group, write_converted_shards
from crocoman.convert.labelled import labelled_sample
from crocoman.synth import write_labelled_shards, write_pair_shards
from datamodules.format import (
    HAS_FLAGS,
    LABEL_KEYS,
    MESH_HAS_KEYS,
    FrameRecord,
    LabelArrays,
    LabelledMeta,
    frame_members,
    labelled_arrays,
    labelled_meta,
    pack_labelled,
    png_bytes,
    read_group,
)
from datamodules.format.batches import LabelledFields, MeshFields, PairFields
from datamodules.labelled import LabelledSample
from datamodules.mesh import MeshSample
from datamodules.pairs import PairSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32  # crops written and read at this side: the readers' crop of a whole sample is then the identity
# Member names as shards already on disk (and the readers of other projects' copies) spell them.
LABELLED_MEMBERS = {"jpg", "json", "npz", "iuv.png", "cls"}
GROUP_MEMBERS = {"group.json", "f0.jpg", "f0.mask.png", "f1.jpg", "f1.mask.png", "f2.jpg", "f2.mask.png", "f3.jpg",
                 "f3.mask.png"}


def members(folder: Path) -> dict[str, set[str]]:
    """Per tar sample key, its member names, as the tar holds them (``<key>.<member>``)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.tar")):
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                key, member = name.split(".", 1)
                found.setdefault(key, set()).add(member)
    return found


def read(folder: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in folder.rglob("*.tar")), shardshuffle=False, empty_check=False))


def converted_labelled(item: str) -> dict:
    """A body crop with every mesh label and DensePose, or a hand crop with a gesture and no arrays, as the
    labelled converters write them."""
    rng = np.random.default_rng(len(item))
    crop = Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    K = np.array([[40.0, 0.0, 15.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]])
    if item == "hand":
        return labelled_sample("hand", crop, task="hand", K=K, bbox=[0.0, 0.0, 32.0, 32.0], has={"gesture"},
                               subject="h", body_model="mano", files={"cls": b"3"})
    keypoints_3d = np.concatenate([rng.uniform(-0.3, 0.3, (24, 2)), rng.uniform(2, 3, (24, 1)), np.ones((24, 1))], 1)
    projected = keypoints_3d[:, :3] @ K.T
    arrays = {"keypoints_2d": np.concatenate([projected[:, :2] / projected[:, 2:], np.ones((24, 1))], 1),
              "keypoints_3d": keypoints_3d, "global_orient": rng.normal(size=3), "body_pose": rng.normal(size=69) / 5,
              "betas": rng.normal(size=10), "transl": np.array([0.0, 0.1, 2.5])}
    iuv = np.zeros((SIZE, SIZE, 3), np.uint8)
    iuv[8:24, 10:20] = (3, 100, 200)
    return labelled_sample("body", crop, task="body", K=K, bbox=[4.0, 2.0, 20.0, 28.0],
                           has={"keypoints_2d", "keypoints_3d", "smpl", "densepose"}, subject="b", body_model="smpl",
                           arrays=arrays, files={"iuv.png": png_bytes(iuv)})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Labelled shards of each writer: synthetic bodies and hands, converted bodies and hands."""
    root = tmp_path_factory.mktemp("labelled")
    for task in ("body", "hand"):
        write_labelled_shards(root / f"synth_{task}", num_samples=2, task=task, image_size=SIZE)
    write_converted_shards(root / "converted", "train", ["body", "hand"], converted_labelled, samples_per_shard=2,
                           workers=1, shard_prefix="toy", desc="toy")
    return {"synthetic body": root / "synth_body", "synthetic hand": root / "synth_hand",
            "converted": root / "converted"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pair shards of each writer: one synthetic group (2 cameras x 2 times) and one converted group."""
    root = tmp_path_factory.mktemp("pairs")
    write_pair_shards(root / "synthetic", num_groups=1, image_size=SIZE, cameras=2, times=2)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    Image.fromarray(np.where(np.arange(80) < 40, 255, 0).astype(np.uint8)[None].repeat(60, 0)).save(root / "mask.png")
    frames = [{"image": image, "mask": root / "mask.png", "camera": camera, "time": time,
               "K": [[50.0, 0.0, 40.0], [0.0, 50.0, 30.0], [0.0, 0.0, 1.0]], "R": np.eye(3), "t": [0.0, 0.0, 3.0],
               "box": [20.0, 10.0, 30.0, 40.0]} for camera in ("a", "b") for time in (0, 1)]
    write_converted_shards(root / "converted", "train", [{"key": "group", "subject": "s", "frames": frames}],
                           partial(encode_pair_group, size=SIZE, margin=0.1), samples_per_shard=1, workers=1,
                           shard_prefix="toy", desc="toy")
    return {"synthetic": root / "synthetic", "converted": root / "converted"}


@pytest.mark.parametrize("source", ["synthetic body", "synthetic hand", "converted"])
def test_labelled_samples_of_both_writers_read_through_one_decoder(source, labelled):
    assert all(names <= LABELLED_MEMBERS and {"jpg", "json"} <= names for names in members(labelled[source]).values())
    for sample in read(labelled[source]):
        meta = labelled_meta(sample)
        assert set(LabelledMeta.__required_keys__) <= set(meta) and list(meta["has"]) == list(HAS_FLAGS)
        arrays = labelled_arrays(sample) if "npz" in sample else {}
        assert set(arrays) <= set(LabelArrays.__optional_keys__)
        assert all(array.dtype == np.float32 for array in arrays.values())
        asked = tuple(key for key in LABEL_KEYS if key in sample)
        item = LabelledSample(asked, SIZE, augment=False, crop_scale=(1.0, 1.0), color_jitter=0.0, num_classes=None)(
            sample)
        assert set(LabelledFields.__required_keys__) <= set(item) <= set(LabelledFields.__annotations__)
        torch.testing.assert_close(item["K"], torch.tensor(meta["K"]).float(), rtol=0, atol=1e-5)
        assert {name: bool(flag) for name, flag in item["has"].items()} == meta["has"]
        for name, array in arrays.items():
            torch.testing.assert_close(item[name], torch.from_numpy(array), rtol=0, atol=1e-4)


@pytest.mark.parametrize("source", ["synthetic", "converted"])
def test_pair_groups_of_both_writers_read_through_one_decoder(source, pairs):
    assert list(members(pairs[source]).values()) == [GROUP_MEMBERS]
    sample = read(pairs[source])[0]
    group = read_group(sample)
    for number, frame in enumerate(group["frames"]):
        assert (frame["name"], frame["mask"]) == frame_members(number)
        assert set(FrameRecord.__required_keys__) <= set(frame) <= set(FrameRecord.__annotations__)
    item = PairSampler(SIZE, 0.5, (1, 1), augment=False, independent_augmentation=False, crop_scale=(1.0, 1.0),
                       color_jitter=0.0, deterministic=True)(sample)
    assert set(PairFields.__required_keys__) == set(item)
    assert item["image1"].shape == (3, SIZE, SIZE) and item["person1"].shape == (SIZE, SIZE) and item["person1"].any()


@pytest.mark.parametrize("source", ["synthetic body", "converted"])
def test_mesh_reader_hands_on_the_mesh_contract_from_both_writers(source, labelled):
    sample = read(labelled[source])[0]
    reader = MeshSample("smpl", SMPL_JOINT_NAMES, "crocoman", SIZE, augment=False, color_jitter=0.0, scale_factor=0.0,
                        translation_factor=0.0, rotation_deg=0.0, rotation_rate=0.0, flip_rate=0.0,
                        extreme_crop_rate=0.0)
    item = reader(sample)
    assert set(item) == set(MeshFields.__required_keys__) | set(LabelArrays.__optional_keys__) - {"hand_pose"}
    assert set(item["has"]) == set(MESH_HAS_KEYS) and bool(item["has"]["params"])
    torch.testing.assert_close(item["betas"], torch.from_numpy(labelled_arrays(sample)["betas"][:10]))


def test_a_packed_sample_reads_back_as_written_and_packs_to_the_same_bytes():
    meta = {"task": "body", "K": [[2.0, 0.0, 1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], "bbox": [0.0, 0.0, 2.0, 2.0],
            "has": {flag: flag == "smpl" for flag in HAS_FLAGS}, "subject": "s", "body_model": "smpl"}
    arrays = {"betas": torch.arange(10.0), "keypoints_2d": np.arange(6.0).reshape(3, 2).T}  # a non-contiguous view
    rgb = torch.zeros(4, 4, 3, dtype=torch.uint8)
    sample = pack_labelled("k", rgb, meta, arrays, {"cls": b"1"})
    assert list(sample) == ["__key__", "jpg", "json", "npz", "cls"]
    assert labelled_meta(sample) == meta and b" " not in sample["json"]
    read_back = labelled_arrays(sample)
    assert all(array.dtype == np.float32 for array in read_back.values())
    np.testing.assert_array_equal(read_back["keypoints_2d"], arrays["keypoints_2d"])
    np.testing.assert_array_equal(read_back["betas"], arrays["betas"].numpy())
    assert pack_labelled("k", rgb, meta, arrays, {"cls": b"1"}) == sample
