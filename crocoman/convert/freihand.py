"""FreiHAND -> labelled hand shards (task "hand", MANO), one sample per image.

Layout (https://lmb.informatik.uni-freiburg.de/projects/freihand/): `training/rgb/%08d.jpg`,
`training_K.json`, `training_xyz.json` (21 joints, metres, camera frame) and `training_mano.json`
(per sample `[[61 values]]`: 48 axis-angle pose values (global orientation first) relative to
MANO's mean hand, 10 betas, then the root's image position (2) and a scale, not a translation).
Each of the 32,560 annotations has four images (`--versions`: green screen `gs`, then `hom`,
`sample`, `auto` backgrounds) at `rgb/` index `i + 32560 * version`. The evaluation set becomes the
test split when its annotations are there: they come in a separate archive, `FreiHAND_pub_v2_eval`
(`evaluation_{K,mano,xyz}.json`, and `evaluation/rgb/` again), given with `--eval-root` (or merged
into ROOT); its images are read from there, else from ROOT's `evaluation/rgb/`.

Keypoints are stored in the order of `crocoman.synth.hand.HAND_KEYPOINT_NAMES` (MANO's 16 joints
then the fingertips, as smplx outputs them), not FreiHAND's (thumb first). With
`--body-model-dir` (smplx layout: `mano/MANO_RIGHT.{npz,pkl}`) the MANO parameters are stored as
our shards hold them: `hand_pose` relative to the flat hand (load with `flat_hand_mean=True,
use_pca=False`), `transl` such that the posed model lies on the annotated joints (a fit off by
more than `--fit-tolerance-mm` is skipped and counted), and the vertices; without it only the
keypoints are stored.
"""

import argparse
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from body.layouts import HAND_KEYPOINT_NAMES, MANO_JOINT_NAMES
from crocoman.convert.common import SkipSample, read_image, run_conversion
from crocoman.convert.labelled import (
    cached_body_model,
    crop_projected,
    draw_labelled,
    labelled_sample,
    load_body_model,
)

VERSIONS = ("gs", "hom", "sample", "auto")  # order of the image blocks in training/rgb
FREIHAND_NAMES = (
    "wrist", "thumb1", "thumb2", "thumb3", "thumb_tip", "index1", "index2", "index3", "index_tip",
    "middle1", "middle2", "middle3", "middle_tip", "ring1", "ring2", "ring3", "ring_tip",
    "pinky1", "pinky2", "pinky3", "pinky_tip",
)  # fmt: skip
FROM_FREIHAND = [FREIHAND_NAMES.index(name) for name in HAND_KEYPOINT_NAMES]  # our keypoint i = theirs [i]
SPLITS = {"training": "train", "evaluation": "test"}


@dataclass(frozen=True)
class HandImage:
    """One image and its annotation, as plain tuples (a stable repr fingerprints the shard)."""

    key: str
    image: Path
    subject: str
    K: tuple  # 3x3
    mano: tuple  # 61
    xyz: tuple  # 21 x 3, FreiHAND order, metres


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--body-model-dir", type=Path,
                        help="folder with mano/MANO_RIGHT.npz or .pkl (smplx layout): also store MANO parameters "
                             "and vertices")
    parser.add_argument("--eval-root", type=Path,
                        help="the unpacked evaluation annotations (FreiHAND_pub_v2_eval: evaluation_{K,mano,xyz}.json), "
                             "a separate download; default: ROOT")
    parser.add_argument("--versions", nargs="+", choices=VERSIONS, default=list(VERSIONS),
                        help="which of the four images of each training annotation to convert")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels")
    parser.add_argument("--margin", type=float, default=0.25, help="crop margin around the keypoints, per side")
    parser.add_argument("--fit-tolerance-mm", type=float, default=5.0,
                        help="skip a sample whose MANO fit misses its annotated joints by more than this")


def _load_list(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --root must be the FreiHAND folder holding training/ and "
                                f"training_*.json (https://lmb.informatik.uni-freiburg.de/projects/freihand/)")
    return json.loads(path.read_text())


def split_images(root: Path, set_name: str, versions: list[str], image_root: Path | None = None) -> list[HandImage]:
    """The images of `set_name` ("training" or "evaluation") with their annotations (in `root`; images
    under `image_root`, default `root`)."""
    Ks, manos, xyzs = (_load_list(root / f"{set_name}_{what}.json") for what in ("K", "mano", "xyz"))
    if not len(Ks) == len(manos) == len(xyzs):
        raise ValueError(f"{root}/{set_name}_{{K,mano,xyz}}.json disagree on the number of samples: "
                         f"{len(Ks)}, {len(manos)}, {len(xyzs)}")
    images = []
    for version in versions if set_name == "training" else ["gs"]:
        offset = VERSIONS.index(version) * len(Ks)
        for index, (K, mano, xyz) in enumerate(zip(Ks, manos, xyzs)):
            mano = np.asarray(mano, np.float64).reshape(-1)
            if mano.shape != (61,) or np.shape(K) != (3, 3) or np.shape(xyz) != (21, 3):
                raise ValueError(f"{root}/{set_name}_*.json sample {index}: K {np.shape(K)}, mano {mano.shape}, "
                                 f"xyz {np.shape(xyz)}; expected (3, 3), (61,), (21, 3)")
            number = offset + index
            images.append(HandImage(
                key=f"freihand_{set_name}_{number:08d}", image=(image_root or root) / set_name / "rgb" / f"{number:08d}.jpg",
                subject=f"freihand/{set_name}/{index:05d}", K=tuple(map(tuple, K)), mano=tuple(mano.tolist()),
                xyz=tuple(map(tuple, xyz)),
            ))  # fmt: skip
    return images


def mano_labels(sample: HandImage, keypoints_3d: np.ndarray, body_model_dir: str,
                tolerance_mm: float) -> dict[str, np.ndarray]:
    """MANO parameters in our convention and the vertices, placed on the annotated joints."""
    model = cached_body_model(body_model_dir, "mano", use_pca=False, flat_hand_mean=False)
    theta = torch.tensor(sample.mano, dtype=torch.float32)
    with torch.no_grad():
        output = model(global_orient=theta[None, :3], hand_pose=theta[None, 3:48], betas=theta[None, 48:58])
    joints = output.joints[0, :len(MANO_JOINT_NAMES)].double().numpy()
    transl = (keypoints_3d[:len(MANO_JOINT_NAMES)] - joints).mean(0)
    miss_mm = 1000 * np.linalg.norm(joints + transl - keypoints_3d[:len(MANO_JOINT_NAMES)], axis=1).max()
    if miss_mm > tolerance_mm:
        raise SkipSample("MANO fit off the annotated joints", f"{sample.key}: {miss_mm:.1f} mm > {tolerance_mm} mm")
    return {"global_orient": theta[:3].numpy(), "hand_pose": (theta[3:48] + model.hand_mean).numpy(),
            "betas": theta[48:58].numpy(), "transl": transl, "vertices": output.vertices[0].double().numpy() + transl}


def encode_hand(sample: HandImage, size: int, margin: float, body_model_dir: str | None,
                tolerance_mm: float) -> dict:
    """One FreiHAND image -> a labelled hand crop (see the module docstring)."""
    keypoints_3d = np.asarray(sample.xyz, np.float64)[FROM_FREIHAND]
    arrays = {} if body_model_dir is None else mano_labels(sample, keypoints_3d, body_model_dir, tolerance_mm)
    image = read_image(sample.image)
    K = np.asarray(sample.K, np.float64)
    if ((keypoints_3d @ K.T)[:, 2] <= 1e-6).any():
        raise SkipSample("joints behind the camera", f"{sample.key}: xyz z {keypoints_3d[:, 2].min():.3f} m")
    crop, affine, crop_keypoints, bbox = crop_projected(image, keypoints_3d, K, size, margin, key=sample.key)
    arrays = {"keypoints_2d": crop_keypoints, "keypoints_3d": np.concatenate([keypoints_3d, np.ones((21, 1))], 1),
              **arrays}
    has = {"keypoints_2d", "keypoints_3d"} | ({"mano"} if body_model_dir else set())
    return labelled_sample(sample.key, crop, task="hand", K=affine @ K, bbox=bbox,
                           has=has, subject=sample.subject, body_model="mano", arrays=arrays)


def convert(args: argparse.Namespace) -> dict:
    """FreiHAND training (and evaluation, when annotated) images -> `args.out/{train,test}/freihand-*.tar`."""
    if args.body_model_dir is not None:
        load_body_model(args.body_model_dir, "mano", use_pca=False)  # fail now, not in every worker
    splits = {"train": split_images(args.root, "training", args.versions)}
    eval_root = args.eval_root or args.root
    if (eval_root / "evaluation_xyz.json").is_file():
        images = eval_root if (eval_root / "evaluation" / "rgb").is_dir() else args.root
        splits["test"] = split_images(eval_root, "evaluation", ["gs"], image_root=images)
    elif args.eval_root is not None:
        raise FileNotFoundError(f"{args.eval_root / 'evaluation_xyz.json'} not found: --eval-root must be the unpacked "
                                f"FreiHAND_pub_v2_eval archive (evaluation_K.json, evaluation_mano.json, "
                                f"evaluation_xyz.json)")
    else:
        print(f"freihand: no evaluation annotations in {args.root} (they come as a separate archive, "
              f"FreiHAND_pub_v2_eval): converting the training set only; pass --eval-root to add the test split")
    body_model_dir = None if args.body_model_dir is None else str(args.body_model_dir)
    encode = partial(encode_hand, size=args.size, margin=args.margin, body_model_dir=body_model_dir,
                     tolerance_mm=args.fit_tolerance_mm)
    settings = {"size": args.size, "margin": args.margin, "versions": args.versions,
                "mano": body_model_dir is not None, "fit_tolerance_mm": args.fit_tolerance_mm}
    extra = {"task": "hand", "body_model": "mano", "keypoints": list(HAND_KEYPOINT_NAMES),
             "hand_pose": "axis-angle relative to the flat hand: smplx MANO with flat_hand_mean=True, use_pca=False"}
    return run_conversion(args, "freihand", splits, encode, shard_prefix="freihand", draw=draw_labelled, extra=extra,
                          settings=settings)
