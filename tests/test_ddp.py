"""Real two-process DDP, FSDP2 and FSDP (gloo on CPU) through the `crocoman` command and the trainer
snippets, as a cluster job runs them."""

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from backbone import CroCoNet
from backbone.weights import ENCODER_KEYS, load_encoder, read_checkpoint
from heads.completion import build_from_croco
from tests.conftest import REPO, assert_same_end_state, end_state, run_job
from tests.test_cli import TINY_MODEL
from tests.test_gesture import write_toy_shards
from crocoman.cli import checkpoint_metadata
from crocoman.export import export
from crocoman.main import main
from crocoman.synth import write_pair_shards


@pytest.fixture(scope="module")
def ddp_shards(tmp_path_factory):
    """4 val shards of 4 groups: enough for 2 ranks x 2 workers to each own one shard."""
    out = tmp_path_factory.mktemp("ddp_pairs")
    write_pair_shards(out, num_groups=16, val_groups=16, image_size=64, cameras=2, times=2, seed=1,
                      groups_per_shard=4)
    return out


# What a GPU-only snippet needs to run on CPU ranks: fsdp.yaml's strategy through tests/strategies.py.
CPU_STAND_INS = {"fsdp.yaml": ("--trainer.strategy.class_path=tests.strategies.CpuFSDPStrategy",)}
TRAIN_STREAM = "--trainer.callbacks+=tests.recorders.TrainStream"
# Clipping that acts on the tiny model's steps (its gradient norm is above 0.01), so a norm taken wrongly shows.
CLIPPING = "--trainer.gradient_clip_val=0.01"
LAST = Path("runs/pretrain_cpu_demo/checkpoints/last.ckpt")


def two_rank_job(shards: Path, snippet: str, workdir: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a two-rank CPU job of the tiny pretraining model under a trainer
    snippet."""
    command = [
        sys.executable, "-m", "crocoman.main", "fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL,
        f"--data.train_shards={shards / 'train'}", f"--data.val_shards={shards / 'val'}",
        "--data.image_size=64", "--data.batch_size=2", "--data.num_workers=2", "--data.epoch_pairs=16",
        "--data.shuffle_buffer=4", "-c", str(REPO / "configs/trainer" / snippet), "--trainer.accelerator=cpu",
        "--trainer.devices=2", "--trainer.precision=32-true", "--trainer.max_steps=8",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir=logs",
        *CPU_STAND_INS.get(snippet, ()), *extra,
    ]
    # As a fresh cluster job: not attached to the W&B service an earlier test started in this process
    # (wandb hands it to child processes through WANDB_SERVICE), which would keep a finished run "in use".
    inherited = {name: value for name, value in os.environ.items() if name != "WANDB_SERVICE"}
    env = {**inherited, "CROCOMAN_RECORD_DIR": str(workdir), "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return command, env


def run_two_ranks(shards: Path, snippet: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    command, env = two_rank_job(shards, snippet, workdir, *extra)
    return run_job(command, workdir, env, timeout=300)


def reference_options(snippet: str) -> tuple[str, ...]:
    """How the reference run trains under a snippet: 12 steps (3 epochs of 4 batches per rank), clipping that acts,
    every step recorded; under FSDP2 with the module's activation checkpointing (checkpointed blocks must still
    shard and train; fsdp.yaml checkpoints its blocks by its own policy)."""
    return (TRAIN_STREAM, CLIPPING, "--trainer.max_steps=12",
            f"--model.init_args.activation_checkpointing={snippet == 'fsdp2.yaml'}")


@pytest.fixture(scope="module")
def reference_run(ddp_shards, tmp_path_factory) -> Callable[..., Path]:
    """The folder of a two-rank run under a snippet with ``reference_options``, a BatchRecorder and any further
    options (its stderr in stderr.txt), made once per snippet and options for this module: the batches, resume,
    compile, snippet-comparison and fine-tuning tests all read the plain one of each snippet."""
    runs: dict[tuple[str, ...], Path] = {}

    def run(snippet: str, *extra: str) -> Path:
        if (snippet, *extra) not in runs:
            workdir = tmp_path_factory.mktemp(f"reference-{snippet.removesuffix('.yaml')}")
            result = run_two_ranks(ddp_shards, snippet, workdir, *reference_options(snippet),
                                   "--trainer.callbacks+=tests.recorders.BatchRecorder", *extra)
            assert result.returncode == 0, result.stderr[-3000:]
            (workdir / "stderr.txt").write_text(result.stderr)
            runs[snippet, *extra] = workdir
        return runs[snippet, *extra]

    return run


@pytest.mark.parametrize(("snippet", "augment_on"), [("ddp.yaml", "worker"), ("ddp.yaml", "device"),
                                                    ("fsdp2.yaml", "worker"), ("fsdp.yaml", "worker")])
def test_two_ranks_equal_batches_and_validation_sees_every_sample_once(reference_run, snippet, augment_on):
    """Equal full batches on both ranks, each validation sees every sample once, the LR scaled by the global batch,
    and the blocks laid out as the snippet says (FSDP2: sharded, after the module's checkpointing; FSDP: each an
    FSDP unit of its own, sharded, with its checkpoint wrapper)."""
    # "worker" is the configs' own: the plain reference run
    workdir = reference_run(snippet, *([] if augment_on == "worker" else [f"--data.augment_on={augment_on}"]))
    # cpu_demo.yaml's lr 2e-3 is for a global batch of 256; here 2 pairs x 2 ranks: 2e-3 x 4 / 256, said once
    said = (workdir / "stderr.txt").read_text()
    assert said.count("AdamW: peak lr 3.13e-05 (base 0.002 x global batch 4 / 256)") == 1
    ranks = [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(2)]
    sharded = snippet != "ddp.yaml"
    assert all(r["world_size"] == 2 and r["blocks_sharded"] == r["blocks_checkpointed"] == sharded for r in ranks)
    # 16 pairs per epoch / (2 per batch x 2 ranks) = 4 full batches on every rank; 12 steps: 3 epochs
    assert ranks[0]["train_batches"] == ranks[1]["train_batches"] == {"0": 4, "1": 4, "2": 4}
    seen = ranks[0]["val_keys"] + ranks[1]["val_keys"]
    assert len(seen) == 3 * 16 and set(ranks[0]["val_keys"]).isdisjoint(ranks[1]["val_keys"])
    assert len(set(seen)) == 16  # each validation pass (one per epoch) saw every group exactly once


def test_a_failing_rank_brings_the_job_down_with_its_error(ddp_shards, tmp_path):
    result = run_two_ranks(ddp_shards, "ddp.yaml", tmp_path, "--trainer.callbacks+=tests.recorders.FailOnRank",
                           "--trainer.callbacks.rank=1", "--trainer.callbacks.step=3")
    assert result.returncode != 0
    assert "injected failure on rank 1 at step 3" in result.stderr


def test_a_non_finite_loss_on_one_rank_skips_that_step_on_every_rank(ddp_shards, tmp_path):
    """``NonFiniteGuard(action="skip")`` under DDP: rank 1's loss of step 3 is NaN, rank 0's is finite. DDP's
    all-reduce makes the gradients non-finite on both ranks, so both drop that update (no rank waits for
    another), then train on, and their weights stay identical."""
    skip = tmp_path / "skip.yaml"  # replaces the config's callbacks, whose guard stops instead
    skip.write_text("trainer:\n  callbacks:\n    - class_path: lightning_modules.callbacks.NonFiniteGuard\n"
                    "      init_args:\n        action: skip\n")
    result = run_two_ranks(ddp_shards, "ddp.yaml", tmp_path, "-c", str(skip),
                           "--trainer.callbacks+=tests.recorders.PoisonOnRank", "--trainer.callbacks.rank=1",
                           "--trainer.callbacks.step=2", "--trainer.callbacks+=tests.recorders.ParameterTrace",
                           "--trainer.callbacks+=tests.recorders.TrainStream", "--trainer.max_steps=4",
                           "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
                           "--data.num_workers=0")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [{record["step"]: record["loss"] for record in map(json.loads, (tmp_path / f"stream-rank{rank}.jsonl")
                                                                 .read_text().splitlines())} for rank in range(2)]
    assert sorted(losses[0]) == sorted(losses[1]) == [1, 2, 3, 4]
    assert math.isnan(losses[1][3]) and math.isfinite(losses[0][3])  # one rank's loss only
    traces = [torch.load(tmp_path / f"parameters-rank{rank}.pt", weights_only=True) for rank in range(2)]
    for trace in traces:
        before = trace["before_step"]
        assert trace["skipped_steps"] == [1]
        assert torch.equal(before[3], before[2])  # step 3 changed nothing ...
        assert not torch.equal(before[2], before[1]) and not torch.equal(trace["final"], before[3])  # ... others did
        assert torch.isfinite(trace["final"]).all()
    assert torch.equal(traces[0]["final"], traces[1]["final"])
    assert all(math.isfinite(losses[rank][4]) for rank in range(2))


@pytest.mark.parametrize("snippet", ["ddp.yaml", "fsdp2.yaml"])
def test_compiled_blocks_train_as_eager_ones_on_two_ranks(reference_run, snippet):
    """``compile: true`` (each transformer block through inductor) under DDP's static graph, and under FSDP2's
    per-block sharding with activation checkpointing on top: graphs are built and the run takes the same steps
    on the same batches with the same losses and parameter updates as the eager reference run."""
    runs = {"eager": reference_run(snippet), "compiled": reference_run(snippet, "--model.init_args.compile=true")}
    ranks = {name: [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
             for name, folder in runs.items()}
    assert all(r["compiled_graphs"] > 0 for r in ranks["compiled"]) and not any(
        r["compiled_graphs"] for r in ranks["eager"])
    assert all(r["blocks_sharded"] == r["blocks_checkpointed"] == (snippet == "fsdp2.yaml") for r in ranks["compiled"])
    for rank in range(2):
        eager, compiled = ([json.loads(line) for line in (folder / f"stream-rank{rank}.jsonl").open()]
                           for folder in runs.values())
        assert [s["keys"] for s in compiled] == [s["keys"] for s in eager] and len(eager) == 12
        assert [s["loss"] for s in compiled] == pytest.approx([s["loss"] for s in eager], rel=1e-4)
    changes = {name: ranks[name][0]["parameter_change"] for name in runs}
    assert changes["compiled"] == pytest.approx(changes["eager"], rel=1e-3) and changes["eager"] > 0


def test_a_fine_tuning_config_starts_from_an_fsdp2_checkpoint_folder(reference_run, tmp_path, monkeypatch, caplog):
    """README: a fine-tuning config's `pretrained:` takes FSDP2's distributed checkpoint folder as it takes a
    file. The FSDP2 reference run's last checkpoint (two gloo ranks, 12 steps), then gesture_cpu.yaml through the
    CLI with `--model.init_args.pretrained=<the folder>`: every encoder key is reported matched, and at step 0 the
    encoder holds the folder's tensors exactly."""
    pretraining = reference_run("fsdp2.yaml")
    # trained: the weights are not the initialisation both runs draw from seed 0
    assert json.loads((pretraining / "rank0.json").read_text())["parameter_change"] > 0
    folder = pretraining / LAST
    assert folder.is_dir() and torch.load(folder / "meta.pt", weights_only=True)["global_step"] == 12
    pretrained = {name: tensor for name, tensor in read_checkpoint(folder)["state_dict"].items()
                  if name.startswith(ENCODER_KEYS)}

    shapes = write_toy_shards(tmp_path / "shapes", train=8, val=4, size=64)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CROCOMAN_RECORD_DIR", str(tmp_path))
    sizes = [arg.replace("--model.", "--model.init_args.") for arg in TINY_MODEL]  # the pretrained encoder's
    with caplog.at_level(logging.INFO):
        main(["fit", "-c", str(REPO / "configs/finetune/gesture_cpu.yaml"), *sizes,
              f"--model.init_args.pretrained={folder}", f"--data.train_shards={shapes / 'train'}",
              f"--data.val_shards={shapes / 'val'}", "--data.image_size=64",
              "--data.batch_size=4", "--data.num_workers=0", "--data.epoch_samples=8", "--trainer.max_steps=1",
              "--trainer.limit_val_batches=0", "--trainer.logger=false",
              "--trainer.callbacks+=tests.recorders.EncoderAtStart"])
    report = f"Loaded the pretrained encoder from {folder}: {folder}: {len(pretrained)} matched, 0 missing"
    assert report in caplog.text
    at_start = torch.load(tmp_path / "backbone-at-start.pt", weights_only=True)
    assert sorted(name for name in at_start if name.startswith(ENCODER_KEYS)) == sorted(pretrained)
    for name, tensor in pretrained.items():
        assert torch.equal(at_start[name], tensor), name


@pytest.mark.parametrize("snippet", ["ddp.yaml", "fsdp2.yaml", "fsdp.yaml"])
def test_a_resumed_two_rank_run_is_the_uninterrupted_run(ddp_shards, tmp_path, snippet, reference_run):
    """Stopped after step 6 of 12 and resumed from its last checkpoint (under FSDP2 and FSDP a folder: sharded
    tensors + metadata): on both ranks, every step's loss is the one the uninterrupted run logged, the run ends
    with the same weights, optimiser state and LR, it continued the same W&B run, and fine-tuning and
    crocoman-export read its weights."""
    wandb_logger = ("--trainer.logger=lightning_modules.loggers.WandbLogger", "--trainer.logger.save_dir=wb",
                    "--trainer.callbacks+=tests.recorders.WandbRun")
    uninterrupted, stopped = reference_run(snippet), tmp_path / "stopped"
    stopped.mkdir()
    stop_at_6 = ("--trainer.callbacks+=tests.recorders.StopAtStep", "--trainer.callbacks.step=6")
    assert run_two_ranks(ddp_shards, snippet, stopped, *reference_options(snippet), *wandb_logger,
                         *stop_at_6).returncode == 0
    resumed = run_two_ranks(ddp_shards, snippet, stopped, *reference_options(snippet), *wandb_logger,
                            "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = (stopped / "stream-rank0.jsonl").read_text().splitlines()
    assert len(lines) < 6 + 12  # the second run continued from a checkpoint, it did not start over
    for rank in range(2):
        reference, rerun = ({json.loads(line)["step"]: json.loads(line) for line in
                             (workdir / f"stream-rank{rank}.jsonl").read_text().splitlines()}
                            for workdir in (uninterrupted, stopped))
        assert sorted(reference) == sorted(rerun) == list(range(1, 13))
        for step in range(1, 13):
            assert rerun[step]["keys"] == reference[step]["keys"], (rank, step)
            assert rerun[step]["loss"] == reference[step]["loss"], (rank, step)
    assert (stopped / LAST).is_dir() == (snippet != "ddp.yaml")
    assert_same_end_state(stopped / LAST, uninterrupted / LAST, step=12)
    runs = [json.loads(line) for line in (stopped / "wandb-runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and {run["id"] for run in runs} == {checkpoint_metadata(stopped / LAST)["wandb_run_id"]}
    assert {Path(run["folder"]) for run in runs} == set((stopped / "wb/wandb").glob("offline-run-*"))
    # Fine-tuning (`pretrained: .../last.ckpt`) and crocoman-export take the folder as a file: the trained tensors.
    trained = end_state(uninterrupted / LAST)["state_dict"]["backbone.enc_blocks.0.attn.qkv.weight"]
    backbone = CroCoNet(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                        decoder_num_heads=2)
    report = load_encoder(stopped / LAST, backbone)
    assert report.matched and not report.missing and not report.shape_mismatched
    assert torch.equal(backbone.enc_blocks[0].attn.qkv.weight, trained)
    exported = export(["--config", str(uninterrupted / "logs/lightning_logs/version_0/config.yaml"),
                       "--checkpoint", str(stopped / LAST), "--format", "croco", "--out", str(tmp_path / "croco.pth")])
    assert torch.equal(build_from_croco(exported)[0].enc_blocks[0].attn.qkv.weight, trained)


def test_sharded_snippets_train_what_ddp_trains(reference_run):
    """fsdp2.yaml and fsdp.yaml train the model ddp.yaml trains: every step's loss on both ranks and the end
    weights of their reference runs agree to float rounding (their reductions add up in another order: measured
    1.3e-6 and 3.4e-6 under fsdp.yaml), which ranks training unsynchronised copies (2.6e-4, 2.1e-4) or clipping
    by their own shard's norm (2.5e-5, 3.1e-5) do not."""
    reference = reference_run("ddp.yaml")
    weights = end_state(reference / LAST)["state_dict"]
    for snippet in "fsdp2.yaml", "fsdp.yaml":
        run = reference_run(snippet)
        for rank in range(2):
            losses = [[json.loads(line)["loss"] for line in (folder / f"stream-rank{rank}.jsonl").open()]
                      for folder in (run, reference)]
            assert len(losses[0]) == 12 and losses[0] == pytest.approx(losses[1], rel=5e-6), (snippet, rank)
        trained = end_state(run / LAST)["state_dict"]
        for name, tensor in weights.items():
            torch.testing.assert_close(trained[name], tensor, rtol=0, atol=1e-5, msg=f"{snippet}: {name}")
