"""Labelled-data converters (3DPW, FreiHAND, DensePose-COCO, HaGRID) end to end: each test builds a
small copy of the dataset in its real file layout and formats, converts it through
`crocoman-data convert`, and reads the shards back through `LabelledDataModule`, checking that the
labels still agree with each other and with what the fixture put in."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch
import webdataset as wds
from PIL import Image, ImageDraw

from body.camera import project as body_project
from datamodules import LabelledDataModule, MeshDataModule
from tests.pickles import Exploit, python2_dumps
from crocoman.convert.densepose_coco import decode_rle, rle_counts
from crocoman.convert.freihand import FROM_FREIHAND
from crocoman.convert.labelled import nominal_intrinsics
from crocoman.synth.bodymodel import write_body_models
from crocoman.data import main
from crocoman.synth.hand import HAND_KEYPOINT_NAMES
from crocoman.synth.skeleton import JOINT_INDEX, axis_angle_to_matrix

SIZE = 64  # crop side written and read back: the DataModule then resizes nothing


@pytest.fixture(scope="module")
def body_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic SMPL and MANO files in the smplx layout, moved so that, as in the real models, the
    rest root joint is off the origin and moves with the shape (the synthetic ones keep it at the
    origin, which would hide a wrong `transl`); the neutral SMPL doubles as male and female."""
    root = tmp_path_factory.mktemp("body_models")
    write_body_models(root, ("smpl", "mano"))
    for model_type, path in (("smpl", root / "smpl" / "SMPL_NEUTRAL.pkl"), ("mano", root / "mano" / "MANO_RIGHT.npz")):
        arrays = pickle.loads(path.read_bytes()) if model_type == "smpl" else dict(np.load(path))
        arrays["v_template"] = arrays["v_template"] + np.float32([0.01, -0.23, 0.03])
        arrays["shapedirs"][:, :, 0] += np.float32([0.004, 0.02, -0.01])
        if model_type == "smpl":
            path.write_bytes(pickle.dumps(arrays))
        else:
            np.savez(path, **arrays)
    for gender in ("MALE", "FEMALE"):
        shutil.copy(root / "smpl" / "SMPL_NEUTRAL.pkl", root / "smpl" / f"SMPL_{gender}.pkl")
    return root


def first_batch(out: Path, split: str, label_keys: tuple[str, ...], batch_size: int) -> dict:
    """One batch of `split` as a fine-tuning run reads it (no augmentation: crops are kept whole)."""
    data = LabelledDataModule(train_shards=str(out / "train"), val_shards=str(out / split), label_keys=label_keys,
                              batch_size=batch_size, num_workers=0, image_size=SIZE, augment=False)
    return next(iter(data.val_dataloader()))


def mesh_batch(out: Path, split: str, batch_size: int) -> dict:
    """One batch of `split` as mesh recovery reads it (no augmentation), body model and keypoint
    order taken from the manifest."""
    data = MeshDataModule(train_shards=str(out / "train"), val_shards=str(out / split), batch_size=batch_size,
                          num_workers=0, image_size=SIZE, augment=False)
    return next(iter(data.val_dataloader()))


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) camera points -> (B, J, 2) pixels with (B, 3, 3) intrinsics, in float64."""
    return body_project(points.double(), K.double())


# ----------------------------------------------------------------------------- 3DPW

PW_WIDTH, PW_HEIGHT, PW_FRAMES = 160, 120, 4
# COCO-18 joints with an SMPL counterpart: the fixture's "detections" are those joints projected.
COCO18_FROM_SMPL = {1: "neck", 2: "right_shoulder", 3: "right_elbow", 4: "right_wrist", 5: "left_shoulder",
                    6: "left_elbow", 7: "left_wrist", 8: "right_hip", 9: "right_knee", 10: "right_ankle",
                    11: "left_hip", 12: "left_knee", 13: "left_ankle"}


def camera_looking_at_origin(yaw: float, distance_m: float) -> np.ndarray:
    """4x4 world -> camera (OpenCV: y down) of a camera `distance_m` in front of a y-up person."""
    turn = axis_angle_to_matrix(torch.tensor([0.0, yaw, 0.0], dtype=torch.float64)).numpy()
    flip = np.diag([1.0, -1.0, -1.0])  # world y up, z towards the camera -> camera y down, z forward
    pose = np.eye(4)
    pose[:3, :3] = flip @ turn
    pose[:3, 3] = [0.0, 0.0, distance_m]
    return pose


def write_3dpw_sequence(root: Path, split: str, sequence: str, smpl: torch.nn.Module, rng: np.random.Generator,
                        actors: int) -> None:
    """`sequenceFiles/<split>/<sequence>.pkl` (a Python 2 pickle of numpy arrays, as the originals) and `imageFiles/<sequence>/image_%05d.jpg` with the actors' joints drawn on them."""
    K = np.array([[150.0, 0.0, 79.5], [0.0, 150.0, 59.5], [0.0, 0.0, 1.0]])
    cam_poses = np.stack([camera_looking_at_origin(0.3 * frame, 4.0) for frame in range(PW_FRAMES)])
    data = {"sequence": sequence, "genders": [], "betas": [], "poses": [], "trans": [], "jointPositions": [],
            "poses2d": [], "campose_valid": [], "cam_poses": cam_poses, "cam_intrinsics": K,
            "img_frame_ids": np.arange(PW_FRAMES)}
    pictures = [Image.new("RGB", (PW_WIDTH, PW_HEIGHT), (90, 110, 90)) for _ in range(PW_FRAMES)]
    for actor in range(actors):
        betas = rng.normal(0, 0.5, 10)
        poses = rng.normal(0, 0.2, (PW_FRAMES, 72))
        poses[:, :3] = [[0.0, 0.4 * frame, 0.0] for frame in range(PW_FRAMES)]  # turning about the vertical
        trans = np.array([[0.4 * actor - 0.2, 0.1, 0.05 * frame] for frame in range(PW_FRAMES)])
        if actor == 1:
            trans[2] = [9.0, 0.0, 0.0]  # walked out of the picture in frame 2
        with torch.no_grad():
            output = smpl(betas=torch.tensor(betas).float()[None].expand(PW_FRAMES, -1),
                          global_orient=torch.tensor(poses[:, :3]).float(),
                          body_pose=torch.tensor(poses[:, 3:]).float(),
                          transl=torch.tensor(trans).float())
        joints = output.joints[:, :24].double().numpy()
        camera = np.einsum("fij,fkj->fki", cam_poses[:, :3, :3], joints) + cam_poses[:, None, :3, 3]
        pixels = project(torch.from_numpy(camera), torch.from_numpy(K)[None].expand(PW_FRAMES, -1, -1)).numpy()
        detections = np.zeros((PW_FRAMES, 3, 18))
        for coco, name in COCO18_FROM_SMPL.items():
            detections[:, :2, coco] = pixels[:, JOINT_INDEX[name]]
            detections[:, 2, coco] = 0.9
        for frame, picture in enumerate(pictures):
            for x, y in pixels[frame]:
                ImageDraw.Draw(picture).ellipse((x - 2, y - 2, x + 2, y + 2), fill="white")
        valid = np.ones(PW_FRAMES, dtype=bool)
        valid[3] = actor == 1  # actor 0's camera pose is not aligned in the last frame
        for key, value in (("genders", "mf"[actor % 2]), ("betas", betas), ("poses", poses), ("trans", trans),
                           ("jointPositions", joints.reshape(PW_FRAMES, 72)), ("poses2d", detections),
                           ("campose_valid", valid)):
            data[key].append(value)
    (root / "sequenceFiles" / split).mkdir(parents=True, exist_ok=True)
    (root / "sequenceFiles" / split / f"{sequence}.pkl").write_bytes(python2_dumps(data))
    (root / "imageFiles" / sequence).mkdir(parents=True)
    for frame, picture in enumerate(pictures):
        picture.save(root / "imageFiles" / sequence / f"image_{frame:05d}.jpg", quality=90)


@pytest.fixture(scope="module")
def threedpw_root(tmp_path_factory: pytest.TempPathFactory, body_models: Path) -> Path:
    root = tmp_path_factory.mktemp("3DPW")
    smpl = smplx.create(str(body_models), model_type="smpl")
    rng = np.random.default_rng(0)
    write_3dpw_sequence(root, "train", "courtyard_arguing_00", smpl, rng, actors=2)
    write_3dpw_sequence(root, "validation", "downtown_walking_00", smpl, rng, actors=1)
    return root


def convert_3dpw(root: Path, out: Path, *options: str) -> dict:
    main(["convert", "threedpw", "--root", str(root), "--out", str(out), "--trust-pickle", "--splits", "train",
          "validation", "--size", str(SIZE), "--samples-per-shard", "3", "--workers", "1", *options])
    return json.loads((out / "manifest.json").read_text())


def test_3dpw_refuses_untrusted_pickles_and_missing_models(threedpw_root: Path, tmp_path: Path) -> None:
    with pytest.raises(PermissionError, match="--trust-pickle"):
        main(["convert", "threedpw", "--root", str(threedpw_root), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="SMPL_MALE"):
        convert_3dpw(threedpw_root, tmp_path, "--body-model-dir", str(tmp_path))


def test_3dpw_sequence_that_would_run_code_is_refused(threedpw_root: Path, tmp_path: Path, capfd) -> None:
    """Trusted or not, a sequence file is unpickled with numpy arrays and plain values only."""
    root = tmp_path / "3DPW"
    shutil.copytree(threedpw_root, root)
    hostile = root / "sequenceFiles" / "train" / "courtyard_hostile_00.pkl"
    hostile.write_bytes(python2_dumps({"sequence": "courtyard_hostile_00", "genders": [Exploit()]}))
    with pytest.raises(pickle.UnpicklingError, match=rf"refusing to load posix\.system .*{hostile.name}"):
        convert_3dpw(root, tmp_path / "out")
    assert "pwned" not in capfd.readouterr().out
    hostile.write_bytes(python2_dumps({"sequence": "courtyard_hostile_00"})[:-20])  # truncated
    with pytest.raises(ValueError, match=f"{hostile.name}: not a readable 3DPW sequence file"):
        convert_3dpw(root, tmp_path / "out")


@pytest.mark.parametrize("with_body_model", [True, False], ids=["body_model", "dataset_joints"])
def test_3dpw_labels_agree_in_the_camera_frame(threedpw_root: Path, body_models: Path, tmp_path: Path,
                                               with_body_model: bool) -> None:
    options = ["--body-model-dir", str(body_models), "--preview", "4"] if with_body_model else []
    manifest = convert_3dpw(threedpw_root, tmp_path, *options)
    # train: 2 actors x 4 frames, less actor 0's unaligned frame and actor 1 out of view; val: 4 - 1
    assert manifest["skipped"] == {"camera pose not aligned": 2, "person outside the image": 1}
    assert (manifest["splits"]["train"]["samples"], manifest["splits"]["val"]["samples"]) == (6, 3)
    assert manifest["keypoints"][JOINT_INDEX["left_knee"]] == "left_knee" and len(manifest["keypoints_detected"]) == 18
    assert (tmp_path / "preview.png").is_file() == with_body_model

    batch = mesh_batch(tmp_path, "train", batch_size=6)
    keypoints_2d, keypoints_3d, K = batch["keypoints_2d"], batch["keypoints_3d"], batch["K"]
    assert keypoints_2d.shape == (6, 24, 3) and keypoints_3d.shape == (6, 24, 4)
    visible = keypoints_2d[..., 2] > 0
    assert visible.float().mean() > 0.9
    assert all(bool(batch["has"][flag].all()) for flag in ("keypoints_2d", "keypoints_3d", "params", "transl"))
    torch.testing.assert_close(project(keypoints_3d[..., :3], K)[visible], keypoints_2d[..., :2][visible].double(),
                               atol=2e-3, rtol=0)
    # The stored parameters pose the model onto the stored camera-frame joints (and vertices).
    smpl = smplx.create(str(body_models), model_type="smpl")
    with torch.no_grad():
        output = smpl(**{name: batch[name] for name in ("global_orient", "body_pose", "betas", "transl")})
    torch.testing.assert_close(output.joints[:, :24], keypoints_3d[..., :3], atol=1e-4, rtol=0)
    assert bool(batch["has"]["vertices"].all()) == with_body_model
    if with_body_model:
        torch.testing.assert_close(output.vertices, batch["vertices"], atol=1e-4, rtol=0)
    # The dataset's detections, moved into the crop, sit on the projected joints they were made from.
    labelled = first_batch(tmp_path, "train", ("json", "npz"), batch_size=6)
    assert bool(labelled["has"]["smpl"].all()) and not bool(labelled["has"]["densepose"].any())
    for coco, name in COCO18_FROM_SMPL.items():
        torch.testing.assert_close(labelled["keypoints_2d_detected"][:, coco, :2],
                                   labelled["keypoints_2d"][:, JOINT_INDEX[name], :2], atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------- FreiHAND

FH_SIZE = 96  # FreiHAND's images are 224 px; smaller here to keep the test light
MANO_TIPS = [smplx.vertex_ids.vertex_ids["mano"][finger] for finger in ("thumb", "index", "middle", "ring", "pinky")]
FH_K = [[200.0, 0.0, 47.5], [0.0, 200.0, 47.5], [0.0, 0.0, 1.0]]


def write_freihand_set(root: Path, set_name: str, mano: torch.nn.Module, rng: np.random.Generator, samples: int,
                       versions: int) -> np.ndarray:
    """`<set>_{K,mano,xyz,verts,scale}.json` and `<set>/rgb/%08d.jpg` (`versions` blocks of
    images) for hands posed through smplx with FreiHAND's convention (pose relative to MANO's
    mean hand); returns the vertices (samples, 778, 3) the annotations describe."""
    orient = rng.normal(0, 0.3, (samples, 3)) + [0.0, 0.0, np.pi / 2]  # fingers pointing up the image
    hand_pose, betas = rng.normal(0, 0.2, (samples, 45)), rng.normal(0, 0.5, (samples, 10))
    with torch.no_grad():
        output = mano(global_orient=torch.tensor(orient).float(), hand_pose=torch.tensor(hand_pose).float(),
                      betas=torch.tensor(betas).float())
    transl = np.array([0.0, 0.0, 0.5]) - output.joints[:, 4].double().numpy()  # middle knuckle 0.5 m ahead
    vertices = output.vertices.double().numpy() + transl[:, None]
    ours = np.concatenate([output.joints.double().numpy() + transl[:, None], vertices[:, MANO_TIPS]], axis=1)
    xyz = np.empty_like(ours)
    xyz[:, FROM_FREIHAND] = ours
    root_pixels = project(torch.from_numpy(xyz[:, 9]).unsqueeze(1), torch.tensor(FH_K)[None].expand(samples, -1, -1))
    thetas = np.concatenate([orient, hand_pose, betas, root_pixels[:, 0].numpy(), 200.0 / xyz[:, 9, 2:]], axis=1)
    annotations = {"K": [FH_K] * samples, "mano": [[theta.tolist()] for theta in thetas], "xyz": xyz.tolist(),
                   "verts": vertices.tolist(), "scale": np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=1).tolist()}
    for what, values in annotations.items():
        (root / f"{set_name}_{what}.json").write_text(json.dumps(values))
    (root / set_name / "rgb").mkdir(parents=True)
    for version in range(versions):
        for index in range(samples):
            picture = Image.new("RGB", (FH_SIZE, FH_SIZE), (40 * version, 120, 60))
            pixels = project(torch.from_numpy(xyz[index])[None], torch.tensor(FH_K)[None])[0]
            for x, y in pixels.tolist():
                ImageDraw.Draw(picture).ellipse((x - 2, y - 2, x + 2, y + 2), fill="white")
            picture.save(root / set_name / "rgb" / f"{version * samples + index:08d}.jpg")
    return vertices


@pytest.fixture(scope="module")
def freihand_root(tmp_path_factory: pytest.TempPathFactory, body_models: Path) -> tuple[Path, np.ndarray]:
    """FreiHAND_pub_v2 (training set, evaluation images and K without labels) beside the separate
    evaluation archive FreiHAND_pub_v2_eval (evaluation labels and images)."""
    root = tmp_path_factory.mktemp("FreiHAND_pub_v2")
    eval_root = root.parent / "FreiHAND_pub_v2_eval"
    mano = smplx.create(str(body_models), model_type="mano", ext="npz", use_pca=False, flat_hand_mean=False)
    rng = np.random.default_rng(1)
    vertices = write_freihand_set(root, "training", mano, rng, samples=3, versions=2)
    eval_root.mkdir()
    write_freihand_set(eval_root, "evaluation", mano, rng, samples=2, versions=1)
    shutil.copytree(eval_root / "evaluation", root / "evaluation")
    for what in ("K", "scale"):
        shutil.copy(eval_root / f"evaluation_{what}.json", root)
    xyz = json.loads((root / "training_xyz.json").read_text())
    xyz[2][7][1] += 0.02  # annotation 2's index3 joint and index fingertip 2 cm off its MANO fit
    xyz[2][8][1] += 0.02
    (root / "training_xyz.json").write_text(json.dumps(xyz))
    (root / "training" / "rgb" / f"{1 * 3 + 0:08d}.jpg").unlink()  # the `hom` image of annotation 0 is missing
    return root, vertices


def test_freihand_hands_carry_mano_in_our_convention(freihand_root: tuple, body_models: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    root, vertices = freihand_root
    options = ["--body-model-dir", str(body_models), "--versions", "gs", "hom", "--size", str(SIZE),
               "--samples-per-shard", "2", "--workers", "1"]
    main(["convert", "freihand", "--root", str(root), "--out", str(tmp_path / "train_only"), *options])
    assert list(json.loads((tmp_path / "train_only" / "manifest.json").read_text())["splits"]) == ["train"]
    assert "pass --eval-root" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="FreiHAND_pub_v2_eval"):
        main(["convert", "freihand", "--root", str(root), "--out", str(tmp_path), "--eval-root", str(root), *options])

    main(["convert", "freihand", "--root", str(root), "--out", str(tmp_path), "--eval-root",
          str(root.parent / "FreiHAND_pub_v2_eval"), "--preview", "3", *options])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["skipped"] == {"MANO fit off the annotated joints": 2, "unreadable image": 1}
    assert (manifest["splits"]["train"]["samples"], manifest["splits"]["test"]["samples"]) == (3, 2)
    assert manifest["keypoints"] == list(HAND_KEYPOINT_NAMES) and (tmp_path / "preview.png").is_file()

    batch = mesh_batch(tmp_path, "train", batch_size=3)
    assert [key[-8:] for key in batch["key"]] == ["00000000", "00000001", "00000004"]  # gs 0, gs 1, hom 1
    keypoints_2d, keypoints_3d = batch["keypoints_2d"], batch["keypoints_3d"]
    assert bool((keypoints_2d[..., 2] == 1).all())
    assert all(bool(batch["has"][flag].all()) for flag in ("params", "transl", "vertices"))
    torch.testing.assert_close(project(keypoints_3d[..., :3], batch["K"]), keypoints_2d[..., :2].double(),
                               atol=2e-3, rtol=0)
    # Our convention: the flat-hand model posed with the stored parameters is the annotated hand.
    flat = smplx.create(str(body_models), model_type="mano", ext="npz", use_pca=False, flat_hand_mean=True)
    with torch.no_grad():
        output = flat(**{name: batch[name] for name in ("global_orient", "hand_pose", "betas", "transl")})
    expected = torch.from_numpy(vertices[[0, 1, 1]]).float()
    torch.testing.assert_close(output.vertices, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["vertices"], expected, atol=1e-4, rtol=0)
    # The keypoint order: MANO's joints, then the fingertips.
    torch.testing.assert_close(output.joints, keypoints_3d[:, :16, :3], atol=1e-4, rtol=0)
    torch.testing.assert_close(output.vertices[:, MANO_TIPS], keypoints_3d[:, 16:, :3], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- DensePose-COCO


def rle_string(mask: np.ndarray) -> str:
    """pycocotools' compressed RLE of a 0/1 mask (maskApi.c rleToString), written independently of
    the converter's decoder: column-major runs starting with 0s, deltas from the fourth run on."""
    flat = mask.T.reshape(-1).astype(np.int64)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])) != 0)
    runs = np.diff(np.concatenate([[0], changes])).tolist()
    text = []
    for index, run in enumerate(runs):
        value = run - runs[index - 2] if index > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            text.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(text)


def test_rle_decoding_inverts_pycocotools_encoding() -> None:
    assert rle_counts("191L") == [1, 9, 1, 5]  # the last run is stored as 5 - 9 = -4: "L" = 48 + 28 (0x10: negative)
    mask = (np.random.default_rng(0).random((256, 256)) < 0.02).astype(np.uint8)
    mask[40:200, 30:90] = 1  # long runs need several 5-bit groups
    np.testing.assert_array_equal(decode_rle(rle_string(mask), 256, 256), mask)


def crop_cameras(out: Path, split: str) -> dict[str, tuple[np.ndarray, list[float]]]:
    """Per sample of `out/split`: its crop's K and the person's (or hand's) box in crop pixels, as stored."""
    cameras = {}
    for sample in wds.WebDataset(sorted(str(p) for p in (out / split).glob("*.tar")), shardshuffle=False):
        label = json.loads(sample["json"])
        cameras[sample["__key__"]] = (np.array(label["K"]), label["bbox"])
    return cameras


def assert_nominal_camera(crop_K: np.ndarray, crop_box: list[float], source_box: list[float],
                          image_size: tuple[int, int]) -> None:
    """The README's nominal camera of an uncalibrated image: focal = the image diagonal, principal point at
    its centre ((W - 1) / 2, (H - 1) / 2 in pixel-centre coordinates). The crop's box is the source box under
    the crop's scale and shift, which take the crop's K back to the source image."""
    (x, y, w, h), (crop_x, crop_y, crop_w, crop_h) = source_box, crop_box
    scale = crop_w / w
    assert crop_h / h == pytest.approx(scale, rel=1e-5) and crop_K[0, 1] == crop_K[1, 0] == 0
    width, height = image_size
    diagonal = (width**2 + height**2) ** 0.5
    source = (crop_K[0, 0] / scale, crop_K[1, 1] / scale, x + (crop_K[0, 2] - crop_x) / scale,
              y + (crop_K[1, 2] - crop_y) / scale)
    assert source == pytest.approx((diagonal, diagonal, (width - 1) / 2, (height - 1) / 2), rel=1e-5)


DP_WIDTH, DP_HEIGHT = 120, 100
DP_BOX = [30.0, 12.0, 40.0, 80.0]  # x, y, w, h of the annotated person


def coarse_part_at(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The fixture's coarse segmentation in bbox fractions: coarse part 1 above the middle, part 6
    in the lower left quarter, background elsewhere."""
    return np.where(v < 0.5, 1, np.where(u < 0.5, 6, 0))


DENSEPOSE_NAMINGS = {"densepose_repo": "densepose_coco_2014_{}.json", "detectron2": "densepose_{}2014.json"}


def write_densepose_coco(root: Path, naming: str = DENSEPOSE_NAMINGS["densepose_repo"]) -> dict[str, list]:
    """`annotations/<naming of train and minival>` and the COCO images they name; returns the train
    person's points (I, U, V, x, y)."""
    grid = (np.arange(256) + 0.5) / 256
    parts = coarse_part_at(grid[None, :], grid[:, None])  # rows: v, columns: u
    masks = [{"size": [256, 256], "counts": rle_string((parts == part).astype(np.uint8))} if part in (1, 6) else []
             for part in range(1, 15)]
    rng = np.random.default_rng(2)
    u, v = rng.uniform(0.05, 0.45, 12), rng.uniform(0.1, 0.9, 12)
    points = {"dp_I": [2 if b < 0.5 else 9 for b in v], "dp_U": rng.uniform(0, 1, 12).round(3).tolist(),
              "dp_V": rng.uniform(0, 1, 12).round(3).tolist(), "dp_x": (u * 255).tolist(), "dp_y": (v * 255).tolist()}
    person = {"category_id": 1, "iscrowd": 0, "area": 2400.0, "num_keypoints": 0, "keypoints": [0] * 51,
              "segmentation": [[30, 12, 70, 12, 70, 92, 30, 92]]}
    splits = {
        "train": ("train2014", [
            {**person, "id": 11, "image_id": 1, "bbox": DP_BOX, **points, "dp_masks": masks},
            {**person, "id": 12, "image_id": 1, "bbox": [80.0, 20.0, 30.0, 70.0]},  # not DensePose-annotated
            {**person, "id": 13, "image_id": 2, "bbox": DP_BOX, **points,  # corrupt mask
             "dp_masks": [{"size": [256, 256], "counts": "0Q"}] + [[]] * 13},
        ]),
        "minival": ("val2014", [{**person, "id": 21, "image_id": 3, "bbox": DP_BOX, **points, "dp_masks": [[]] * 14}]),
    }
    (root / "annotations").mkdir(parents=True)
    for name, (folder, annotations) in splits.items():
        (root / folder).mkdir()
        images = []
        for image_id in sorted({annotation["image_id"] for annotation in annotations}):
            file_name = f"COCO_{folder}_{image_id:012d}.jpg"
            Image.new("RGB", (DP_WIDTH, DP_HEIGHT), (100, 80, 60)).save(root / folder / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": DP_WIDTH, "height": DP_HEIGHT})
        coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
        (root / "annotations" / naming.format(name)).write_text(json.dumps(coco))
    return points


@pytest.mark.parametrize("naming", DENSEPOSE_NAMINGS.values(), ids=DENSEPOSE_NAMINGS.keys())
def test_densepose_coco_points_and_background_land_in_the_crop(tmp_path: Path, naming: str) -> None:
    points = write_densepose_coco(tmp_path / "coco", naming)
    out = tmp_path / "shards"
    main(["convert", "densepose_coco", "--root", str(tmp_path / "coco"), "--out", str(out), "--size", str(SIZE),
          "--workers", "1", "--preview", "2"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == {"corrupt DensePose mask": 1} and manifest["people_without_densepose"] == 1
    assert (manifest["splits"]["train"]["samples"], manifest["splits"]["val"]["samples"]) == (1, 1)
    assert len(manifest["densepose_parts"]) == 24
    assert "focal = source image diagonal" in manifest["intrinsics"]
    for split in "train", "val":
        (K, crop_box), = crop_cameras(out, split).values()
        assert_nominal_camera(K, crop_box, DP_BOX, (DP_WIDTH, DP_HEIGHT))

    for split, has_masks in ("train", True), ("val", False):
        batch = first_batch(out, split, ("json", "iuv.png"), batch_size=1)
        assert bool(batch["has"]["densepose"][0]) and not bool(batch["has"]["smpl"][0])
        iuv = batch["iuv"][0].long()  # (3, S, S)
        # The crop's K is the nominal camera moved by the crop: it gives back the crop's affine map.
        affine = batch["K"][0].double() @ torch.linalg.inv(torch.from_numpy(nominal_intrinsics(DP_WIDTH, DP_HEIGHT)))
        x, y, w, h = DP_BOX
        source = torch.tensor([[x + px / 255 * w, y + py / 255 * h] for px, py in zip(points["dp_x"], points["dp_y"])])
        pixel = (source.double() @ affine[:2, :2].T + affine[:2, 2]).round().long()
        labels = iuv[:, pixel[:, 1], pixel[:, 0]].T
        expected = torch.from_numpy(np.round(np.array([points["dp_I"], np.array(points["dp_U"]) * 255,
                                                       np.array(points["dp_V"]) * 255]))).T.long()
        assert torch.equal(labels, expected)
        # Every other pixel: 0 exactly where the masks say background, else 255 (unlabelled).
        others = torch.ones_like(iuv[0], dtype=torch.bool)
        others[pixel[:, 1], pixel[:, 0]] = False
        centres = torch.arange(SIZE, dtype=torch.float64)
        u = ((centres - affine[0, 2]) / affine[0, 0] - x) / w
        v = ((centres - affine[1, 2]) / affine[1, 1] - y) / h
        in_box = ((v >= 0) & (v < 1))[:, None] & ((u >= 0) & (u < 1))[None, :]
        background = in_box & torch.from_numpy(coarse_part_at(u[None, :].numpy(), v[:, None].numpy()) == 0)
        expected_parts = torch.where(background, 0, 255) if has_masks else torch.full_like(iuv[0], 255)
        assert torch.equal(iuv[0][others], expected_parts[others]) and (int((iuv[0] == 0).sum()) > 100) == has_masks
        assert int(iuv[1:][:, others].max()) == 0


# ----------------------------------------------------------------------------- HaGRID

HAGRID_COLOURS = {"like": (220, 40, 40), "peace": (40, 220, 40), "thumb_index2": (40, 40, 220),
                  "no_gesture": (220, 220, 40)}


HAGRID_IMAGE_SIZE = (160, 90)
# [x, y, w, h] as fractions of the image: each image's gesture hand, its idle hand, or two hands' united box
HAGRID_GESTURE_BOX, HAGRID_IDLE_BOX = [0.1, 0.2, 0.2, 0.4], [0.6, 0.4, 0.15, 0.3]
HAGRID_UNITED_BOX = [0.1, 0.3, 0.35, 0.3]


def hagrid_source_box(key: str) -> list[float]:
    """The box in pixels that sample `key` (hagrid_<image id>_<box number>) was cropped from in `write_hagrid`."""
    image_id, number = key.removeprefix("hagrid_").rsplit("_", 1)
    box = HAGRID_UNITED_BOX if image_id.startswith("thu") else [HAGRID_GESTURE_BOX, HAGRID_IDLE_BOX][int(number)]
    width, height = HAGRID_IMAGE_SIZE
    return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def write_hagrid(root: Path, version: int) -> None:
    """A HaGRID copy in the v1 or v2 layout: per-gesture image folders and annotation files, each
    hand drawn as a rectangle in its class's colour (two-handed gestures: the united box)."""
    rng = np.random.default_rng(version)
    annotation_folders = {2: {"train": "hagrid_annotations/train", "val": "hagrid_annotations/val"},
                          1: {"train": "ann_train_val", "val": "ann_test"}}[version]
    for split, folder in annotation_folders.items():
        for gesture in ("like", "peace", "thumb_index2"):
            folder_v1 = f"train_val_{gesture}" if split == "train" else f"test/{gesture}"
            images = root / (f"hagrid_dataset/{gesture}" if version == 2 else folder_v1)
            images.mkdir(parents=True, exist_ok=True)
            annotations = {}
            for number in range(2):
                image_id = f"{gesture[:3]}{split}{number}-0000-4000-8000-{rng.integers(1e12):012d}"
                picture = Image.new("RGB", HAGRID_IMAGE_SIZE, (128, 128, 128))
                if gesture == "thumb_index2":  # two hands making one gesture, plus their united box
                    boxes, labels = [[0.1, 0.3, 0.15, 0.3], [0.3, 0.3, 0.15, 0.3]], [gesture, gesture]
                    extra = {"united_bbox": [HAGRID_UNITED_BOX], "united_label": [gesture]}
                    drawn = [(HAGRID_UNITED_BOX, gesture)]
                else:  # the gesture and a second, idle hand
                    boxes, labels = [HAGRID_GESTURE_BOX, HAGRID_IDLE_BOX], [gesture, "no_gesture"]
                    extra = {"united_bbox": None, "united_label": None} if version == 2 else {"leading_hand": "right"}
                    drawn = list(zip(boxes, labels))
                width, height = HAGRID_IMAGE_SIZE
                for (x, y, w, h), label in drawn:
                    ImageDraw.Draw(picture).rectangle((x * width, y * height, (x + w) * width - 1,
                                                       (y + h) * height - 1), fill=HAGRID_COLOURS[label])
                picture.save(images / f"{image_id}.jpg")
                annotations[image_id] = {"bboxes": boxes, "labels": labels, "user_id": f"user{number}", **extra}
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / f"{gesture}.json").write_text(json.dumps(annotations))
    missing = next(iter(json.loads((root / annotation_folders["val"] / "like.json").read_text())))
    next(root.rglob(f"{missing}.jpg")).unlink()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("drop_no_gesture", [False, True], ids=["all", "drop_no_gesture"])
def test_hagrid_crops_show_their_class(tmp_path: Path, version: int, drop_no_gesture: bool) -> None:
    write_hagrid(tmp_path / "hagrid", version)
    out = tmp_path / "shards"
    arguments = ["convert", "hagrid", "--root", str(tmp_path / "hagrid"), "--out", str(out), "--size", str(SIZE),
                 "--samples-per-shard", "4", "--workers", "1", "--preview", "3",
                 *(["--drop-no-gesture"] if drop_no_gesture else [])]
    main(arguments)
    manifest = json.loads((out / "manifest.json").read_text())
    classes = ["like", "peace", "thumb_index2"] if drop_no_gesture else ["like", "no_gesture", "peace", "thumb_index2"]
    assert manifest["classes"] == classes and manifest["skipped"] == {"image missing": 1 if drop_no_gesture else 2}
    held_out = "val" if version == 2 else "test"  # v1 has train_val and test
    per_split = 6 if drop_no_gesture else 10  # 2 images x (like, peace, thumb_index2) + their idle hands
    assert list(manifest["splits"]) == ["train", held_out]
    assert (manifest["splits"]["train"]["samples"], manifest["splits"][held_out]["samples"]) == (
        per_split, per_split - (1 if drop_no_gesture else 2))  # one image missing
    for split in "train", held_out:
        data = LabelledDataModule(train_shards=str(out / "train"), val_shards=str(out / split),
                                  label_keys=("cls", "json"), batch_size=16, num_workers=0, image_size=SIZE,
                                  augment=False)
        assert data.classes == classes  # read from the manifest
        batch = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
        assert bool(batch["has"]["gesture"].all()) and not bool(batch["has"]["mano"].any())
        centre = batch["image"][:, :, SIZE // 2, SIZE // 2] * 255
        expected = torch.tensor([HAGRID_COLOURS[classes[label]] for label in batch["label"]], dtype=torch.float32)
        torch.testing.assert_close(centre, expected, atol=30, rtol=0)  # JPEG twice
        cameras = crop_cameras(out, split)
        assert len(cameras) == manifest["splits"][split]["samples"]
        for key, (K, crop_box) in cameras.items():
            assert_nominal_camera(K, crop_box, hagrid_source_box(key), HAGRID_IMAGE_SIZE)
    assert "focal = source image diagonal" in manifest["intrinsics"]
    # A second run finds every shard complete and rewrites nothing.
    main(arguments)
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["resumed_shards"] == len(
        manifest["splits"]["train"]["shards"])
