"""Pair converters end to end: each test writes a tiny capture of a drawn stick person in the
dataset's real layout and formats, converts it through `crocoman-data convert`, and checks the
labels against the pixels and the shards against `PairDataModule`."""

import io
import json
import re
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image, ImageDraw

from datamodules import PairDataModule
from tests.pickles import Exploit
from crocoman.data import main
from crocoman.synth.world import look_at

WIDTH, HEIGHT = 96, 128
K = np.array([[110.0, 0.0, 47.5], [0.0, 110.0, 63.5], [0.0, 0.0, 1.0]])
BONES = ((0, 1), (1, 2), (1, 3), (1, 4))  # head-pelvis, pelvis-hands, pelvis-feet
RED = (255, 0, 0)


def person_m(time: int) -> np.ndarray:
    """World joints (5, 3), y up: head, pelvis, left hand, right hand, feet; the arms wave."""
    wave = 0.25 * np.sin(time)
    return np.array([[0.0, 1.7, 0.0], [0.0, 1.0, 0.0], [-0.45, 1.3 + wave, 0.1], [0.45, 1.3 - wave, 0.1],
                     [0.0, 0.05, 0.0]])


def rig(cameras: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """World->camera (R, t) of cameras on a 3 m ring around the person, OpenCV convention."""
    poses = []
    for camera in range(cameras):
        angle = 2 * np.pi * camera / cameras + 0.3
        position = torch.tensor([3 * np.sin(angle), 1.1, 3 * np.cos(angle)], dtype=torch.float32)
        R, t = look_at(position, torch.tensor([0.0, 0.9, 0.0]), roll_rad=0.0)
        u, _, vt = np.linalg.svd(R.double().numpy())  # exactly orthonormal, so rotation vectors round-trip
        poses.append((u @ vt, t.double().numpy()))
    return poses


def project(R: np.ndarray, t: np.ndarray, world: np.ndarray) -> np.ndarray:
    camera = world @ R.T + t
    pixels = camera @ K.T
    return pixels[:, :2] / pixels[:, 2:]


def draw_person(joints_2d: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> tuple[Image.Image, Image.Image]:
    """A grey stick figure with red joint disks on a blue background, and its mask."""
    image = Image.new("RGB", (width, height), (20, 40, 90))
    mask = Image.new("L", (width, height), 0)
    for canvas, ink, joint_ink in ((ImageDraw.Draw(image), (200, 200, 200), RED), (ImageDraw.Draw(mask), 255, 255)):
        for a, b in BONES:
            canvas.line([tuple(joints_2d[a]), tuple(joints_2d[b])], fill=ink, width=4)
        for x, y in joints_2d:
            canvas.ellipse((x - 3, y - 3, x + 3, y + 3), fill=joint_ink)
    return image, mask


def red_near(image: np.ndarray, point: np.ndarray, radius: int = 2) -> bool:
    """Whether a red pixel lies within `radius` of `point` (a drawn joint where the label says)."""
    x, y = np.round(point).astype(int)
    return bool(reddish(image[max(y - radius, 0):y + radius + 1, max(x - radius, 0):x + radius + 1]).any())


def reddish(image: np.ndarray) -> np.ndarray:
    """Pixels of a red joint disk, also where resampling blended it with the grey bones."""
    image = image.astype(int)
    return image[..., 0] - np.maximum(image[..., 1], image[..., 2]) > 60


def groups(out: Path, split: str = "train") -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in (out / split).glob("*.tar")), shardshuffle=False))


def check_labels_on_pixels(out: Path, size: int, split: str = "train") -> int:
    """Every stored joint sits on a red disk of its crop, and 3D joints project onto the 2D ones
    through the stored crop intrinsics. Returns the number of frames checked."""
    checked = 0
    for sample in groups(out, split):
        for frame in json.loads(sample["group.json"])["frames"]:
            crop = np.asarray(Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB"))
            assert crop.shape == (size, size, 3)
            joints_2d = np.asarray(frame["joints_2d"])
            for point in joints_2d[joints_2d[:, 2] > 0, :2]:
                if (0 <= point).all() and (point < size).all():
                    assert red_near(crop, point), (frame, point)
            joints_3d = np.asarray(frame["joints_3d"])
            present = joints_3d[:, 3] > 0
            np.testing.assert_array_equal(present, joints_2d[:, 2] > 0)
            projected = joints_3d[present, :3] @ np.asarray(frame["K"]).T
            np.testing.assert_allclose(projected[:, :2] / projected[:, 2:], joints_2d[present, :2], atol=1e-3)
            checked += 1
    return checked


def load_one_batch(out: Path) -> dict:
    dm = PairDataModule(str(out / "train"), val_shards=str(out / "val") if (out / "val").is_dir() else None,
                        batch_size=2, num_workers=0, image_size=32, epoch_pairs=2, shuffle_buffer=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image1"].shape == (2, 3, 32, 32) and batch["person1"].sum() > 0
    return batch


def mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in out.glob("*/*.tar")}


# ----------------------------------------------------------------------------- generic


def write_generic(root: Path, sequences: int = 2, frames: int = 7, cameras: int = 3) -> None:
    """The documented generic layout: cameras.json, <sequence>/<camera>/<frame>.jpg with masks,
    keypoints_3d.json in world metres, boxes.json, and for seq1 also keypoints_2d.json (x, y only)."""
    poses = rig(cameras)
    root.mkdir(parents=True)
    (root / "cameras.json").write_text(json.dumps(
        {f"cam{c}": {"K": K.tolist(), "R": R.tolist(), "t": t.tolist(), "dist": [0, 0, 0, 0, 0]}
         for c, (R, t) in enumerate(poses)}))
    for sequence in range(sequences):
        folder = root / f"seq{sequence}"
        keypoints, keypoints_2d, boxes = {}, {}, {}
        for frame in range(frames):
            world = person_m(frame + sequence)
            keypoints[f"{frame:04d}"] = np.concatenate([world, np.ones((5, 1))], 1).tolist()
            for camera, (R, t) in enumerate(poses):
                (folder / f"cam{camera}").mkdir(parents=True, exist_ok=True)
                image, mask = draw_person(project(R, t, world))
                image.save(folder / f"cam{camera}" / f"{frame:04d}.jpg", quality=95)
                mask.save(folder / f"cam{camera}" / f"{frame:04d}.mask.png")
                keypoints_2d.setdefault(f"cam{camera}", {})[f"{frame:04d}"] = project(R, t, world).tolist()
                low, high = project(R, t, world).min(0), project(R, t, world).max(0)
                boxes.setdefault(f"cam{camera}", {})[f"{frame:04d}"] = [*low.tolist(), *(high - low).tolist()]
        (folder / "keypoints_3d.json").write_text(json.dumps(keypoints))
        (folder / "boxes.json").write_text(json.dumps(boxes))
        if sequence == 1:
            (folder / "keypoints_2d.json").write_text(json.dumps(keypoints_2d))


def test_generic_converts_resumes_and_loads(tmp_path, capsys):
    root, out = tmp_path / "capture", tmp_path / "shards"
    write_generic(root)
    (root / "seq0" / "cam1" / "0004.jpg").write_bytes(b"not a jpeg")  # one corrupt frame: dropped, counted
    args = ["convert", "generic", "--root", str(root), "--out", str(out), "--size", "48", "--times", "3",
            "--samples-per-shard", "1", "--val", "seq1", "--workers", "2", "--preview", "2"]
    main(args)
    manifest = json.loads((out / "manifest.json").read_text())
    # 7 frames -> 2 windows of 3 per sequence; seq1 held out for validation
    assert manifest["splits"]["train"]["samples"] == 2 and manifest["splits"]["val"]["samples"] == 2
    assert manifest["totals"]["shards"] == 4 and manifest["skipped"] == {"frame: unreadable image": 1}
    first = json.loads(groups(out)[0]["group.json"])
    assert first["subject"] == "seq0" and len(first["frames"]) == 9
    assert {(f["camera"], f["time"]) for f in first["frames"]} == {(f"cam{c}", t) for c in range(3) for t in range(3)}
    assert check_labels_on_pixels(out, 48) == 9 + 8 and check_labels_on_pixels(out, 48, "val") == 9 + 9
    assert (out / "preview.png").is_file()
    load_one_batch(out)

    before = mtimes(out)
    capsys.readouterr()
    main(args[:-4] + ["--workers", "1"])
    assert "2 of 2 shards already complete" in capsys.readouterr().out
    assert mtimes(out) == before

    with pytest.raises(FileExistsError, match="other inputs or settings"):
        main(args[:-4] + ["--workers", "1", "--margin", "0.5"])


def test_generic_refuses_distortion_and_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cameras.json"):
        main(["convert", "generic", "--root", str(tmp_path), "--out", str(tmp_path / "out")])
    (tmp_path / "cameras.json").write_text(json.dumps({"c": {"K": K.tolist(), "R": np.eye(3).tolist(),
                                                             "t": [0, 0, 0], "dist": [0.1, 0, 0, 0, 0]}}))
    with pytest.raises(ValueError, match="undistort the images first"):
        main(["convert", "generic", "--root", str(tmp_path), "--out", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- HUMBI


def write_humbi(root: Path, subjects: int = 2, frames: int = 3, cameras: int = 3) -> None:
    """HUMBI body layout: calibration text files per subject, 8-digit frame folders with
    image/image<7 digits>.jpg and reconstruction/keypoints.txt (25 OpenPose joints, world)."""
    poses = rig(cameras)
    openpose = {0: 0, 8: 1, 7: 2, 4: 3, 14: 4}  # nose=head, mid_hip=pelvis, wrists, left ankle=feet
    for subject in range(1, subjects + 1):
        body = root / f"subject_{subject}" / "body"
        body.mkdir(parents=True)
        intrinsic = ["# HUMBI intrinsic parameters", "# per camera: index, then K (3x3)", f"NumCameras {cameras}"]
        extrinsic = ["# HUMBI extrinsic parameters", "# per camera: index, C (3), R (3x3)", f"NumCameras {cameras}"]
        for camera, (R, t) in enumerate(poses):
            intrinsic += [f"camera {camera}", *(" ".join(map(str, row)) for row in K)]
            extrinsic += [f"camera {camera}", " ".join(map(str, -R.T @ t)), *(" ".join(map(str, row)) for row in R)]
        (body / "intrinsic.txt").write_text("\n".join(intrinsic) + "\n")
        (body / "extrinsic.txt").write_text("\n".join(extrinsic) + "\n")
        for frame in range(1, frames + 1):
            world = person_m(frame + subject)
            (body / f"{frame:08d}" / "image").mkdir(parents=True)
            (body / f"{frame:08d}" / "reconstruction").mkdir()
            keypoints = np.zeros((25, 3))
            for row, joint in openpose.items():
                keypoints[row] = world[joint]
            np.savetxt(body / f"{frame:08d}" / "reconstruction" / "keypoints.txt", keypoints)
            for camera, (R, t) in enumerate(poses):
                draw_person(project(R, t, world))[0].save(body / f"{frame:08d}" / "image" / f"image{camera:07d}.jpg")


def test_humbi_converts_and_loads(tmp_path):
    root, out = tmp_path / "humbi", tmp_path / "shards"
    write_humbi(root)
    Image.new("RGB", (WIDTH, HEIGHT)).save(root / "subject_1/body/00000002/image/image0000099.jpg")  # no calibration
    main(["convert", "humbi", "--root", str(root), "--out", str(out), "--size", "40", "--workers", "1",
          "--val", "subject_2"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 1 and manifest["splits"]["val"]["samples"] == 1
    assert manifest["skipped"] == {"frame: camera not calibrated": 1}
    assert len(manifest["keypoints"]) == 25
    frames = json.loads(groups(out)[0]["group.json"])["frames"]
    assert len(frames) == 9 and {f["camera"] for f in frames} == {"0", "1", "2"}
    assert sum(np.asarray(f["joints_2d"])[:, 2].sum() for f in frames) == 9 * 5  # the 5 reconstructed joints
    assert check_labels_on_pixels(out, 40) == 9
    load_one_batch(out)

    main(["convert", "humbi", "--root", str(root), "--out", str(tmp_path / "two"), "--size", "40", "--workers", "1",
          "--cameras", "2"])  # a subset of the calibrated cameras per group
    for sample in groups(tmp_path / "two"):
        cameras = [f["camera"] for f in json.loads(sample["group.json"])["frames"]]
        assert len(cameras) == 6 and len(set(cameras)) == 2 and "99" not in cameras


def test_humbi_names_a_broken_calibration_file(tmp_path):
    write_humbi(tmp_path / "humbi", subjects=1, frames=1, cameras=1)
    (tmp_path / "humbi/subject_1/body/extrinsic.txt").write_text("a\nb\nc\ncamera 0\n1 2 3\n")
    with pytest.raises(ValueError, match=r"extrinsic.txt: 2 lines .* not a multiple of 5"):
        main(["convert", "humbi", "--root", str(tmp_path / "humbi"), "--out", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- videos


def write_video(path: Path, images: list[Image.Image], fps: int) -> None:
    """H.264 in MP4, as cameras and downloads deliver it (PyAV, real encoder)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = images[0].width, images[0].height, "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode())


def test_video_samples_frames_at_fps_and_crops_boxes(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "shards"
    root.mkdir()
    (R, t), = rig(1)
    for name in ("walk", "wave"):
        images, boxes = [], {}
        for index in range(20):  # 2 s at 10 fps; the person walks 0.15 m a frame, so a wrong frame shows
            world = person_m(index) + [0.15 * index - 1.4, 0, 0]
            joints_2d = project(R, t, world)
            images.append(draw_person(joints_2d)[0])
            low, high = joints_2d.min(0) - 4, joints_2d.max(0) + 4
            if index != 4:  # frame 4 has no box: its sample is skipped
                boxes[str(index)] = [*low.tolist(), *(high - low).tolist()]
        write_video(root / f"{name}.mp4", images, fps=10)
        (root / f"{name}.json").write_text(json.dumps(boxes))
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    (root / "broken.json").write_text("{}")
    main(["convert", "video", "--root", str(root), "--out", str(out), "--size", "48", "--fps", "5",
          "--workers", "1", "--val", "wave", "--preview", "3"])
    manifest = json.loads((out / "manifest.json").read_text())
    # 2 s at 5 fps: 10 samples -> 3 groups of 3 per video
    assert manifest["splits"]["train"]["samples"] == 3 and manifest["splits"]["val"]["samples"] == 3
    assert manifest["skipped"] == {"frame: no keypoints or box": 2} and manifest["unreadable_videos"] == ["broken.mp4"]
    for sample in groups(out):
        group = json.loads(sample["group.json"])
        assert group["intrinsics"].startswith("assumed") and {f["camera"] for f in group["frames"]} == {"video"}
        for frame in group["frames"]:
            crop = np.asarray(Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB"))
            rows, cols = np.nonzero(reddish(crop))
            x, y, w, h = frame["bbox"]  # the person's box of exactly this frame holds its red joints
            assert len(rows) and x - 1 <= cols.min() and cols.max() <= x + w + 1 and y - 1 <= rows.min()
            assert rows.max() <= y + h + 1
    walk = {sample["__key__"]: json.loads(sample["group.json"]) for sample in groups(out)}["walk-000000"]
    boxes = json.loads((root / "walk.json").read_text())
    assert [f["time"] for f in walk["frames"]] == [0, 1]  # samples at 0, 0.2 s: frames 0, 2; frame 4 has no box
    for frame, native in zip(walk["frames"], (0, 2), strict=True):
        (focal, _, cx), (_, _, cy), _ = frame["K"]
        scale = focal / 128  # default focal max(W, H) = 128 px, moved into the crop
        x, y, w, h = boxes[str(native)]
        np.testing.assert_allclose(frame["bbox"], [cx + scale * (x - 47.5), cy + scale * (y - 63.5), scale * w,
                                                   scale * h], atol=1e-4)
    load_one_batch(out)


# ----------------------------------------------------------------------------- AIST++


def rotation_vector(R: np.ndarray) -> np.ndarray:
    """Axis-angle of a rotation matrix (angle below pi), as OpenCV's Rodrigues writes it."""
    angle = np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


def write_aist(root: Path, frames: int = 6, views: int = 3) -> None:
    """AIST++ annotations (cameras/mapping.txt + setting JSON with Rodrigues rotations and
    centimetre translations, keypoints2d/3d pickles of numpy arrays) and H.264 videos of the
    first `views` of the nine views at 60 fps."""
    sequence = "gBR_sBM_cAll_d04_mBR0_ch01"
    poses = rig(views)
    (root / "cameras").mkdir(parents=True)
    (root / "cameras" / "mapping.txt").write_text(f"{sequence} setting1\ngBR_sBM_cAll_d04_mBR1_ch02 setting1\n")
    (root / "cameras" / "setting1.json").write_text(json.dumps([
        {"name": f"c{view + 1:02d}", "size": [WIDTH, HEIGHT], "matrix": K.tolist(), "distortions": [0.0] * 5,
         "rotation": rotation_vector(R).tolist(), "translation": (t * 100).tolist()}
        for view, (R, t) in enumerate(poses)]))
    coco = {0: 0, 11: 1, 9: 2, 10: 3, 15: 4}  # nose=head, left hip=pelvis, wrists, left ankle=feet
    keypoints3d = np.full((frames, 17, 3), np.nan)
    keypoints2d = np.zeros((9, frames, 17, 3))
    videos = [[] for _ in range(views)]
    for frame in range(frames):
        world = person_m(frame)
        for row, joint in coco.items():
            keypoints3d[frame, row] = world[joint] * 100  # centimetres
        for view, (R, t) in enumerate(poses):
            joints_2d = project(R, t, world)
            for row, joint in coco.items():
                keypoints2d[view, frame, row] = [*joints_2d[joint], 0.9]
            videos[view].append(draw_person(joints_2d)[0])
    for folder, data in (("keypoints2d", {"keypoints2d": keypoints2d, "det_scores": np.ones((9, frames)),
                                          "timestamps": np.arange(frames) * 16}),
                         ("keypoints3d", {"keypoints3d": keypoints3d, "keypoints3d_optim": keypoints3d})):
        (root / folder).mkdir()
        with open(root / folder / f"{sequence}.pkl", "wb") as file:
            pickle.dump(data, file)
    (root / "videos").mkdir()
    for view, images in enumerate(videos):
        write_video(root / "videos" / f"{sequence.replace('cAll', f'c{view + 1:02d}')}.mp4", images, fps=60)


def test_aist_needs_trust_reads_only_arrays_and_loads(tmp_path, capfd):
    root, out = tmp_path / "aist_plusplus_final", tmp_path / "shards"
    write_aist(root)
    args = ["convert", "aist", "--root", str(root), "--out", str(out), "--size", "48", "--workers", "1"]
    with pytest.raises(PermissionError, match="--trust-pickle"):
        main(args)
    hostile = "gBR_sBM_cAll_d04_mBR1_ch02"  # a second sequence whose pickle would run a command
    for folder in ("keypoints2d", "keypoints3d"):
        (root / folder / f"{hostile}.pkl").write_bytes(pickle.dumps({"keypoints3d_optim": Exploit()}))
    (root / "videos" / f"{hostile.replace('cAll', 'c01')}.mp4").write_bytes(b"")
    main(args + ["--trust-pickle", "--stride", "2", "--preview", "1"])
    assert "pwned" not in capfd.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    # 6 frames, every 2nd -> 3 sampled -> one window of 3, seen by the 3 views present
    assert manifest["splits"]["train"]["samples"] == 1 and manifest["unreadable_sequences"] == [hostile]
    assert manifest["missing_videos"] == 6 + 8 and len(manifest["keypoints"]) == 17
    group = json.loads(groups(out)[0]["group.json"])
    assert group["subject"] == "d04" and len(group["frames"]) == 9
    assert {f["camera"] for f in group["frames"]} == {"c01", "c02", "c03"}
    assert check_labels_on_pixels(out, 48) == 9
    joints_3d = np.asarray(group["frames"][0]["joints_3d"])
    assert 2.0 < joints_3d[0, 2] < 4.0  # metres from the camera (centimetres in the files)
    dm_batch = load_one_batch(out)
    assert dm_batch["image1"].shape[0] == 2
    # The videos where the downloader put them elsewhere: --videos, else the error names where it looked.
    (root / "videos").rename(tmp_path / "clips")
    with pytest.raises(FileNotFoundError, match=re.escape(f"videos ({root / 'videos'}/<sequence")):
        main(args + ["--trust-pickle", "--out", str(tmp_path / "none")])
    main(args + ["--trust-pickle", "--stride", "2", "--videos", str(tmp_path / "clips"),
                 "--out", str(tmp_path / "moved")])
    moved = json.loads((tmp_path / "moved/manifest.json").read_text())
    assert moved["splits"]["train"]["samples"] == 1 and moved["missing_videos"] == manifest["missing_videos"]
