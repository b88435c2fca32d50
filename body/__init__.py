"""The ground floor: the human body as every other package speaks of it. Joint and keypoint layouts,
DensePose parts (``layouts``), left/right mirror maps (``mirror``), rotations, cameras and projection,
and the SMPL / SMPL-X / MANO body models. It imports nothing else of crocoman."""

from body.model import BodyModel

__all__ = ["BodyModel"]
