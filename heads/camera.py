"""Moved to ``body.camera`` (the body package); this path goes in the next release."""

import warnings

from body.camera import *  # noqa: F403

warnings.warn("heads.camera moved to body.camera", DeprecationWarning, stacklevel=2)
