"""Moved to ``body.rotations`` (the body package); this path goes in the next release."""

import warnings

from body.rotations import *  # noqa: F403

warnings.warn("heads.rotations moved to body.rotations", DeprecationWarning, stacklevel=2)
