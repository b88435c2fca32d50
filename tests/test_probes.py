"""Online probes: closed-form ridge fits, scores that tell informative features from noise, and the
callback logging probe/<name> at step 0 and at every validation of a real CLI run."""

import csv
import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_modules.probes import OnlineProbes, pooled, ridge
from tests.test_cli import REPO, TINY_MODEL, data_args
from tests.test_ddp import ddp_shards, run_two_ranks  # noqa: F401 (a fixture)
from crocoman.main import main
from crocoman.synth import write_labelled_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def probe_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe")
    write_labelled_shards(out, 4, task="body", image_size=64, samples_per_shard=60, val_samples=90, vertices=False)
    return out / "val"


def test_ridge_recovers_a_linear_map_and_ignores_noise():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 12, generator=generator)
    truth = torch.randn(12, 3, generator=generator)
    targets = features @ truth + 0.5 + 0.01 * torch.randn(400, 3, generator=generator)
    predicted = ridge(features[:300], targets[:300], features[300:])
    assert (predicted - targets[300:]).abs().max() < 0.1
    noise = ridge(torch.randn(300, 12, generator=generator), targets[:300], features[300:])
    assert (noise - targets[300:]).abs().mean() > 10 * (predicted - targets[300:]).abs().mean()


def test_probe_scores_tell_informative_tokens_from_noise(probe_shards):
    """Tokens that carry each joint's heat and the 3D pose score near perfect; random tokens near chance."""
    probes = OnlineProbes(str(probe_shards), samples=90)
    probes.data = probes.load(64)
    keypoints, joints = probes.data["keypoints_2d"], probes.data["keypoints_3d"][..., :3]
    grid, size = (8, 8), 64  # 8 px tokens: the hottest token's centre is within PCK's 6.4 px of its joint
    cell = size / 8
    centres = torch.stack(torch.meshgrid((torch.arange(8) + 0.5) * cell - 0.5, (torch.arange(8) + 0.5) * cell - 0.5,
                                         indexing="ij"), -1).flip(-1).reshape(-1, 2)
    heat = torch.exp(-(centres[None, :, None] - keypoints[:, None, :, :2]).square().sum(-1) / (2 * cell**2))
    pose = (joints - joints[:, :1]).flatten(1)[:, None].expand(-1, 64, -1)  # every token knows the pose
    informative = torch.cat([heat, pose], -1)
    noise = torch.randn_like(informative)
    good, bad = probes.scores(informative, grid), probes.scores(noise, grid)
    assert good["keypoints_2d_pck"] > 0.9 and bad["keypoints_2d_pck"] < 0.5
    assert good["joints_3d_mpjpe_mm"] < 5 and bad["joints_3d_mpjpe_mm"] > 50
    assert good["joints_3d_pa_mpjpe_mm"] <= good["joints_3d_mpjpe_mm"] + 1e-3
    assert pooled(informative, grid).shape == (90, 5 * informative.shape[-1])


def test_probes_fit_on_the_first_two_thirds_and_score_on_the_rest(probe_shards):
    """README: fitted on 400 of the 600 people, scored on the other 200. Scores equal a ridge fitted on the first
    two thirds and scored on the last third, and differ from any other split's (here 60 / 30 of 90)."""
    assert OnlineProbes("unused").samples == 600
    probes = OnlineProbes(str(probe_shards), samples=90)
    probes.data = probes.load(64)
    joints = probes.data["keypoints_3d"][..., :3]
    relative = joints - joints[:, :1]
    generator = torch.Generator().manual_seed(0)
    pose = relative.flatten(1)[:, None].expand(-1, 64, -1)
    tokens = pose + 0.05 * torch.randn(pose.shape, generator=generator)  # every token knows the pose, roughly
    features = pooled(tokens, (8, 8))

    def mpjpe_mm(fitted: int) -> float:
        predicted = ridge(features[:fitted], relative[:fitted].flatten(1), features[fitted:]).view_as(
            relative[fitted:])
        return float(1000 * (predicted - relative[fitted:]).norm(dim=-1).mean())

    scored = probes.scores(tokens, (8, 8))["joints_3d_mpjpe_mm"]
    assert scored == pytest.approx(mpjpe_mm(60), rel=1e-6)
    assert all(scored != pytest.approx(mpjpe_mm(fitted), rel=1e-3) for fitted in (45, 59, 61, 75))


def logged_probes(run: Path, logger: str) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every ``probe/*`` scalar, as the logger wrote them to disk."""
    if logger == "csv":
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        names = [name for name in rows[0] if name.startswith("probe/")]
        return {name: [(int(row["step"]), float(row[name])) for row in rows if row[name]] for name in names}
    events = EventAccumulator(str(run))
    events.Reload()
    return {name: [(event.step, event.value) for event in events.Scalars(name)]
            for name in events.Tags()["scalars"] if name.startswith("probe/")}


@pytest.mark.parametrize("logger", ["csv", "tensorboard"])
def test_a_pretraining_run_logs_probes_at_step_zero_and_every_validation(pair_shards, probe_shards, tmp_path,
                                                                        monkeypatch, capsys, logger):
    """The probes and logger snippets over the hand demo, which has no probes of its own."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo_hand.yaml"), "-c", str(REPO / "configs/callbacks/probes.yaml"),
          "-c", str(REPO / f"configs/logger/{logger}.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
          "--trainer.max_steps=4", f"--trainer.callbacks.shards={probe_shards}", "--trainer.callbacks.samples=60"])
    probes = logged_probes(tmp_path / "runs" / logger / "version_0", logger)
    assert [step for step, _ in probes["probe/keypoints_2d_pck"]] == [0, 2, 4]  # the floor, then each validation
    assert all(0 <= value <= 1 for _, value in probes["probe/keypoints_2d_pck"])
    mpjpe = [value for _, value in probes["probe/joints_3d_mpjpe_mm"]]
    assert len(mpjpe) == 3 and min(mpjpe) > 0
    assert "probes (step 0 -> 4): keypoints_2d_pck" in capsys.readouterr().out


def test_missing_probe_shards_train_without_probes_or_fail_when_asked(tmp_path, caplog):
    probes = OnlineProbes(str(tmp_path / "nowhere"))
    assert probes.load(64) is None
    assert "online probes are off" in caplog.text and "crocoman-data labelled" in caplog.text
    with pytest.raises(FileNotFoundError, match="no shards found"):
        OnlineProbes(str(tmp_path / "nowhere"), missing="error").load(64)


def test_two_ranks_hold_the_same_probe_scores(ddp_shards, probe_shards, tmp_path):
    """Rank 0 measures, the other waits and receives: both ranks' histories and probe metrics are the same."""
    result = run_two_ranks(ddp_shards, "ddp.yaml", tmp_path, "--trainer.max_steps=4",
                           "--trainer.callbacks+=lightning_modules.probes.OnlineProbes",
                           f"--trainer.callbacks.shards={probe_shards}", "--trainer.callbacks.samples=60",
                           "--trainer.callbacks+=tests.recorders.ProbeRecord")
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"probes-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    history = ranks[0]["histories"][str(probe_shards)]  # the config's own probe set is not there: no history
    steps = [step for step, _ in history]
    assert steps[0] == 0 and steps[-1] == 4 and len(steps) >= 2
    assert ranks[0]["metrics"]["probe/keypoints_2d_pck"] == history[-1][1]["keypoints_2d_pck"]
