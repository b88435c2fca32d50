"""Moved to ``body.mirror`` (the body package); this path goes in the next release."""

import warnings

from body.layouts import BODY_POSE_JOINTS, SMPL_JOINT_NAMES  # noqa: F401
from body.mirror import *  # noqa: F403

warnings.warn("datamodules.mirror moved to body.mirror", DeprecationWarning, stacklevel=2)
