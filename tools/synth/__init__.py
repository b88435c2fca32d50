"""Procedural synthetic world of articulated people rendered into pair shards."""

from tools.synth.render import Rendering, Scene, render
from tools.synth.shards import encode_group, write_pair_shards
from tools.synth.skeleton import JOINT_NAMES, PARENTS, BodyShape, Motion, forward_kinematics
from tools.synth.world import PART_NAMES, Frame, Group, render_group

__all__ = [
    "JOINT_NAMES",
    "PARENTS",
    "PART_NAMES",
    "BodyShape",
    "Frame",
    "Group",
    "Motion",
    "Rendering",
    "Scene",
    "encode_group",
    "forward_kinematics",
    "render",
    "render_group",
    "write_pair_shards",
]
