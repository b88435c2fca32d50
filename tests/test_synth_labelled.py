"""Labelled synthetic shards follow the schema, are reproducible, and their labels agree with the
rendered crop and with the generated body models posed through smplx."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from test_synth_bodymodel import (  # noqa: F401 (fixtures used by name)
    fraction_on_mask,
    load_model,
    model_root,
    posed,
    project,
)

from body.layouts import HAND_KEYPOINT_PARENTS, SMPL_JOINT_NAMES, SMPL_PARENTS
from crocoman.data import main
from crocoman.synth import (
    GESTURE_NAMES,
    HAND_KEYPOINT_NAMES,
    Frame,
    render_group,
    render_hand,
    write_labelled_shards,
)
from crocoman.synth.hand import HAND_PRIMITIVE_JOINTS
from crocoman.synth.labelled import encode_labelled, own_primitives
from crocoman.synth.world import PRIMITIVE_JOINTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 128
BODY_TRAIN, BODY_VAL = 12, 4
HAND_TRAIN = 48  # 6 of each gesture
HAS_FLAGS = {"keypoints_2d", "keypoints_3d", "smpl", "mano", "densepose", "gesture"}
ARRAYS = {
    "body": {"keypoints_2d": (24, 3), "keypoints_3d": (24, 4), "global_orient": (3,), "body_pose": (69,),
             "betas": (10,), "transl": (3,), "vertices": (6890, 3)},
    "hand": {"keypoints_2d": (21, 3), "keypoints_3d": (21, 4), "global_orient": (3,), "hand_pose": (45,),
             "betas": (10,), "transl": (3,), "vertices": (778, 3)},
}  # fmt: skip
OWN_PRIMITIVES = {
    "body": own_primitives(SMPL_PARENTS, PRIMITIVE_JOINTS),
    "hand": own_primitives(HAND_KEYPOINT_PARENTS, HAND_PRIMITIVE_JOINTS),
}


def _write(root: Path, task: str, workers: int) -> dict:
    train, val = (BODY_TRAIN, BODY_VAL) if task == "body" else (HAND_TRAIN, 0)
    return write_labelled_shards(
        root, train, task, image_size=SIZE, seed=0, workers=workers, samples_per_shard=8, val_samples=val
    )


@pytest.fixture(scope="module")
def body_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("labelled_body")
    return root, _write(root, "body", workers=1)


@pytest.fixture(scope="module")
def hand_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("labelled_hand")
    return root, _write(root, "hand", workers=1)


def _read(root: Path, split: str = "train") -> list[dict]:
    """Samples as a training pipeline decodes them: images as float RGB, iuv as uint8."""
    urls = sorted(str(path) for path in (root / split).glob("labelled-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode(wds.handle_extension("iuv.png", _uint8_png), "rgb"))


def _uint8_png(data: bytes) -> np.ndarray:
    return wds.autodecode.imagehandler("rgb8")("png", data)


def _index(sample: dict) -> int:
    return int(sample["__key__"][-7:])  # keys are task + 7-digit index


def _rendered_frame(task: str, index: int) -> Frame:
    """The frame behind labelled sample `index` (seed 0), rendered again: rendering is deterministic."""
    if task == "body":
        return render_group(0, index, SIZE, cameras=1, times=1).frames[0]
    return render_hand(0, index, SIZE).frame


@pytest.mark.parametrize("task", ["body", "hand"])
def test_samples_hold_every_key_of_the_schema(task: str, body_shards: tuple, hand_shards: tuple) -> None:
    root, manifest = body_shards if task == "body" else hand_shards
    samples = _read(root)
    assert [sample["__key__"] for sample in samples] == [f"{task}{index:07d}" for index in range(len(samples))]
    for sample in samples:
        extra = {"iuv.png"} if task == "body" else {"cls"}
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"jpg", "json", "npz"} | extra
        assert sample["jpg"].shape == (SIZE, SIZE, 3) and sample["jpg"].dtype == np.float32
        record = sample["json"]
        assert set(record) == {"task", "K", "bbox", "has", "subject", "body_model"}
        assert record["task"] == task and record["body_model"] == ("smpl" if task == "body" else "mano")
        assert set(record["has"]) == HAS_FLAGS and record["has"]["densepose"] == (task == "body")
        assert np.shape(record["K"]) == (3, 3) and len(record["bbox"]) == 4
        assert {name: array.shape for name, array in sample["npz"].items()} == ARRAYS[task]
        assert all(array.dtype == np.float32 for array in sample["npz"].values())
    names = SMPL_JOINT_NAMES if task == "body" else HAND_KEYPOINT_NAMES
    assert manifest["keypoints"] == list(names) and manifest == json.loads((root / "manifest.json").read_text())
    assert sum(shard["samples"] for shard in manifest["splits"]["train"]["shards"]) == len(samples)


@pytest.mark.parametrize("task", ["body", "hand"])
def test_keypoints_2d_are_the_projected_keypoints_3d(task: str, body_shards: tuple, hand_shards: tuple) -> None:
    root, _ = body_shards if task == "body" else hand_shards
    visibility = []
    for sample in _read(root):
        labels, K = sample["npz"], np.asarray(sample["json"]["K"])
        keypoints_3d, keypoints_2d = labels["keypoints_3d"].astype(np.float64), labels["keypoints_2d"]
        projected = keypoints_3d[:, :3] @ K.T
        np.testing.assert_allclose(keypoints_2d[:, :2], projected[:, :2] / projected[:, 2:], atol=1e-3)
        assert (keypoints_3d[:, 3] == 1).all() and set(np.unique(keypoints_2d[:, 2])) <= {0.0, 1.0}
        outside = ((keypoints_2d[:, :2] < -0.5) | (keypoints_2d[:, :2] >= SIZE - 0.5)).any(1)
        assert (keypoints_2d[outside, 2] == 0).all()
        visibility.append(keypoints_2d[:, 2])
    # Self-occlusion happens, but most keypoints are seen.
    assert 0.5 < np.mean(visibility) < 0.99


@pytest.mark.parametrize("task", ["body", "hand"])
def test_visibility_says_what_the_crop_shows(task: str, body_shards: tuple, hand_shards: tuple) -> None:
    """At a visible keypoint's pixel the crop shows one of the keypoint's own primitives (but
    for a few silhouette-edge roundings); a hidden keypoint in the crop lies behind the surface
    seen at its pixel."""
    root, _ = body_shards if task == "body" else hand_shards
    own = OWN_PRIMITIVES[task]
    shows_own = []
    for sample in _read(root)[:12]:
        rendering = _rendered_frame(task, _index(sample)).rendering
        keypoints = sample["npz"]["keypoints_2d"]
        pixel = np.clip(np.round(keypoints[:, :2]).astype(int), 0, SIZE - 1)
        primitive = rendering.primitive.numpy()[pixel[:, 1], pixel[:, 0]]
        visible = keypoints[:, 2] == 1
        shows_own += [primitive[k] >= 0 and bool(own[k, primitive[k]]) for k in np.flatnonzero(visible)]
        in_crop = ((keypoints[:, :2] >= -0.5) & (keypoints[:, :2] < SIZE - 0.5)).all(1)
        surface_m = rendering.depth_m.numpy()[pixel[:, 1], pixel[:, 0]]
        assert (sample["npz"]["keypoints_3d"][~visible & in_crop, 2] > surface_m[~visible & in_crop]).all()
    assert np.mean(shows_own) > 0.95


def test_iuv_covers_exactly_the_person_with_many_parts(body_shards: tuple) -> None:
    root, manifest = body_shards
    assert len(manifest["densepose_parts"]) == 24
    seen = set()
    for split in ("train", "val"):
        for sample in _read(root, split):
            iuv = sample["iuv.png"]
            assert iuv.dtype == np.uint8 and iuv.shape == (SIZE, SIZE, 3)
            mask = _rendered_frame("body", _index(sample)).rendering.mask.numpy()
            part = iuv[..., 0]
            np.testing.assert_array_equal(part > 0, mask)
            assert part.max() <= 24 and len(np.unique(part[mask])) >= 8
            assert not iuv[..., 1:][part == 0].any()
            seen |= set(np.unique(part[mask]).tolist())
    assert seen == set(range(1, 25))


def test_hand_gestures_are_balanced_and_named_by_the_manifest(hand_shards: tuple) -> None:
    root, manifest = hand_shards
    assert manifest["classes"] == list(GESTURE_NAMES) and len(GESTURE_NAMES) >= 8
    classes = [sample["cls"] for sample in _read(root)]
    assert sorted(set(classes)) == list(range(len(GESTURE_NAMES)))
    assert np.bincount(classes).min() == HAND_TRAIN // len(GESTURE_NAMES)


def test_hands_are_held_up_to_the_camera_palm_or_back_first(hand_shards: tuple) -> None:
    """Fingers point up in the image, and the hand shows its palm to the camera about half the time."""
    root, _ = hand_shards
    wrist, middle, index, pinky = (HAND_KEYPOINT_NAMES.index(name) for name in ("wrist", "middle1", "index1", "pinky1"))
    palm_first = []
    for sample in _read(root):
        frame = _rendered_frame("hand", _index(sample))
        points = frame.joints_2d_px
        up = points[wrist] - points[middle]  # image y grows downwards
        assert up[1] > 0.3 * up.norm(), f"{sample['__key__']}: the fingers do not point up"
        joints = frame.joints_3d_m  # camera frame: the palm faces the lens when its normal points to -z
        palm_normal = torch.linalg.cross(joints[index] - joints[wrist], joints[pinky] - joints[wrist])  # right hand
        palm_first.append(bool(palm_normal[2] < 0))
    assert 0.2 < np.mean(palm_first) < 0.8


@pytest.mark.parametrize("task", ["body", "hand"])
def test_smplx_meshes_of_the_labels_land_on_the_crop(
    task: str, body_shards: tuple, hand_shards: tuple, model_root: tuple[Path, str]  # noqa: F811 (fixture)
) -> None:
    """The stored parameters posed through smplx give the stored vertices, on the rendered person."""
    root, _ = body_shards if task == "body" else hand_shards
    model_type = "smpl" if task == "body" else "mano"
    model = load_model(model_root[0], model_type)
    for sample in _read(root)[:6]:
        labels = {name: torch.from_numpy(value) for name, value in sample["npz"].items()}
        body = {name: labels[name] for name in ("global_orient", "betas", "transl")}
        body["pose"] = labels["body_pose" if task == "body" else "hand_pose"]
        vertices = posed(model, model_type, body).vertices[0]
        torch.testing.assert_close(vertices, labels["vertices"], atol=1e-4, rtol=0)
        frame = _rendered_frame(task, _index(sample))
        K = torch.tensor(sample["json"]["K"], dtype=torch.float32)
        assert fraction_on_mask(K, vertices, frame.rendering.mask, tolerance_px=1) > 0.995
        assert fraction_on_mask(K, vertices, frame.rendering.mask) > 0.9
        keypoints_2d = project(K, labels["keypoints_3d"][:, :3])
        torch.testing.assert_close(keypoints_2d, labels["keypoints_2d"][:, :2], atol=1e-3, rtol=0)


@pytest.mark.parametrize("task", ["body", "hand"])
def test_worker_count_does_not_change_the_shards(
    task: str, body_shards: tuple, hand_shards: tuple, tmp_path: Path
) -> None:
    root, manifest = body_shards if task == "body" else hand_shards
    parallel = _write(tmp_path, task, workers=2)
    for split, entry in manifest["splits"].items():
        assert parallel["splits"][split] == entry
        for shard in entry["shards"]:
            assert (tmp_path / shard["path"]).read_bytes() == (root / shard["path"]).read_bytes()


@pytest.mark.parametrize("task", ["body", "hand"])
def test_a_seed_encodes_the_same_bytes_and_another_seed_others(task: str) -> None:
    first, again, other = (encode_labelled(3, seed, task, image_size=SIZE) for seed in (0, 0, 1))
    assert first == again
    assert all(first[key] != other[key] for key in ("jpg", "json", "npz"))


@pytest.mark.parametrize("task", ["body", "hand"])
def test_leaving_vertices_out_changes_nothing_else(task: str) -> None:
    full, lean = (encode_labelled(3, 0, task, image_size=SIZE, vertices=vertices) for vertices in (True, False))
    assert {key: value for key, value in full.items() if key != "npz"} == {k: v for k, v in lean.items() if k != "npz"}
    with np.load(io.BytesIO(full["npz"])) as with_mesh, np.load(io.BytesIO(lean["npz"])) as without:
        assert set(with_mesh.files) - set(without.files) == {"vertices"}
        for name in without.files:
            np.testing.assert_array_equal(without[name], with_mesh[name])
    assert len(lean["npz"]) < len(full["npz"]) / 4


def test_cli_labelled_writes_shards_and_refuses_stale_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["labelled", "--out", str(tmp_path), "--task", "hand", "--samples", "3", "--val-samples", "1"]
    argv += ["--size", "32", "--workers", "1"]
    main(argv)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert (manifest["splits"]["train"]["samples"], manifest["splits"]["val"]["samples"]) == (3, 1)
    assert "labelled: 3 train + 1 val hand samples" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="labelled-000000.tar"):
        main(argv)
    assert manifest["vertices"] is True
    main([*argv[:2], str(tmp_path / "lean"), *argv[3:], "--no-vertices"])
    assert json.loads((tmp_path / "lean" / "manifest.json").read_text())["vertices"] is False
    assert all("vertices" not in sample["npz"] for sample in _read(tmp_path / "lean"))
