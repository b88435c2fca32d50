"""The SLURM script builds a valid crocoman command from the allocation it runs in."""

import os
import re
import sys

from tests.conftest import REPO, run_job


def test_sbatch_script_composes_a_valid_multinode_config(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text('#!/usr/bin/env bash\nexec "$@"\n')  # one local task instead of a cluster
    (fake_bin / "srun").chmod(0o755)
    (fake_bin / "crocoman").write_text(f'#!/usr/bin/env bash\nexec {sys.executable} -m crocoman.main "$@"\n')
    (fake_bin / "crocoman").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "SLURM_NNODES": "4", "SLURM_NTASKS_PER_NODE": "8", "CROCOMAN": "crocoman"}
    result = run_job(["bash", str(REPO / "scripts/slurm/pretrain.sbatch"), "--print_config"], REPO, env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "num_nodes: 4" in result.stdout and re.search(r"devices: '?8'?\n", result.stdout)
    assert "DDPStrategy" in result.stdout and "embed_dim: 768" in result.stdout
