"""A 24-joint body in the SMPL joint layout, its shape, forward kinematics and procedural motion.

The joint names and parent tree are SMPL's, so joints written by the synthetic world line up with
real SMPL labels. The rest pose is not SMPL's T-pose but an A-pose with the arms hanging: our
motion then stays in moderate angles where summing per-axis angles into one axis-angle vector
still gives the intended movement. Body frame: x to the person's left, y up, z forward, metres.

Shapes map to SMPL-style `betas`: coordinates in which every rest joint and every point of the
body's primitives moves linearly, so a generated body-model file (`bodymodel.py`) reproduces any
synthetic person exactly through smplx's linear shape blend.
"""

from dataclasses import dataclass

import numpy as np
import torch

from body.layouts import NUM_BETAS, SMPL_JOINT_NAMES, SMPL_PARENTS
from body.rotations import axis_angle_to_matrix, matrix_to_axis_angle

JOINT_INDEX = {name: index for index, name in enumerate(SMPL_JOINT_NAMES)}

# Offset of each joint from its parent in the rest pose of a 1.72 m adult.
_REST_OFFSETS_M = torch.tensor([
    [0.0, 0.0, 0.0],                                   # pelvis (root)
    [0.085, -0.08, 0.0], [-0.085, -0.08, 0.0],         # hips
    [0.0, 0.11, -0.01],                                # spine1
    [0.005, -0.40, 0.01], [-0.005, -0.40, 0.01],       # knees
    [0.0, 0.13, 0.01],                                 # spine2
    [0.0, -0.41, -0.03], [0.0, -0.41, -0.03],          # ankles
    [0.0, 0.06, 0.01],                                 # spine3
    [0.01, -0.05, 0.13], [-0.01, -0.05, 0.13],         # feet (ball of the foot)
    [0.0, 0.21, -0.02],                                # neck
    [0.07, 0.12, -0.01], [-0.07, 0.12, -0.01],         # collars
    [0.0, 0.08, 0.04],                                 # head
    [0.11, 0.03, -0.01], [-0.11, 0.03, -0.01],         # shoulders
    [0.04, -0.27, -0.01], [-0.04, -0.27, -0.01],       # elbows
    [0.01, -0.25, 0.01], [-0.01, -0.25, 0.01],         # wrists
    [0.0, -0.08, 0.0], [0.0, -0.08, 0.0],              # hands (knuckles)
])  # fmt: skip
_LEG_JOINTS = [JOINT_INDEX[f"{side}_{part}"] for part in ("knee", "ankle") for side in ("left", "right")]
_ARM_JOINTS = [JOINT_INDEX[f"{side}_{part}"] for part in ("elbow", "wrist", "hand") for side in ("left", "right")]
_WIDTH_JOINTS = [JOINT_INDEX[f"{side}_{part}"] for part in ("hip", "collar", "shoulder") for side in ("left", "right")]

# Per-joint, per-axis rotation limits (radians) in the parent-relative frame. Signs follow the
# body frame: negative x swings a leg or arm forward, positive x bends a knee, positive z lifts
# the left arm sideways.
_LIMITS_RAD = {
    "pelvis": ([-np.inf] * 3, [np.inf] * 3),
    "left_hip": ([-1.6, -0.6, -0.3], [0.8, 0.6, 1.0]),
    "right_hip": ([-1.6, -0.6, -1.0], [0.8, 0.6, 0.3]),
    "left_knee": ([0.0, -0.1, -0.1], [2.4, 0.1, 0.1]),
    "right_knee": ([0.0, -0.1, -0.1], [2.4, 0.1, 0.1]),
    "left_shoulder": ([-2.8, -1.2, -0.5], [1.0, 1.2, 2.8]),
    "right_shoulder": ([-2.8, -1.2, -2.8], [1.0, 1.2, 0.5]),
    "left_elbow": ([-2.5, -1.0, 0.0], [0.0, 1.0, 2.4]),
    "right_elbow": ([-2.5, -1.0, -2.4], [0.0, 1.0, 0.0]),
    "neck": ([-0.6, -0.9, -0.5], [0.6, 0.9, 0.5]),
    "head": ([-0.5, -0.6, -0.4], [0.5, 0.6, 0.4]),
}
_DEFAULT_LIMIT_RAD = 0.5


def _limit_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.full((len(SMPL_JOINT_NAMES), 3), -_DEFAULT_LIMIT_RAD)
    high = torch.full((len(SMPL_JOINT_NAMES), 3), _DEFAULT_LIMIT_RAD)
    for name, (joint_low, joint_high) in _LIMITS_RAD.items():
        low[JOINT_INDEX[name]] = torch.tensor(joint_low)
        high[JOINT_INDEX[name]] = torch.tensor(joint_high)
    return low, high


JOINT_LOW_RAD, JOINT_HIGH_RAD = _limit_tensors()


BETA_STEP = 0.1  # one unit of a beta is 10 % of the reference size along that feature


def padded_betas(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`NUM_BETAS` coefficients (zero for the reference shape) from shape features that the
    geometry is linear in; unused trailing coefficients stay zero."""
    betas = torch.zeros(NUM_BETAS)
    betas[: len(features)] = (features - reference) / BETA_STEP
    return betas


@dataclass(frozen=True)
class BodyShape:
    """A few proportions that make people look different without a learned shape space."""

    height_scale: float
    leg_scale: float
    arm_scale: float
    girth: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "BodyShape":
        return cls(
            height_scale=float(rng.uniform(0.85, 1.1)),
            leg_scale=float(rng.uniform(0.92, 1.08)),
            arm_scale=float(rng.uniform(0.92, 1.08)),
            girth=float(rng.uniform(0.8, 1.35)),
        )

    def betas(self) -> torch.Tensor:
        """(NUM_BETAS,): height, then leg length, arm length, shoulder/hip width and girth, each
        multiplied by the height scale. Joint offsets scale as height x (1, leg, arm, sqrt(girth))
        and radii as height x (1, girth), so these products are exactly the coordinates the rest
        body is linear in; zero is the 1.72 m reference adult."""
        h = self.height_scale
        features = torch.tensor(
            [h, h * (self.leg_scale - 1), h * (self.arm_scale - 1), h * (self.girth**0.5 - 1), h * (self.girth - 1)]
        )
        return padded_betas(features, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))


def rest_offsets(shape: BodyShape) -> torch.Tensor:
    """Parent-relative joint offsets (24, 3) in metres for this body shape."""
    offsets = _REST_OFFSETS_M.clone()
    offsets[_LEG_JOINTS] *= shape.leg_scale
    offsets[_ARM_JOINTS] *= shape.arm_scale
    offsets[_WIDTH_JOINTS, 0] *= shape.girth**0.5
    return offsets * shape.height_scale


def forward_kinematics(
    axis_angle: torch.Tensor, offsets_m: torch.Tensor, parents: tuple[int, ...] = SMPL_PARENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint positions (..., J, 3) and global rotations (..., J, 3, 3), root at the origin.

    `axis_angle` (..., J, 3) holds parent-relative rotations, the root one being the global
    orientation; `offsets_m` (J, 3) comes from `rest_offsets` (or the hand's); `parents` lists
    each joint's parent, parents before children.
    """
    local = axis_angle_to_matrix(axis_angle)
    rotations = [local[..., 0, :, :]]
    positions = [torch.zeros_like(axis_angle[..., 0, :])]
    for joint in range(1, len(parents)):
        parent = parents[joint]
        rotations.append(rotations[parent] @ local[..., joint, :, :])
        positions.append(positions[parent] + rotations[parent] @ offsets_m[joint])
    return torch.stack(positions, dim=-2), torch.stack(rotations, dim=-3)


@dataclass(frozen=True)
class BodyModelParameters:
    """What `smplx` needs to pose a generated model file onto a rendered frame, in the camera
    frame: `model(betas=..., global_orient=..., body_pose=... (or hand_pose=...), transl=...)`.
    The model's rest root sits at the origin, so `transl` is the root joint in camera space."""

    global_orient: torch.Tensor  # (3,) axis-angle, body (or hand) to camera
    pose: torch.Tensor  # (3 * (J - 1),) parent-relative axis-angle of the other joints
    betas: torch.Tensor  # (NUM_BETAS,)
    transl: torch.Tensor  # (3,) metres


def camera_parameters(
    pose: torch.Tensor, root_rotation: torch.Tensor, root_m: torch.Tensor, betas: torch.Tensor,
    R: torch.Tensor, t: torch.Tensor,
) -> BodyModelParameters:  # fmt: skip
    """Parameters of a world-posed skeleton (`pose` (J, 3), global root rotation and position)
    seen by a camera x_cam = R x_world + t."""
    return BodyModelParameters(
        global_orient=matrix_to_axis_angle(R @ root_rotation),
        pose=pose[1:].reshape(-1).clone(),
        betas=betas,
        transl=R @ root_m + t,
    )


@dataclass(frozen=True)
class Motion:
    """A person's procedural movement: a gait blended with arm waving, driven by one phase.

    Frames at different times sample the phase at well separated points, so cross-pose pairs
    (same camera, different time) always show different limb configurations.
    """

    walk_amount: float
    stride_rad: float
    knee_rad: float
    arm_swing_rad: float
    wave_left: bool
    wave_right: bool
    wave_lift_rad: float
    wave_elbow_rad: float
    wave_swing_rad: float
    head_turn_rad: float
    torso_twist_rad: float
    heading_rad: float
    turn_rad: float
    start_phase_rad: float
    phase_step_rad: float

    @classmethod
    def sample(cls, rng: np.random.Generator, times: int) -> "Motion":
        style = rng.choice(["walk", "wave", "walk_wave"], p=[0.4, 0.3, 0.3])
        waving = style != "walk"
        wave_side = rng.choice(["left", "right", "both"], p=[0.4, 0.4, 0.2])
        return cls(
            walk_amount=float(rng.uniform(0.7, 1.0) if style != "wave" else rng.uniform(0.0, 0.3)),
            stride_rad=float(rng.uniform(0.3, 0.65)),
            knee_rad=float(rng.uniform(0.6, 1.2)),
            arm_swing_rad=float(rng.uniform(0.2, 0.55)),
            wave_left=bool(waving and wave_side in ("left", "both")),
            wave_right=bool(waving and wave_side in ("right", "both")),
            wave_lift_rad=float(rng.uniform(1.3, 2.4)),
            wave_elbow_rad=float(rng.uniform(0.7, 1.6)),
            wave_swing_rad=float(rng.uniform(0.4, 0.8)),
            head_turn_rad=float(rng.uniform(0.0, 0.6)),
            torso_twist_rad=float(rng.uniform(0.05, 0.2)),
            heading_rad=float(rng.uniform(0.0, 2 * np.pi)),
            turn_rad=float(rng.uniform(-0.4, 0.4)),
            start_phase_rad=float(rng.uniform(0.0, 2 * np.pi)),
            phase_step_rad=float(2 * np.pi / max(times, 2) * rng.uniform(0.75, 1.0)),
        )

    def pose(self, times: torch.Tensor) -> torch.Tensor:
        """Axis-angle pose (T, 24, 3) at integer time steps `times` (T,), clamped to joint limits."""
        phase = self.start_phase_rad + self.phase_step_rad * times.to(torch.float32)
        swing, counter = torch.sin(phase), torch.sin(phase + torch.pi)
        walk = self.walk_amount
        pose = torch.zeros(len(times), len(SMPL_JOINT_NAMES), 3)
        pose[:, JOINT_INDEX["pelvis"], 1] = self.heading_rad + self.turn_rad * torch.sin(0.5 * phase)
        pose[:, JOINT_INDEX["pelvis"], 0] = 0.05 * walk
        for side, leg_swing, leg_phase in (("left", swing, phase), ("right", counter, phase + torch.pi)):
            pose[:, JOINT_INDEX[f"{side}_hip"], 0] = -walk * self.stride_rad * leg_swing
            knee_bend = (0.5 + 0.5 * torch.cos(leg_phase - 0.3)) ** 2  # most bent mid-swing
            pose[:, JOINT_INDEX[f"{side}_knee"], 0] = 0.05 + walk * self.knee_rad * knee_bend
            pose[:, JOINT_INDEX[f"{side}_ankle"], 0] = 0.2 * walk * torch.sin(leg_phase + 0.5)
        pose[:, JOINT_INDEX["spine2"], 1] = walk * self.torso_twist_rad * swing
        pose[:, JOINT_INDEX["neck"], 1] = self.head_turn_rad * torch.sin(0.5 * phase + 1.0)
        pose[:, JOINT_INDEX["head"], 0] = 0.15 * torch.sin(phase + 2.0)
        for side, sign, waving, arm_swing in (
            ("left", 1.0, self.wave_left, swing),
            ("right", -1.0, self.wave_right, counter),
        ):
            shoulder, elbow = JOINT_INDEX[f"{side}_shoulder"], JOINT_INDEX[f"{side}_elbow"]
            if waving:
                # Lift on sin, forearm on cos: two time steps less than a cycle apart never
                # share both, so a waving arm always moves between frames.
                pose[:, shoulder, 2] = sign * (self.wave_lift_rad + 0.35 * torch.sin(phase))
                pose[:, shoulder, 0] = -0.3
                pose[:, elbow, 2] = sign * (self.wave_elbow_rad + self.wave_swing_rad * torch.cos(phase))
            else:
                pose[:, shoulder, 0] = walk * self.arm_swing_rad * arm_swing
                pose[:, elbow, 0] = -(0.15 + 0.4 * walk * (0.5 - 0.5 * arm_swing))
        return pose.clamp(JOINT_LOW_RAD, JOINT_HIGH_RAD)
