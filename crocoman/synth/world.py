"""The synthetic world: a sampled person dressed in primitives, a camera ring, person-centred crops.

One group = one person seen by C static cameras at T time steps. Each frame is rendered
directly as a square crop around the person by choosing its intrinsics (focal length and
principal point), so the stored K is exactly the crop's and no image is ever resampled.
"""

import colorsys
from dataclasses import dataclass

import numpy as np
import torch

from crocoman.synth.render import Capsules, Checker, Ellipsoids, Rendering, Scene, render
from crocoman.synth.skeleton import (
    JOINT_INDEX,
    BodyModelParameters,
    BodyShape,
    Motion,
    camera_parameters,
    forward_kinematics,
    rest_offsets,
)

PART_NAMES = (
    "pelvis", "abdomen", "chest", "neck", "head", "hair",
    "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm", "left_hand", "right_hand",
    "left_thigh", "right_thigh", "left_calf", "right_calf", "left_foot", "right_foot",
)  # fmt: skip
PART_INDEX = {name: index + 1 for index, name in enumerate(PART_NAMES)}  # 0 is background

# (part, from joint, to joint, radius in metres, radius grows with girth)
_CAPSULES = (
    ("neck", "neck", "head", 0.05, True),
    *((f"{s}_upper_arm", f"{s}_shoulder", f"{s}_elbow", 0.048, True) for s in ("left", "right")),
    *((f"{s}_forearm", f"{s}_elbow", f"{s}_wrist", 0.04, True) for s in ("left", "right")),
    *((f"{s}_hand", f"{s}_wrist", f"{s}_hand", 0.033, False) for s in ("left", "right")),
    *((f"{s}_thigh", f"{s}_hip", f"{s}_knee", 0.075, True) for s in ("left", "right")),
    *((f"{s}_calf", f"{s}_knee", f"{s}_ankle", 0.053, True) for s in ("left", "right")),
    *((f"{s}_foot", f"{s}_ankle", f"{s}_foot", 0.042, False) for s in ("left", "right")),
)
# (part, joint whose frame it rides in, centre offset in that frame, semi-axes; torso x/z grow with girth)
_ELLIPSOIDS = (
    ("pelvis", "pelvis", (0.0, -0.03, 0.0), (0.165, 0.12, 0.115)),
    ("abdomen", "spine1", (0.0, 0.08, 0.01), (0.145, 0.15, 0.105)),
    ("chest", "spine3", (0.0, 0.08, 0.0), (0.175, 0.15, 0.115)),
    ("head", "head", (0.0, 0.07, 0.01), (0.078, 0.11, 0.095)),
    ("hair", "head", (0.0, 0.1, -0.015), (0.083, 0.09, 0.095)),
)
_TORSO = ("pelvis", "abdomen", "chest")
# The joint each primitive rides rigidly with (capsules first, as the renderer numbers them): a
# body-model file skins each primitive's vertices to this joint alone.
PRIMITIVE_JOINTS = tuple(JOINT_INDEX[c[1]] for c in _CAPSULES) + tuple(JOINT_INDEX[e[1]] for e in _ELLIPSOIDS)
PRIMITIVE_PARTS = tuple(c[0] for c in _CAPSULES) + tuple(e[0] for e in _ELLIPSOIDS)  # names from PART_NAMES
_FOOT_RADIUS_M = 0.042
_GROUND_JOINTS = [JOINT_INDEX[name] for name in ("left_ankle", "right_ankle", "left_foot", "right_foot")]
_SKIN_TONES = (
    (0.98, 0.84, 0.72), (0.94, 0.75, 0.6), (0.82, 0.62, 0.47),
    (0.67, 0.47, 0.33), (0.48, 0.32, 0.22), (0.33, 0.22, 0.15),
)  # fmt: skip
_HAIR_COLORS = (
    (0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.45, 0.3, 0.15), (0.8, 0.65, 0.4), (0.55, 0.25, 0.1), (0.6, 0.6, 0.6),
)  # fmt: skip
_PLAIN, _STRIPES, _CHECKS = (False, False, False), (False, True, False), (True, True, True)


@dataclass(frozen=True)
class Person:
    subject: str
    shape: BodyShape
    motion: Motion
    clothing: Checker  # per part


@dataclass(frozen=True)
class Frame:
    camera: int
    time: int
    K: torch.Tensor  # (3, 3) of the crop
    R: torch.Tensor  # (3, 3) world -> camera
    t: torch.Tensor  # (3,)
    joints_2d_px: torch.Tensor  # (J, 2) crop pixels: the 24 body joints (or a hand's keypoints)
    joints_3d_m: torch.Tensor  # (J, 3) camera coordinates
    bbox_px: tuple[int, int, int, int]  # x, y, w, h of the person mask
    rendering: Rendering
    body: BodyModelParameters  # camera frame: poses a generated model file onto this frame
    scene: Scene  # what was rendered, for ray queries (occlusion) and surface coordinates


@dataclass(frozen=True)
class Group:
    subject: str
    frames: list[Frame]  # time-major: all cameras at time 0, then time 1, ...


def _random_color(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> list[float]:
    return list(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))


def _jitter(rng: np.random.Generator, palette: tuple[tuple[float, float, float], ...]) -> list[float]:
    base = np.asarray(palette[rng.integers(len(palette))])
    return list(np.clip(base + rng.uniform(-0.04, 0.04, size=3), 0, 1))


def sample_clothing(rng: np.random.Generator) -> Checker:
    """Skin, hair, a patterned shirt, trousers or shorts, shoes: parts differ so that a model
    completing a masked crop has to know which body part sits where."""
    skin, hair = _jitter(rng, _SKIN_TONES), _jitter(rng, _HAIR_COLORS)
    shirt_a, shirt_b = _random_color(rng, (0.2, 0.9), (0.3, 0.95)), _random_color(rng, (0.0, 0.9), (0.2, 1.0))
    shirt_axes = [_PLAIN, _STRIPES, _CHECKS][rng.choice(3, p=[0.2, 0.45, 0.35])]
    shirt_period_m = rng.uniform(0.025, 0.07)
    trousers = _random_color(rng, (0.1, 0.8), (0.15, 0.7))
    shoes = _random_color(rng, (0.0, 0.6), (0.05, 0.5))
    long_sleeves, shorts = rng.uniform() < 0.5, rng.uniform() < 0.3
    material = {
        "skin": (skin, skin, _PLAIN),
        "hair": (hair, hair, _PLAIN),
        "shirt": (shirt_a, shirt_b, shirt_axes),
        "trousers": (trousers, trousers, _PLAIN),
        "shoes": (shoes, shoes, _PLAIN),
    }
    dressing = {
        "pelvis": "trousers", "abdomen": "shirt", "chest": "shirt", "neck": "skin", "head": "skin", "hair": "hair",
    }  # fmt: skip
    for side in ("left", "right"):
        dressing[f"{side}_upper_arm"] = "shirt"
        dressing[f"{side}_forearm"] = "shirt" if long_sleeves else "skin"
        dressing[f"{side}_hand"] = "skin"
        dressing[f"{side}_thigh"] = "trousers"
        dressing[f"{side}_calf"] = "skin" if shorts else "trousers"
        dressing[f"{side}_foot"] = "shoes"
    parts = ["skin", *(dressing[name] for name in PART_NAMES)]  # entry 0, background, is never looked up
    return Checker(
        color_a=torch.tensor([material[m][0] for m in parts], dtype=torch.float32),
        color_b=torch.tensor([material[m][1] for m in parts], dtype=torch.float32),
        axes=torch.tensor([material[m][2] for m in parts]),
        period_m=torch.tensor([shirt_period_m] * len(parts), dtype=torch.float32),
    )


def skin_clothing(rng: np.random.Generator, parts: int) -> Checker:
    """One plain skin tone on every part (1..`parts`): a bare hand."""
    skin = torch.tensor(_jitter(rng, _SKIN_TONES), dtype=torch.float32).expand(parts + 1, 3)
    return Checker(
        color_a=skin,
        color_b=skin,
        axes=torch.zeros(parts + 1, 3, dtype=torch.bool),
        period_m=torch.ones(parts + 1),
    )


def sample_person(rng: np.random.Generator, subject: str, times: int) -> Person:
    return Person(subject, BodyShape.sample(rng), Motion.sample(rng, times), sample_clothing(rng))


def posed_joints(shape: BodyShape, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World joints (T, 24, 3) and rotations (T, 24, 3, 3) of axis-angle poses (T, 24, 3), the
    lowest foot resting on the floor."""
    joints, rotations = forward_kinematics(pose, rest_offsets(shape))
    ground_m = joints[:, _GROUND_JOINTS, 1].amin(dim=1)
    lift_m = _FOOT_RADIUS_M * shape.height_scale - ground_m
    return joints + torch.stack([torch.zeros_like(lift_m), lift_m, torch.zeros_like(lift_m)], -1)[:, None], rotations


def body_primitives(shape: BodyShape, joints_m: torch.Tensor, rotations: torch.Tensor) -> tuple[Capsules, Ellipsoids]:
    """Capsules on limb bones and ellipsoids on torso and head, for one posed body (24, 3)."""
    start = [JOINT_INDEX[c[1]] for c in _CAPSULES]
    end = [JOINT_INDEX[c[2]] for c in _CAPSULES]
    radius = [r * (shape.girth if grows else 1.0) for _, _, _, r, grows in _CAPSULES]
    capsules = Capsules(
        start_m=joints_m[start],
        end_m=joints_m[end],
        radius_m=torch.tensor(radius) * shape.height_scale,
        frame=rotations[start],
        part=torch.tensor([PART_INDEX[c[0]] for c in _CAPSULES]),
    )
    joint = [JOINT_INDEX[e[1]] for e in _ELLIPSOIDS]
    offset_m = torch.tensor([e[2] for e in _ELLIPSOIDS]) * shape.height_scale
    girth = torch.tensor([[shape.girth, 1.0, shape.girth] if e[0] in _TORSO else [1.0] * 3 for e in _ELLIPSOIDS])
    ellipsoids = Ellipsoids(
        center_m=joints_m[joint] + torch.einsum("nij,nj->ni", rotations[joint], offset_m),
        rotation=rotations[joint],
        radii_m=torch.tensor([e[3] for e in _ELLIPSOIDS]) * girth * shape.height_scale,
        part=torch.tensor([PART_INDEX[e[0]] for e in _ELLIPSOIDS]),
    )
    return capsules, ellipsoids


def sample_environment(rng: np.random.Generator) -> dict:
    """Floor, backdrop and light shared by all frames of a group (fields of `Scene`)."""
    floor_a = _random_color(rng, (0.0, 0.6), (0.3, 0.9))
    floor_b = list(np.asarray(floor_a) * rng.uniform(0.45, 0.8))
    wall_axes = [(True, False, False), (False, True, False), (True, True, False)][rng.integers(3)]
    elevation, azimuth = rng.uniform(0.5, 1.3), rng.uniform(0, 2 * np.pi)
    return dict(
        floor=Checker(
            color_a=torch.tensor(floor_a, dtype=torch.float32),
            color_b=torch.tensor(floor_b, dtype=torch.float32),
            axes=torch.tensor([True, False, True]),
            period_m=torch.tensor(rng.uniform(0.25, 0.8), dtype=torch.float32),
        ),
        backdrop=Checker(
            color_a=torch.tensor(_random_color(rng, (0.0, 0.8), (0.3, 1.0)), dtype=torch.float32),
            color_b=torch.tensor(_random_color(rng, (0.0, 0.8), (0.2, 1.0)), dtype=torch.float32),
            axes=torch.tensor(wall_axes),
            period_m=torch.tensor(rng.uniform(0.3, 1.5), dtype=torch.float32),
        ),
        backdrop_radius_m=float(rng.uniform(5.5, 8.0)),
        backdrop_height_m=float(rng.uniform(2.5, 4.5)),
        sky_color=torch.tensor(_random_color(rng, (0.0, 0.3), (0.7, 1.0)), dtype=torch.float32),
        light_direction=torch.tensor(
            [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)],
            dtype=torch.float32,
        ),
        ambient=float(rng.uniform(0.25, 0.5)),
    )


def look_at(position_m: torch.Tensor, target_m: torch.Tensor, roll_rad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV world->camera (R, t) for a camera at `position_m` looking at `target_m`, world y up."""
    forward = torch.nn.functional.normalize(target_m - position_m, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    down = torch.linalg.cross(forward, right)
    cos, sin = float(np.cos(roll_rad)), float(np.sin(roll_rad))
    roll = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    R = roll @ torch.stack([right, down, forward])
    return R, -R @ position_m


def sample_cameras(
    rng: np.random.Generator, target_m: torch.Tensor, count: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Static cameras spread around a ring (jittered azimuths), at random heights and distances."""
    base = rng.uniform(0, 2 * np.pi)
    spacing = 2 * np.pi / count
    cameras = []
    for camera in range(count):
        azimuth = base + spacing * (camera + rng.uniform(-0.35, 0.35))
        distance_m, height_m = rng.uniform(2.5, 4.0), rng.uniform(0.6, 2.2)
        position = torch.tensor(
            [target_m[0] + distance_m * np.sin(azimuth), height_m, target_m[2] + distance_m * np.cos(azimuth)],
            dtype=torch.float32,
        )
        cameras.append(look_at(position, target_m, roll_rad=rng.uniform(-0.06, 0.06)))
    return cameras


def crop_intrinsics(
    points_cam_m: torch.Tensor, radius_m: torch.Tensor, image_size: int, rng: np.random.Generator
) -> torch.Tensor:
    """Intrinsics (3, 3) of a square crop holding spheres (points, radii) in camera coordinates,
    with a random margin and a small random shift so the person is not always dead centre."""
    depth_m = points_cam_m[:, 2]
    normalized = points_cam_m[:, :2] / depth_m[:, None]
    extent = (radius_m / depth_m)[:, None]
    low, high = (normalized - extent).amin(0), (normalized + extent).amax(0)
    side = float((high - low).max()) * rng.uniform(1.1, 1.3)
    centre = (low + high) / 2 + torch.tensor(rng.uniform(-0.04, 0.04, size=2) * side, dtype=torch.float32)
    focal_px = image_size / side
    principal_px = -0.5 - focal_px * (centre - side / 2)  # crop edge lands on the first pixel's edge
    return torch.tensor(
        [[focal_px, 0.0, float(principal_px[0])], [0.0, focal_px, float(principal_px[1])], [0.0, 0.0, 1.0]]
    )


def mask_bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Tight [x, y, w, h] of a boolean mask, zeros when empty."""
    rows, cols = torch.nonzero(mask.any(1)), torch.nonzero(mask.any(0))
    if len(rows) == 0:
        return (0, 0, 0, 0)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def film(scene: Scene, R: torch.Tensor, t: torch.Tensor, joints_m: torch.Tensor, body: BodyModelParameters,
         image_size: int, rng: np.random.Generator, camera: int = 0, time: int = 0) -> Frame:
    """One camera's view of a posed scene: a crop framing its primitives, the rendering, and the world
    joints ``joints_m`` (J, 3) in that camera and crop; ``body`` is the model parameters in that camera."""
    capsules, ellipsoids = scene.capsules, scene.ellipsoids
    points_m = torch.cat([capsules.start_m, capsules.end_m, ellipsoids.center_m])
    radii_m = torch.cat([capsules.radius_m, capsules.radius_m, ellipsoids.radii_m.amax(1)])
    K = crop_intrinsics(points_m @ R.T + t, radii_m, image_size, rng)
    rendering = render(scene, K, R, t, image_size)
    joints_cam_m = joints_m @ R.T + t
    projected = joints_cam_m @ K.T
    return Frame(camera=camera, time=time, K=K, R=R, t=t, joints_2d_px=projected[:, :2] / projected[:, 2:],
                 joints_3d_m=joints_cam_m, bbox_px=mask_bbox(rendering.mask), rendering=rendering, body=body,
                 scene=scene)


def group_rng(seed: int, index: int) -> np.random.Generator:
    """A group's random stream depends only on (seed, index): any split of the work over
    processes produces the same data."""
    return np.random.default_rng([seed, index])


def render_group(seed: int, index: int, image_size: int, cameras: int, times: int) -> Group:
    """Render all `cameras` x `times` frames of group `index`."""
    rng = group_rng(seed, index)
    person = sample_person(rng, subject=f"synth-{seed}-{index:07d}", times=times)
    environment = sample_environment(rng)
    pose = person.motion.pose(torch.arange(times))
    joints_m, rotations = posed_joints(person.shape, pose)
    betas = person.shape.betas()
    rig = sample_cameras(rng, joints_m[:, 0].mean(0), cameras)
    frames = []
    for time in range(times):
        capsules, ellipsoids = body_primitives(person.shape, joints_m[time], rotations[time])
        scene = Scene(capsules=capsules, ellipsoids=ellipsoids, clothing=person.clothing, **environment)
        for camera, (R, t) in enumerate(rig):
            body = camera_parameters(pose[time], rotations[time, 0], joints_m[time, 0], betas, R, t)
            frames.append(film(scene, R, t, joints_m[time], body, image_size, rng, camera, time))
    return Group(subject=person.subject, frames=frames)
