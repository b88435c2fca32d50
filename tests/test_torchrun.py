"""README: without SLURM, one ``torchrun`` per node with ``configs/trainer/multinode.yaml``. Here one node of two
CPU processes (gloo) launched by torchrun exactly as the README's command, at the tiny model's size."""

import json
import os
import sys
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer

from tests.conftest import run_job
from tests.test_ddp import two_rank_job


class Launch(Callback):
    """Writes, per rank, how Lightning found the job (cluster environment, strategy, ranks, nodes), the steps taken
    and the sum of the weights before and after training to ``out``/rank<r>.json."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.weights_at_start = 0.0

    @staticmethod
    def weights(module: LightningModule) -> float:
        return float(sum(p.detach().double().sum() for p in module.parameters()))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.weights_at_start = self.weights(pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes, "steps": trainer.global_step, "group_rank": os.environ.get("GROUP_RANK"),
            "weights_at_start": self.weights_at_start, "weights": self.weights(pl_module)}))


def test_one_torchrun_per_node_with_multinode_yaml_trains(pair_shards: Path, tmp_path: Path):
    command, env = two_rank_job(pair_shards, "multinode.yaml", tmp_path, "--trainer.num_nodes", "1",
                                "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--data.num_workers=0",
                                "--trainer.callbacks+=tests.test_torchrun.Launch",
                                f"--trainer.callbacks.out={tmp_path}")
    assert command[:2] == [sys.executable, "-m"]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "-m"]
    result = run_job([*torchrun, *command[2:]], tmp_path, env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank in ranks:
        assert rank["environment"] == "TorchElasticEnvironment" and rank["group_rank"] == "0"  # set by torchrun
        assert rank["strategy"] == "DDPStrategy" and rank["world_size"] == 2 and rank["num_nodes"] == 1
        assert rank["steps"] == 2 and rank["weights"] != rank["weights_at_start"]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # one model, trained together
    assert torch.load(tmp_path / "runs/pretrain_cpu_demo/checkpoints/last.ckpt", weights_only=True)[
        "global_step"] == 2
