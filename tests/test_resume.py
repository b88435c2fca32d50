"""A killed run continues with `--ckpt_path last`, a crash during a save never corrupts it, and last.ckpt
is the run's end even when its last validations did not improve."""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fsspec.implementations.local
import pytest
import torch
import yaml
from lightning import LightningModule, Trainer
from lightning.fabric.utilities.cloud_io import _atomic_save
from torch.utils.data import DataLoader

from lightning_modules.callbacks import ModelCheckpoint, RunSummary
from tests.conftest import REPO
from tests.test_cli import TINY_MODEL, data_args


def write_config(path: Path, kill_at: int | None) -> Path:
    """The demo config with a last.ckpt every 5 steps, a CSV logger, a record of the data stream
    and, optionally, a SIGKILL."""
    config = yaml.safe_load((REPO / "configs/pretrain/cpu_demo.yaml").read_text())
    config["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                   "init_args": {"save_dir": "logs"}}
    config["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "checkpoints", "every_n_train_steps": 5, "save_top_k": 0, "save_last": True}},
        {"class_path": "lightning_modules.callbacks.RunSummary"},
        {"class_path": "tests.recorders.TrainStream"},
    ] + ([{"class_path": "tests.recorders.KillAtStep", "init_args": {"step": kill_at}}] if kill_at else [])
    path.write_text(yaml.safe_dump(config))
    return path


def logged_losses(root: Path, version: int) -> dict[int, float]:
    """Training loss by step as one run (one CSV logger version) wrote it."""
    with open(root / f"logs/lightning_logs/version_{version}/metrics.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}


def streamed(workdir: Path) -> dict[int, dict]:
    """The training batches a run read, by step (``tests.recorders.TrainStream``)."""
    lines = (workdir / "stream-rank0.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


@pytest.fixture(scope="module", params=["worker", "device"])
def killed_then_resumed(pair_shards, tmp_path_factory, request):
    """A run killed after step 12 and resumed from its step-10 checkpoint, and the same run uninterrupted;
    with the colour jitter in the loader worker and on the device."""
    root = tmp_path_factory.mktemp(f"resume-{request.param}")
    common = [*TINY_MODEL, *data_args(pair_shards, 64, 4), "--data.epoch_pairs=400", "--data.num_workers=1",
              f"--data.augment_on={request.param}",
              "--model.init_args.lr_reference_batch=4", "--trainer.log_every_n_steps=1", "--trainer.max_steps=20"]

    def run(records: Path, config: Path, *extra: str, cwd: Path = root) -> subprocess.CompletedProcess:
        records.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "CROCOMAN_RECORD_DIR": str(records)}
        return subprocess.run([sys.executable, "-m", "tools.main", "fit", "-c", str(config), *common, *extra],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    killed = run(root / "killed", write_config(root / "killed.yaml", kill_at=12))
    resumed = run(root / "resumed", write_config(root / "resume.yaml", kill_at=None), "--ckpt_path=last")
    run(root / "uninterrupted", write_config(root / "uninterrupted.yaml", kill_at=None), cwd=root / "uninterrupted")
    return root, killed, resumed


def test_resumed_run_is_the_uninterrupted_run(killed_then_resumed):
    """Same samples, same order, same augmentation, same masks: every step's loss is the uninterrupted
    run's, and the run ends with the same weights, optimiser state and learning rate."""
    root = killed_then_resumed[0]
    killed, resumed, reference = (streamed(root / name) for name in ("killed", "resumed", "uninterrupted"))
    assert sorted(killed) == list(range(1, 13)) and sorted(resumed) == list(range(11, 21))
    for step, record in [*killed.items(), *resumed.items()]:
        assert record["keys"] == reference[step]["keys"], step
        assert record["pixels"] == pytest.approx(reference[step]["pixels"], rel=1e-6), step
        assert record["loss"] == reference[step]["loss"], step  # bit for bit: masks drawn as in one run
    assert reference[11]["keys"] != reference[1]["keys"]  # the stream moves on within the epoch
    ends = [torch.load(path, weights_only=True) for path in (root / "checkpoints/last.ckpt",
                                                            root / "uninterrupted/checkpoints/last.ckpt")]
    assert ends[0]["global_step"] == ends[1]["global_step"] == 20
    for name, tensor in ends[1]["state_dict"].items():
        assert torch.equal(ends[0]["state_dict"][name], tensor), name
    optimizers = [end["optimizer_states"][0] for end in ends]
    assert optimizers[0]["param_groups"] == optimizers[1]["param_groups"]  # learning rates included
    for index, state in optimizers[1]["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizers[0]["state"][index][key], value), (index, key)
    assert ends[0]["lr_schedulers"] == ends[1]["lr_schedulers"]


def test_killed_run_resumes_from_last_checkpoint(killed_then_resumed):
    root, killed, resumed = killed_then_resumed
    assert killed.returncode == -signal.SIGKILL
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "crocoman: finished 20 steps" in resumed.stdout
    before, after = logged_losses(root, 0), logged_losses(root, 1)
    assert min(after) == 10 and max(after) == 19  # continued from the step-10 checkpoint, not from 0
    assert torch.load(root / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 20
    start = sum(before[s] for s in range(3)) / 3
    at_resume = sum(after[s] for s in range(10, 13)) / 3
    assert at_resume < start  # the loss curve continues; it does not jump back to its start


def test_crash_during_save_keeps_previous_checkpoint(killed_then_resumed, monkeypatch):
    root = killed_then_resumed[0]
    last = root / "checkpoints/last.ckpt"
    before = last.read_bytes()

    def write_half_then_die(self, data):
        self.f.write(data[: len(data) // 2])
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        _atomic_save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 99}, last)
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] == 20


def test_resuming_continues_the_wandb_run(pair_shards, tmp_path, monkeypatch):
    import wandb

    from tools.main import main

    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4)]
    runs = []  # (run id, the run's folder), as W&B reports them
    for extra in ["--trainer.max_steps=2"], ["--trainer.max_steps=4", "--ckpt_path=last"]:
        main([*args, *extra])
        runs.append((wandb.run.id, (tmp_path / wandb.run.settings.sync_dir).resolve()))
        wandb.finish()
    assert runs[0][0] == runs[1][0]  # same run id, appended to
    assert {folder for _, folder in runs} == set((tmp_path / "runs/pretrain_cpu_demo/wandb").glob("offline-run-*"))
    checkpoint = torch.load(tmp_path / "runs/pretrain_cpu_demo/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["wandb_run_id"] == runs[0][0]


class WorseningModule(LightningModule):
    """Trains one weight; its validation metric gets worse every epoch, so only epoch 0 is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.weight - batch.sum()).pow(2).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/error", 1.0 + self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.ones(4, 1), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.ones(2, 1), batch_size=2)


def test_last_checkpoint_holds_the_final_weights_when_validation_stopped_improving(tmp_path, capsys):
    """Our ModelCheckpoint (every config's): last.ckpt is the run's end, the best file stays the best;
    the run's summary reads the monitored validation metric at every validation, the last included."""
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="val/error", mode="min", save_top_k=1, save_last=True)
    module = WorseningModule()
    Trainer(max_epochs=3, callbacks=[callback, RunSummary(monitor="val/error")], logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(module)
    assert "val/error: 1.0000 at step 2 -> 3.0000 (mean of the last 1 logged)" in capsys.readouterr().out
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 6 and torch.equal(last["state_dict"]["weight"], module.weight.detach())
    assert Path(callback.best_model_path).name == "epoch=0-step=2.ckpt"
    assert torch.load(callback.best_model_path, map_location="cpu", weights_only=False)["global_step"] == 2
