"""The human-body vocabulary every part of crocoman shares: joint and keypoint names, skeleton trees,
the shape size and DensePose's parts.

Names are smplx's (``pelvis``, ``left_wrist`` ... ``index1`` ... ``thumb_tip``), so labels, model
outputs, mirror maps and converters meet by name, whatever order a dataset stores them in.
"""

from smplx.joint_names import JOINT_NAMES as SMPLX_JOINT_NAMES

# SMPL's 24 skeleton joints in its order; SMPL-X shares the first 22 and poses its hands instead.
SMPL_JOINT_NAMES = (*SMPLX_JOINT_NAMES[:22], "left_hand", "right_hand")
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# MANO's 16 joints in its order, then the fingertips smplx reads off the surface (its order).
MANO_JOINT_NAMES = (
    "wrist", "index1", "index2", "index3", "middle1", "middle2", "middle3", "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3", "thumb1", "thumb2", "thumb3",
)  # fmt: skip
FINGERTIP_NAMES = ("thumb_tip", "index_tip", "middle_tip", "ring_tip", "pinky_tip")
HAND_KEYPOINT_NAMES = MANO_JOINT_NAMES + FINGERTIP_NAMES
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
HAND_KEYPOINT_PARENTS = (*MANO_PARENTS, 15, 3, 6, 12, 9)  # each fingertip hangs off its finger's last joint


def _finger_parents(wrist: int, first: int) -> tuple[int, ...]:
    """Parents of 5 fingers x 3 joints numbered from ``first``, each finger hanging off the wrist."""
    return tuple(wrist if joint % 3 == 0 else first + joint - 1 for joint in range(15))


# SMPL-X's 55 skeleton joints: SMPL's first 22, jaw and eyes off the head, then each hand's fingers.
SMPLX_PARENTS = SMPL_PARENTS[:22] + (15, 15, 15) + _finger_parents(20, 25) + _finger_parents(21, 40)
# The joints smplx reads off the surface (face, feet, fingertips), which SMPL's layer appends too.
_SURFACE_JOINTS = SMPLX_JOINT_NAMES[55:76]
JOINT_NAMES_OF = {  # each model's output joints, as smplx orders them
    "smpl": (*SMPL_JOINT_NAMES, *_SURFACE_JOINTS),
    "smplx": tuple(SMPLX_JOINT_NAMES),
    "mano": MANO_JOINT_NAMES,
}
POSE_JOINTS = {"smpl": 23, "smplx": 21, "mano": 15}  # rotations below the root (global orientation)
POSE_NAME = {"smpl": "body_pose", "smplx": "body_pose", "mano": "hand_pose"}
# Joints posed by `body_pose` (all but the root): SMPL's 23, SMPL-X's first 21 (the same joints;
# SMPL-X poses the hands with its own finger parameters instead of SMPL's two hand joints).
BODY_POSE_JOINTS = {"smpl": SMPL_JOINT_NAMES[1:24], "smplx": SMPL_JOINT_NAMES[1:22]}
NUM_BETAS = 10  # shape coefficients used, SMPL's common setting

# DensePose's 24 body parts; part id = 1 + index, 0 is the background.
DENSEPOSE_PART_NAMES = (
    "torso_back", "torso_front", "right_hand", "left_hand", "left_foot", "right_foot",
    "upper_leg_right_back", "upper_leg_left_back", "upper_leg_right_front", "upper_leg_left_front",
    "lower_leg_right_back", "lower_leg_left_back", "lower_leg_right_front", "lower_leg_left_front",
    "upper_arm_left_back", "upper_arm_right_back", "upper_arm_left_front", "upper_arm_right_front",
    "lower_arm_left_back", "lower_arm_right_back", "lower_arm_left_front", "lower_arm_right_front",
    "head_right", "head_left",
)  # fmt: skip
NUM_PARTS = len(DENSEPOSE_PART_NAMES)
