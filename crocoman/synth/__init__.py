"""Procedural synthetic world of articulated people (and hands) rendered into pair shards,
labelled shards and smplx-loadable body-model files."""

from crocoman.synth.bodymodel import write_body_models
from crocoman.synth.hand import GESTURE_NAMES, HAND_KEYPOINT_NAMES, HandShape, render_hand, render_hand_group
from crocoman.synth.labelled import encode_labelled, write_labelled_shards
from crocoman.synth.render import Rendering, Scene, render
from crocoman.synth.shards import encode_group, write_pair_shards
from crocoman.synth.skeleton import BodyModelParameters, BodyShape, Motion, forward_kinematics
from crocoman.synth.world import PART_NAMES, Frame, Group, render_group

__all__ = [
    "GESTURE_NAMES",
    "HAND_KEYPOINT_NAMES",
    "PART_NAMES",
    "BodyModelParameters",
    "BodyShape",
    "Frame",
    "Group",
    "HandShape",
    "Motion",
    "Rendering",
    "Scene",
    "encode_group",
    "encode_labelled",
    "forward_kinematics",
    "render",
    "render_group",
    "render_hand",
    "render_hand_group",
    "write_body_models",
    "write_labelled_shards",
    "write_pair_shards",
]
