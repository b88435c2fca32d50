"""A 16-joint right hand in MANO's joint order, its shape, named gestures and a renderer for it.

Joints and parents are MANO's (wrist, then index, middle, pinky, ring, thumb, three joints each),
so a generated MANO file (`bodymodel.py`) poses exactly like this hand; five fingertips follow as
leaf nodes, giving the usual 21 hand keypoints. Hand frame: x along the fingers, y out of the back
of the hand (the palm faces -y), z towards the little finger, metres; the rest pose is flat.
"""

from dataclasses import dataclass

import numpy as np
import torch

from body.layouts import FINGERTIP_NAMES, HAND_KEYPOINT_NAMES, HAND_KEYPOINT_PARENTS, MANO_JOINT_NAMES
from body.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from crocoman.synth.render import Capsules, Checker, Ellipsoids, Scene
from crocoman.synth.skeleton import camera_parameters, forward_kinematics, padded_betas
from crocoman.synth.world import (
    Frame,
    Group,
    film,
    group_rng,
    look_at,
    sample_environment,
    skin_clothing,
)

NUM_HAND_JOINTS = len(MANO_JOINT_NAMES)  # the generated MANO file poses the joints, not the tips
_INDEX = {name: index for index, name in enumerate(HAND_KEYPOINT_NAMES)}

# Offset of each keypoint from its parent in the flat rest pose of an adult right hand.
_REST_OFFSETS_M = torch.tensor([
    [0.0, 0.0, 0.0],                                                    # wrist (root)
    [0.088, 0.0, -0.022], [0.040, 0.0, -0.002], [0.024, 0.0, -0.001],   # index
    [0.090, 0.0, -0.003], [0.044, 0.0, 0.0], [0.027, 0.0, 0.0],         # middle
    [0.077, 0.0, 0.033], [0.032, 0.0, 0.004], [0.019, 0.0, 0.002],     # pinky
    [0.085, 0.0, 0.016], [0.041, 0.0, 0.002], [0.026, 0.0, 0.001],     # ring
    [0.022, -0.012, -0.022], [0.034, -0.006, -0.026], [0.030, 0.0, -0.014],  # thumb
    [0.025, 0.0, -0.008], [0.021, 0.0, 0.0], [0.022, 0.0, 0.0], [0.021, 0.0, 0.0], [0.018, 0.0, 0.0],  # tips
])  # fmt: skip
# Keypoints whose offset is a finger segment (lengths scale with finger_scale); the others hang
# off the wrist and span the palm.
_FINGER_SEGMENTS = [index for index, parent in enumerate(HAND_KEYPOINT_PARENTS) if parent > 0]
_FINGER_RADIUS_M = {"index": 0.0085, "middle": 0.0088, "ring": 0.0082, "pinky": 0.0072, "thumb": 0.011}
_TAPER = (1.0, 0.92, 0.85)  # radius factor of the proximal, middle and distal segment
_CHILD = {parent: child for child, parent in enumerate(HAND_KEYPOINT_PARENTS) if parent > 0}
# Palm: an ellipsoid riding the wrist, centre and semi-axes (its thickness, y, grows with girth).
_PALM_CENTRE_M, _PALM_RADII_M = (0.048, -0.002, 0.006), (0.052, 0.016, 0.044)
# The joint each primitive rides: 15 finger-segment capsules (joint -> child), then the palm.
HAND_PRIMITIVE_JOINTS = tuple(range(1, NUM_HAND_JOINTS)) + (0,)


@dataclass(frozen=True)
class HandShape:
    """Hand size, finger length and girth: enough to make hands differ."""

    scale: float
    finger_scale: float
    girth: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "HandShape":
        return cls(
            scale=float(rng.uniform(0.85, 1.15)),
            finger_scale=float(rng.uniform(0.9, 1.1)),
            girth=float(rng.uniform(0.85, 1.2)),
        )

    def betas(self) -> torch.Tensor:
        """(NUM_BETAS,): size, then finger length and girth times size, the coordinates the rest
        hand is linear in (offsets scale as size x (1, finger), radii as size x (1, girth))."""
        s = self.scale
        features = torch.tensor([s, s * (self.finger_scale - 1), s * (self.girth - 1)])
        return padded_betas(features, torch.tensor([1.0, 0.0, 0.0]))


def hand_rest_offsets(shape: HandShape) -> torch.Tensor:
    """Parent-relative keypoint offsets (21, 3) in metres for this hand shape."""
    offsets = _REST_OFFSETS_M.clone()
    offsets[_FINGER_SEGMENTS] *= shape.finger_scale
    return offsets * shape.scale


def hand_primitives(
    shape: HandShape, keypoints_m: torch.Tensor, rotations: torch.Tensor
) -> tuple[Capsules, Ellipsoids]:
    """A capsule per finger segment and an ellipsoid palm, for one posed hand (21, 3); every
    primitive has its own part id (1..16, joint + 1) so parts stay tellable apart."""
    start = list(HAND_PRIMITIVE_JOINTS[:-1])
    radius = [
        _FINGER_RADIUS_M[MANO_JOINT_NAMES[joint][:-1]] * _TAPER[(joint - 1) % 3] for joint in start
    ]
    capsules = Capsules(
        start_m=keypoints_m[start],
        end_m=keypoints_m[[_CHILD[joint] for joint in start]],
        radius_m=torch.tensor(radius) * shape.girth * shape.scale,
        frame=rotations[start],
        part=torch.tensor(start) + 1,
    )
    radii = torch.tensor(_PALM_RADII_M) * torch.tensor([1.0, shape.girth, 1.0]) * shape.scale
    ellipsoids = Ellipsoids(
        center_m=keypoints_m[:1] + rotations[0] @ torch.tensor(_PALM_CENTRE_M) * shape.scale,
        rotation=rotations[:1],
        radii_m=radii[None],
        part=torch.tensor([1]),
    )
    return capsules, ellipsoids


@dataclass(frozen=True)
class Gesture:
    """Finger curls in [0, 1] (0 straight, 1 fully bent), how far the fingers fan out, and the
    thumb: its curl and its opposition (swinging under the palm)."""

    name: str
    index: float
    middle: float
    ring: float
    pinky: float
    spread: float
    thumb_curl: float
    thumb_opposition: float


GESTURES = (
    Gesture("fist", 1.0, 1.0, 1.0, 1.0, spread=0.0, thumb_curl=0.8, thumb_opposition=0.7),
    Gesture("open_palm", 0.0, 0.0, 0.0, 0.0, spread=1.0, thumb_curl=0.0, thumb_opposition=0.0),
    Gesture("point", 0.0, 1.0, 1.0, 1.0, spread=0.2, thumb_curl=0.8, thumb_opposition=0.7),
    Gesture("peace", 0.0, 0.0, 1.0, 1.0, spread=1.0, thumb_curl=0.8, thumb_opposition=0.7),
    Gesture("thumbs_up", 1.0, 1.0, 1.0, 1.0, spread=0.0, thumb_curl=0.0, thumb_opposition=0.0),
    Gesture("ok", 0.6, 0.0, 0.0, 0.0, spread=0.4, thumb_curl=0.4, thumb_opposition=0.6),
    Gesture("call", 1.0, 1.0, 1.0, 0.0, spread=0.6, thumb_curl=0.0, thumb_opposition=0.0),
    Gesture("rock", 0.0, 1.0, 1.0, 0.0, spread=0.5, thumb_curl=0.8, thumb_opposition=0.7),
)
GESTURE_NAMES = tuple(gesture.name for gesture in GESTURES)

# Bending angles (radians) of a fully curled finger at its three joints, and how far each finger
# fans out at full spread (positive towards the thumb).
_CURL_RAD = (1.45, 1.7, 1.1)
_SPREAD_RAD = {"index": 0.18, "middle": 0.02, "ring": -0.12, "pinky": -0.25}
# A positive turn about direction x palm_normal bends a segment pointing along `direction` towards
# the palm side (-y): -z for the fingers (along x); for the thumb, across its own direction.
_PALM_NORMAL = torch.tensor([0.0, -1.0, 0.0])
_FLEX_AXIS = torch.linalg.cross(torch.tensor([1.0, 0.0, 0.0]), _PALM_NORMAL)
_THUMB_FLEX_AXIS = torch.nn.functional.normalize(
    torch.linalg.cross(_REST_OFFSETS_M[_INDEX["thumb2"]], _PALM_NORMAL), dim=0
)
_CURL_NOISE, _ANGLE_NOISE_RAD = 0.07, 0.04


def gesture_pose(gesture: Gesture, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Parent-relative axis-angle pose (16, 3) of the fingers, wrist rotation zero; with `rng`,
    curls and every angle are jittered so no two samples of a gesture are alike."""
    def jitter(value: float) -> float:
        return float(np.clip(value + rng.normal(0, _CURL_NOISE), 0, 1)) if rng is not None else value

    pose = torch.zeros(NUM_HAND_JOINTS, 3)
    spread = jitter(gesture.spread)
    for finger in ("index", "middle", "ring", "pinky"):
        curl = jitter(getattr(gesture, finger))
        for segment in range(3):
            pose[_INDEX[f"{finger}{segment + 1}"]] = _FLEX_AXIS * _CURL_RAD[segment] * curl
        pose[_INDEX[f"{finger}1"], 1] = _SPREAD_RAD[finger] * spread
    opposition, thumb_curl = jitter(gesture.thumb_opposition), jitter(gesture.thumb_curl)
    pose[_INDEX["thumb1"]] = torch.tensor([-0.5, -0.9, 0.0]) * opposition
    pose[_INDEX["thumb2"]] = _THUMB_FLEX_AXIS * 0.9 * thumb_curl
    pose[_INDEX["thumb3"]] = _THUMB_FLEX_AXIS * 1.1 * thumb_curl
    if rng is not None:
        pose[1:] += torch.tensor(rng.normal(0, _ANGLE_NOISE_RAD, size=(NUM_HAND_JOINTS - 1, 3)), dtype=torch.float32)
    return pose


# A hand shown to a camera (OpenCV axes: x right, y down, z forward): fingers up (hand x -> -y),
# palm towards the lens (the back, hand y, faces away: +z), so the little finger side (z) is at -x.
_PRESENTED = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_BACK_TO_CAMERA = axis_angle_to_matrix(torch.tensor([np.pi, 0.0, 0.0]))  # half a turn about the fingers
_TILT_RAD, _ROLL_RAD = 0.8, 0.7


def presented_orientation(rng: np.random.Generator, R: torch.Tensor) -> torch.Tensor:
    """Axis-angle (3,) world orientation of a hand held up to the camera whose world->camera rotation
    is ``R``: palm or back towards it (even odds), fingers up, tilted out of the image plane by up
    to 0.8 rad about a random axis and turned in it by up to 0.7 rad. Gestures are shown this way
    (gesture datasets are), and uniformly random orientations leave many of them unreadable
    (edge-on, fingers hidden behind the palm)."""
    in_camera = _PRESENTED @ _BACK_TO_CAMERA if rng.random() < 0.5 else _PRESENTED
    axis = rng.normal(size=3)
    tilt = axis_angle_to_matrix(torch.tensor(axis / np.linalg.norm(axis) * rng.uniform(0, _TILT_RAD),
                                             dtype=torch.float32))
    roll = axis_angle_to_matrix(torch.tensor([0.0, 0.0, rng.uniform(-_ROLL_RAD, _ROLL_RAD)], dtype=torch.float32))
    return matrix_to_axis_angle(R.T @ roll @ tilt @ in_camera)


@dataclass(frozen=True)
class HandSample:
    subject: str
    gesture: int  # index into GESTURES
    frame: Frame  # keypoints are the 21 of HAND_KEYPOINT_NAMES; `body.pose` is MANO's hand_pose


_WRIST_WORLD_M = (0.0, 1.3, 0.0)  # hands float at chest height, clear of floor and backdrop


def _camera_direction(rng: np.random.Generator) -> torch.Tensor:
    """Unit vector from the hand to a camera: any azimuth, from slightly below to well above."""
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 1.0)
    return torch.tensor(
        [np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)],
        dtype=torch.float32,
    )


@dataclass(frozen=True)
class _PosedHand:
    pose: torch.Tensor  # (16, 3) axis-angle, world orientation first
    keypoints_m: torch.Tensor  # (21, 3) world
    rotations: torch.Tensor  # (21, 3, 3) world
    scene: Scene


def _posed_hand(shape: HandShape, pose: torch.Tensor, clothing: Checker, environment: dict) -> _PosedHand:
    keypoints_m, rotations = forward_kinematics(
        torch.cat([pose, torch.zeros(len(FINGERTIP_NAMES), 3)]), hand_rest_offsets(shape), HAND_KEYPOINT_PARENTS
    )
    keypoints_m = keypoints_m + torch.tensor(_WRIST_WORLD_M)
    capsules, ellipsoids = hand_primitives(shape, keypoints_m, rotations)
    scene = Scene(capsules=capsules, ellipsoids=ellipsoids, clothing=clothing, **environment)
    return _PosedHand(pose, keypoints_m, rotations, scene)


def _hand_frame(hand: _PosedHand, shape: HandShape, R: torch.Tensor, t: torch.Tensor, image_size: int,
                rng: np.random.Generator, camera: int = 0, time: int = 0) -> Frame:
    """Render one view of a posed hand, cropped around it, with its labels in that camera."""
    body = camera_parameters(hand.pose, hand.rotations[0], hand.keypoints_m[0], shape.betas(), R, t)
    return film(hand.scene, R, t, hand.keypoints_m, body, image_size, rng, camera, time)


def render_hand(seed: int, index: int, image_size: int) -> HandSample:
    """Render hand sample `index`: a random hand in gesture `index mod len(GESTURES)` (so classes
    stay balanced), held up to a camera 35-60 cm away (`presented_orientation`), cropped around it."""
    rng = group_rng(seed, index)
    shape = HandShape.sample(rng)
    gesture = index % len(GESTURES)
    direction = _camera_direction(rng)
    distance_m, roll_rad = rng.uniform(0.35, 0.6), rng.uniform(-0.3, 0.3)
    R, _ = look_at(direction, torch.zeros(3), roll_rad)  # the camera's rotation, before the hand is placed
    pose = gesture_pose(GESTURES[gesture], rng)
    pose[0] = presented_orientation(rng, R)
    hand = _posed_hand(shape, pose, skin_clothing(rng, NUM_HAND_JOINTS), sample_environment(rng))
    target_m = hand.scene.ellipsoids.center_m[0]
    R, t = look_at(target_m + distance_m * direction, target_m, roll_rad)
    frame = _hand_frame(hand, shape, R, t, image_size, rng)
    return HandSample(subject=f"synth-hand-{seed}-{index:07d}", gesture=gesture, frame=frame)


_WRIST_DRIFT_RAD, _VIEW_SPREAD_RAD = 0.15, (0.35, 1.0)


def render_hand_group(seed: int, index: int, image_size: int, cameras: int, times: int) -> Group:
    """Render the `cameras` x `times` frames of hand group `index` for pair shards (time-major, as
    `world.render_group`): one hand moving from one gesture to another over the time steps (the
    wrist drifting a little), filmed by static cameras around the side it is shown to; camera 0
    faces it (`presented_orientation`), the others are swung 0.35-1 rad away from it, either way
    round. Cross-view pairs then see the same fingers from two sides, cross-pose pairs watch them move."""
    rng = group_rng(seed, index)
    shape = HandShape.sample(rng)
    clothing, environment = skin_clothing(rng, NUM_HAND_JOINTS), sample_environment(rng)
    main = _camera_direction(rng)
    roll_rad = rng.uniform(-0.3, 0.3)
    orientation = axis_angle_to_matrix(presented_orientation(rng, look_at(main, torch.zeros(3), roll_rad)[0]))
    first, last = (gesture_pose(GESTURES[g], rng) for g in rng.integers(len(GESTURES), size=2))
    hands = []
    for time in range(times):
        pose = torch.lerp(first, last, time / max(1, times - 1))
        drift = torch.tensor(rng.normal(0, _WRIST_DRIFT_RAD, size=3), dtype=torch.float32)
        pose[0] = matrix_to_axis_angle(axis_angle_to_matrix(drift) @ orientation)
        hands.append(_posed_hand(shape, pose, clothing, environment))
    target_m = torch.stack([hand.scene.ellipsoids.center_m[0] for hand in hands]).mean(0)
    up = torch.tensor([0.0, 1.0, 0.0])
    rig = []
    for camera in range(cameras):
        swing = 0.0 if camera == 0 else rng.choice([-1, 1]) * rng.uniform(*_VIEW_SPREAD_RAD)
        direction = axis_angle_to_matrix(up * float(swing)) @ main
        rig.append(look_at(target_m + rng.uniform(0.35, 0.6) * direction, target_m,
                           roll_rad if camera == 0 else rng.uniform(-0.3, 0.3)))
    frames = [_hand_frame(hand, shape, R, t, image_size, rng, camera, time)
              for time, hand in enumerate(hands) for camera, (R, t) in enumerate(rig)]
    return Group(subject=f"synth-hand-{seed}-{index:07d}", frames=frames)
