"""A killed run continues with `--ckpt_path last`, a crash during a save never corrupts it, and last.ckpt
is the run's end even when its last validations did not improve."""

import csv
import glob
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning import LightningModule, Trainer
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.utils.data import DataLoader

from crocoman.cli import CrocomanCLI
from crocoman.synth import write_pair_shards
from lightning_modules.callbacks import ModelCheckpoint, RunSummary
from tests.conftest import REPO, assert_same_end_state, run_job
from tests.test_cli import TINY_MODEL, data_args
from tests.test_ddp import two_rank_job


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
        return run_job([sys.executable, "-m", "crocoman.main", "fit", "-c", str(config), *common, *extra], cwd, env,
                       timeout=300)

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
    assert_same_end_state(root / "checkpoints/last.ckpt", root / "uninterrupted/checkpoints/last.ckpt", step=20)


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


def kill_inside_checkpoint_save(command: list[str], workdir: Path, env: dict[str, str],
                                watched: list[str], timeout_s: float = 240) -> tuple[Path, int]:
    """Run ``command`` (a training job with ``tests.recorders.SlowSaveAtStep``) in its own process group and
    SIGKILL the whole group as soon as the marked save is seen writing: a file matching one of the ``watched``
    glob patterns (the job's temporary folder, its checkpoint folder) appears or changes after
    ``save-started``. Returns that file and the size it had when the kill was sent."""
    marker = workdir / "save-started"
    job = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)

    def files() -> dict[Path, tuple[int, int]]:
        seen = {}
        for path in (path for pattern in watched for path in glob.glob(pattern, recursive=True)):
            try:
                status = os.stat(path)
            except FileNotFoundError:  # renamed or removed under our eyes
                continue
            if stat.S_ISREG(status.st_mode):
                seen[Path(path)] = (status.st_size, status.st_mtime_ns)
        return seen

    started, before = time.monotonic(), None
    try:
        while job.poll() is None and time.monotonic() - started < timeout_s:
            if before is None and marker.exists():
                before = files()
            if before is not None:
                writing = [(path, size) for path, (size, mtime) in files().items()
                           if size > 0 and before.get(path, (0, 0)) != (size, mtime)]
                if writing:
                    os.killpg(job.pid, signal.SIGKILL)
                    job.wait()
                    return writing[0]
            time.sleep(0.001)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    pytest.fail(f"no checkpoint write seen after save-started (exit {job.returncode}): {job.stderr.read()[-3000:]}")


def losses_by_step(workdir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training batch the job's runs took, in order (``tests.recorders.TrainStream``)."""
    return [(record["step"], record["loss"]) for record in
            map(json.loads, (workdir / "stream-rank0.jsonl").read_text().splitlines())]


@pytest.fixture
def job_tmpdir(request, tmp_path) -> Iterator[Path]:
    """The killed job's TMPDIR, where a save may stage its file before moving it into place: on the checkpoints'
    filesystem, or on another one (tmpfs), as node-local /tmp is beside a cluster's shared checkpoint folder."""
    if request.param == "same filesystem":
        yield Path(tempfile.mkdtemp(dir=tmp_path))
        return
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to put TMPDIR on")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="crocoman-test-"))
    yield folder
    shutil.rmtree(folder)  # the killed save's staged copy: hundreds of MiB of memory


@pytest.mark.parametrize("job_tmpdir", ["same filesystem", "another filesystem"], indirect=True)
def test_a_kill_inside_a_checkpoint_save_keeps_the_previous_last_checkpoint(pair_shards, tmp_path, job_tmpdir):
    """A real training process SIGKILLed while it writes last.ckpt (the step-6 save, made slow by 256 MiB of
    ballast): last.ckpt is the complete step-3 checkpoint (or, if the kill came only once the file was in place,
    the complete step-6 one), never a partial file, and `--ckpt_path last` continues from it, taking the same
    steps with the same losses as the killed run."""
    config = yaml.safe_load((REPO / "configs/pretrain/cpu_demo.yaml").read_text())
    config["trainer"]["logger"] = False
    config["trainer"]["callbacks"] = [
        {"class_path": "lightning_modules.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "checkpoints", "every_n_train_steps": 3, "save_top_k": 0, "save_last": True}},
        {"class_path": "lightning_modules.callbacks.RunSummary"},
        {"class_path": "tests.recorders.TrainStream"},
    ]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "PYTHONPATH": str(REPO),
           "CROCOMAN_RECORD_DIR": str(tmp_path), "TMPDIR": str(job_tmpdir)}
    command = [sys.executable, "-m", "crocoman.main", "fit", "-c", str(tmp_path / "config.yaml"), *TINY_MODEL,
               *data_args(pair_shards, 64, 2), "--data.epoch_pairs=64", "--data.num_workers=1",
               "--trainer.limit_val_batches=0", "--trainer.max_steps=6"]
    # On one filesystem the kill lands while the staged file is written; across two, where staging is cheap and
    # the move into place is a copy, while that copy writes into the checkpoint folder.
    watched = [str(job_tmpdir / "*")] if "/dev/shm" not in str(job_tmpdir) else []
    written, size = kill_inside_checkpoint_save(
        [*command, "--trainer.callbacks+=tests.recorders.SlowSaveAtStep", "--trainer.callbacks.step=6"],
        tmp_path, env, [*watched, str(tmp_path / "checkpoints/**/*")])
    assert 0 < size, (written, size)
    killed = losses_by_step(tmp_path)
    assert [step for step, _ in killed] == [1, 2, 3, 4, 5, 6]
    last = tmp_path / "checkpoints/last.ckpt"
    assert last.is_file()  # (absent would be acceptable too; a partial file never is)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    saved = checkpoint["global_step"]
    if watched:
        assert size < 256 * 2**20, (written, size)  # killed in the middle of writing the step-6 checkpoint
        assert saved == 3 and "ballast" not in checkpoint["state_dict"]
    assert saved in (3, 6)

    resumed = run_job([*command, "--ckpt_path=last"], tmp_path, env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "crocoman: finished 6 steps" in resumed.stdout
    assert losses_by_step(tmp_path)[6:] == killed[saved:]  # the steps after the save again: the same losses
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


def test_resuming_continues_the_wandb_run(pair_shards, tmp_path, monkeypatch):
    import wandb

    from crocoman.main import main

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


def test_the_summary_of_a_run_whose_checkpoints_have_no_monitor_names_no_best(tmp_path, capsys):
    """Without a monitor ModelCheckpoint keeps the latest files and has no best score: the summary says so by
    leaving the best line out, instead of failing the finished run."""
    callback = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, save_last=True)
    Trainer(max_epochs=2, callbacks=[callback, RunSummary(monitor="val/error")], logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(WorseningModule())
    printed = capsys.readouterr().out
    assert f"checkpoints: {tmp_path}" in printed and "best (" not in printed


def test_a_checkpoint_parked_by_a_killed_folder_swap_is_where_last_resumes_from(tmp_path):
    """A folder checkpoint (FSDP2's) goes into place by two renames: last.ckpt -> last.ckpt.old, the new one ->
    last.ckpt. A kill between them leaves only last.ckpt.old, whole (Lightning's search for `last` sees *.ckpt
    only): `ckpt_path="last"` resumes from it, the CLI continues its W&B run, and the next save puts last.ckpt
    back and clears it. A kill after the second rename leaves both: last.ckpt, the newer state, is chosen.
    (A file stands in for the folder: the search goes by names.)"""
    def trainer(epochs: int) -> Trainer:
        return Trainer(max_epochs=epochs, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)],
                       logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    def resolved_by_the_cli(trainer: Trainer) -> Path | None:
        """The checkpoint whose W&B run the CLI continues under `--ckpt_path last`."""
        return CrocomanCLI._resumed_checkpoint(SimpleNamespace(config={"fit": {"ckpt_path": "last"}},
                                                               subcommand="fit", trainer=trainer))

    trainer(1).fit(WorseningModule())
    last, parked = tmp_path / "last.ckpt", tmp_path / "last.ckpt.old"
    shutil.copy(last, parked)  # the leftover is the newer file: picked if it were a candidate
    assert resolved_by_the_cli(trainer(2)) == last
    os.replace(last, parked)
    resumed = trainer(2)
    assert resolved_by_the_cli(resumed) == parked
    resumed.fit(WorseningModule(), ckpt_path="last")
    assert resumed.ckpt_path == str(parked)
    assert torch.load(last, weights_only=True)["global_step"] == 4 and not parked.exists()


def distributed_state(folder: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a distributed checkpoint folder, gathered into one state dict (raises if it is incomplete)."""
    dcp_to_torch_save(folder, scratch / f"{folder.name}.pt")
    state = torch.load(scratch / f"{folder.name}.pt", map_location="cpu", weights_only=True)
    return {f"{group}.{name}": tensor for group, tensors in state.items() if isinstance(tensors, dict)
            for name, tensor in tensors.items() if isinstance(tensor, torch.Tensor)}


def test_a_kill_inside_a_distributed_checkpoint_save_keeps_the_previous_last_checkpoint(tmp_path):
    """FSDP2 on two gloo ranks writes last.ckpt as a folder (sharded tensors + metadata). The whole job SIGKILLed
    while it writes the step-4 save (256 MiB of ballast in its state dict): last.ckpt is still the complete
    step-2 checkpoint (tensor for tensor the copy a second callback kept), or absent, and `--ckpt_path last`
    continues from it."""
    shards = tmp_path / "shards"
    write_pair_shards(shards, num_groups=8, val_groups=8, image_size=64, cameras=2, times=2, seed=1,
                      groups_per_shard=4)
    callbacks = tmp_path / "callbacks.yaml"  # replaces the config's: a last.ckpt every 2 steps, no validation
    callbacks.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning_modules.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "checkpoints", "every_n_train_steps": 2, "save_top_k": 0, "save_last": True}},
        {"class_path": "lightning_modules.callbacks.ModelCheckpoint",  # saves after the first: keeps step 2
         "init_args": {"dirpath": "history", "every_n_train_steps": 2, "save_top_k": -1,
                       "mode": "max"}},  # (no metric: only tells the two callbacks' states apart)
        {"class_path": "tests.recorders.TrainStream"}]}}))
    common = ("-c", str(callbacks), "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--data.num_workers=1")
    command, env = two_rank_job(shards, "fsdp2.yaml", tmp_path, *common,
                                "--trainer.callbacks+=tests.recorders.SlowSaveAtStep", "--trainer.callbacks.step=4")
    last = tmp_path / "checkpoints/last.ckpt"
    written, size = kill_inside_checkpoint_save(command, tmp_path, env, [str(last.parent / "**/*")])
    assert 0 < size < 256 * 2**20, (written, size)  # killed while the step-4 last.ckpt was being written
    assert [step for step, _ in losses_by_step(tmp_path)] == [1, 2, 3, 4]
    if last.exists():
        assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 2
        kept = distributed_state(tmp_path / "history/epoch=0-step=2.ckpt", tmp_path)
        state = distributed_state(last, tmp_path)
        assert sorted(state) == sorted(kept) and "state_dict.ballast" not in state
        for name, tensor in kept.items():
            assert torch.equal(state[name], tensor), name

    command, env = two_rank_job(shards, "fsdp2.yaml", tmp_path, *common, "--ckpt_path=last")
    resumed = run_job(command, tmp_path, env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [step for step, _ in losses_by_step(tmp_path)] == [1, 2, 3, 4, 3, 4]  # continued after step 2
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 4
