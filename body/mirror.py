"""Left/right maps for horizontal flips: which keypoint, joint or vertex becomes which.

A flip mirrors the camera frame (x -> -x). The mirrored person is a valid person only if every
label follows: left and right keypoints trade places, each joint's axis-angle rotation is
mirrored, (x, y, z) -> (x, -y, -z), and moves to its mirror joint, and each vertex moves to its
mirror vertex. Permutations are derived from names ("left_hip" <-> "right_hip"), so a new
keypoint layout only needs its names, never a hand-written index list.
"""

import re

import torch
from torch import Tensor


_SIDE = re.compile(r"(left|right)", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def mirror_permutation(names: tuple[str, ...] | list[str]) -> list[int]:
    """``perm`` with ``mirrored[i] = flipped[perm[i]]``: each name's left/right twin (itself if it has no side)."""
    index = {name: position for position, name in enumerate(names)}
    permutation = []
    for name in names:
        twin = _SIDE.sub(lambda match: _SWAP[match.group(0)], name)
        if twin not in index:
            raise ValueError(f"keypoint {name!r} has no mirror twin {twin!r} among the names {list(names)}: add it, "
                             f"or rename so that left/right pairs differ only in 'left'/'right'")
        permutation.append(index[twin])
    return permutation


def mirror_axis_angle(axis_angle: Tensor) -> Tensor:
    """(..., 3) rotations seen in a mirror x -> -x: M R M with M = diag(-1, 1, 1) is (x, -y, -z) in axis-angle."""
    return axis_angle * axis_angle.new_tensor([1.0, -1.0, -1.0])


def mirror_pose(pose: Tensor, joint_names: tuple[str, ...]) -> Tensor:
    """A flat (3 * J,) parent-relative pose of the joints ``joint_names``, mirrored and moved to the twin joints."""
    joints = pose.reshape(len(joint_names), 3)
    return mirror_axis_angle(joints[mirror_permutation(joint_names)]).reshape(-1)


def vertex_mirror_map(template: Tensor, tolerance_m: float, chunk: int = 2048) -> Tensor:
    """(V,) long: the vertex nearest to each template vertex's mirror image (x -> -x).

    Only a left-right symmetric template has such a map, and a real SMPL/SMPL-X/MANO template is
    symmetric to well under a millimetre; a mirror vertex farther than ``tolerance_m`` means the
    template is not symmetric, and mirrored meshes would be wrong by that much, so it is an error.
    """
    mirrored = template * template.new_tensor([-1.0, 1.0, 1.0])
    nearest, distance_m = [], []
    for start in range(0, len(template), chunk):  # chunks keep the distance matrix small (10475^2 for SMPL-X)
        distance, index = torch.cdist(mirrored[start:start + chunk], template).min(dim=1)
        nearest.append(index)
        distance_m.append(distance)
    worst_m = float(torch.cat(distance_m).max())
    if worst_m > tolerance_m:
        raise ValueError(f"the body-model template is not left-right symmetric: a mirrored vertex is "
                         f"{worst_m * 1000:.1f} mm from the nearest vertex (tolerance {tolerance_m * 1000:.1f} mm); "
                         f"flipped samples would not keep exact vertices: leave `mirror_vertices_from` unset "
                         f"(flipped samples then have has.vertices False) or raise `vertex_mirror_tolerance_m`")
    return torch.cat(nearest)
