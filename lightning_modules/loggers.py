"""Logger defaults for researchers' clusters: W&B that never blocks a job for lack of a key."""

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_credentials_found() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY, or the ~/.netrc entry `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with project ``crocoman`` that goes offline when no key is set.

    ``offline=None`` (the default) means: online if credentials are found, else offline, with a
    log line saying where the run is written and how to upload it later. ``save_dir=None`` (the default) is
    the run's ``default_root_dir`` under ``crocoman`` (``crocoman.cli``), the current folder elsewhere.
    """

    def __init__(self, project: str = "crocoman", save_dir: str | None = None, offline: bool | None = None,
                 **kwargs) -> None:
        save_dir = "." if save_dir is None else save_dir
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_found()
            if offline:
                rank_zero_info(f"W&B: no API key found (WANDB_API_KEY or `wandb login`): logging offline under "
                               f"{Path(save_dir, 'wandb').resolve()}; upload later with `wandb sync <run dir>`")
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)

    def continue_run(self, run_id: str) -> None:
        """Log into run ``run_id`` (the one a resumed checkpoint came from) instead of a new run.

        Must be called before the run starts, i.e. before the first access to ``experiment``.
        """
        if self._experiment is not None:
            raise RuntimeError(f"W&B run {self._experiment.id} already started; cannot switch to {run_id}")
        self._wandb_init["id"] = self._id = run_id
