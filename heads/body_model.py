"""Moved to ``body.model`` (the body package); this path goes in the next release."""

import warnings

from body.model import *  # noqa: F403

warnings.warn("heads.body_model moved to body.model", DeprecationWarning, stacklevel=2)
