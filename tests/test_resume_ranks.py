"""Resuming on another number of ranks: the checkpoint's random states are per rank, so the run continues from
fresh generators and says so."""

import json
from pathlib import Path

import pytest
import torch

from lightning_modules.rng import restore_rank_state, rng_state
from tests.conftest import REPO, run_job
from tests.test_cli import TINY_MODEL
from tests.test_ddp import two_rank_job
from crocoman.main import main

STREAM = "--trainer.callbacks+=tests.recorders.TrainStream"


def test_restoring_another_number_of_ranks_leaves_the_generators_alone():
    saved = rng_state()
    torch.rand(3)  # the process's generators move on
    before = rng_state()
    with pytest.warns(UserWarning, match="holds random states for 2 ranks: .* fresh generators"):
        assert restore_rank_state([saved, saved], rank=0) is False
    assert torch.equal(rng_state()["torch"], before["torch"])
    assert restore_rank_state([saved], rank=0) is True and torch.equal(rng_state()["torch"], saved["torch"])


def test_a_two_rank_checkpoint_resumed_in_one_process_continues_from_fresh_generators(pair_shards: Path,
                                                                                      tmp_path: Path, monkeypatch):
    """A 2-rank DDP run (gloo) stops after step 2; one process resumes it to step 4 with a warning, and takes the
    steps a resume of the same checkpoint without any saved generators takes (the fresh ones)."""
    command, env = two_rank_job(pair_shards, "ddp.yaml", tmp_path, "--trainer.max_steps=2",
                                "--trainer.limit_val_batches=0", "--data.num_workers=0")
    result = run_job(command, tmp_path, env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "runs/pretrain_cpu_demo/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and len(checkpoint["rng_states"]) == 2
    without_states = {name: value for name, value in checkpoint.items() if name != "rng_states"}
    streams = {}
    for name, saved in (("two_ranks", checkpoint), ("no_states", without_states)):
        workdir = tmp_path / name
        workdir.mkdir()
        torch.save(saved, workdir / "resume.ckpt")
        monkeypatch.chdir(workdir)
        monkeypatch.setenv("CROCOMAN_RECORD_DIR", str(workdir))
        with pytest.warns(UserWarning) as warned:
            main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL,
                  f"--data.train_shards={pair_shards / 'train'}", f"--data.val_shards={pair_shards / 'val'}",
                  "--data.image_size=64", "--data.batch_size=2",
                  "--data.num_workers=0", "--data.epoch_pairs=16", "--data.shuffle_buffer=4",
                  "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.logger=false", STREAM,
                  f"--ckpt_path={workdir / 'resume.ckpt'}"])
        fresh = [str(w.message) for w in warned if "fresh generators" in str(w.message)]
        assert len(fresh) == (name == "two_ranks"), fresh
        streams[name] = [json.loads(line) for line in (workdir / "stream-rank0.jsonl").read_text().splitlines()]
    assert [step["step"] for step in streams["two_ranks"]] == [3, 4]
    assert streams["two_ranks"] == streams["no_states"]
