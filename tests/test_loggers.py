"""W&B goes online when credentials are found (WANDB_API_KEY or `wandb login`'s ~/.netrc entry) and offline,
saying so, when none are: the choice in `lightning_modules.loggers`, with the environment a job would have."""

import logging
import os
from pathlib import Path

import pytest
import wandb

from lightning_modules.loggers import WandbLogger


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A home without ~/.netrc and no W&B variables (the suite itself runs with WANDB_MODE=offline)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return home


def started_mode(logger: WandbLogger, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The mode `wandb.init` is asked for when the logger starts its run (its ``mode`` argument, else
    WANDB_MODE; None means online). `wandb.init` is replaced, so nothing goes to the network."""
    modes = []

    def init(**kwargs):
        modes.append(kwargs.get("mode") or os.environ.get("WANDB_MODE"))
        return object()

    monkeypatch.setattr(wandb, "init", init)
    logger.experiment  # noqa: B018 (starts the run)
    (mode,) = modes
    return mode


def test_an_api_key_logs_online(no_credentials, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    with caplog.at_level(logging.INFO):
        logger = WandbLogger(save_dir=str(tmp_path))
    assert logger._offline is False and "no API key found" not in caplog.text
    assert started_mode(logger, monkeypatch) is None


def test_a_wandb_login_netrc_entry_logs_online(no_credentials, monkeypatch, tmp_path):
    netrc = no_credentials / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'1' * 40}\n")
    netrc.chmod(0o600)
    logger = WandbLogger(save_dir=str(tmp_path))
    assert logger._offline is False
    assert started_mode(logger, monkeypatch) is None


def test_without_credentials_it_logs_offline_and_says_how_to_upload(no_credentials, tmp_path, caplog):
    (no_credentials / ".netrc").write_text("machine example.com\n  login user\n  password x\n")  # not W&B's
    (no_credentials / ".netrc").chmod(0o600)
    with caplog.at_level(logging.INFO):
        logger = WandbLogger(save_dir=str(tmp_path))
    assert logger._offline is True
    assert f"logging offline under {tmp_path / 'wandb'}" in caplog.text and "wandb sync <run dir>" in caplog.text
    # A real offline run, written where the message says.
    run = logger.experiment
    assert run.settings._offline and Path(run.settings.sync_dir).parent == tmp_path / "wandb"


@pytest.mark.parametrize("offline", [True, False])
def test_an_explicit_choice_or_wandb_mode_offline_wins(no_credentials, monkeypatch, tmp_path, offline):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert WandbLogger(save_dir=str(tmp_path), offline=offline)._offline is offline
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbLogger(save_dir=str(tmp_path))._offline is True
