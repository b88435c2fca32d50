"""The `crocoman` command exactly as users run it, on real shards."""

import re
from pathlib import Path

import pytest
import yaml
import torch

from tests.conftest import REPO
from crocoman.main import main

TINY_MODEL = [
    "--model.backbone.init_args.img_size=64", "--model.backbone.init_args.embed_dim=32",
    "--model.backbone.init_args.depth=2", "--model.backbone.init_args.num_heads=2",
    "--model.backbone.init_args.decoder_embed_dim=32", "--model.backbone.init_args.decoder_depth=1",
    "--model.backbone.init_args.decoder_num_heads=2",
]


def data_args(shards: Path, image_size: int, batch_size: int) -> list[str]:
    return [f"--data.train_shards={shards / 'train'}", f"--data.val_shards={shards / 'val'}",
            f"--data.image_size={image_size}", f"--data.batch_size={batch_size}", "--data.num_workers=0",
            "--data.shuffle_buffer=8", f"--data.epoch_pairs={2 * batch_size}"]


def test_pretrain_fit_two_steps_writes_checkpoint_pictures_and_wandb(pair_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
          "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--model.init_args.picture_every_n_steps=1"])
    run = tmp_path / "runs/pretrain_cpu_demo"
    checkpoint = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert any(k.startswith("backbone.enc_blocks.0.attn.qkv") for k in checkpoint["state_dict"])
    assert sorted(p.name for p in (run / "pictures").glob("*.png"))[:1] == ["train_reconstruction_step0000000.png"]
    assert list((run / "wandb").glob("offline-run-*"))
    assert (run / "config.yaml").exists()
    printed = capsys.readouterr().out
    assert "crocoman: finished 2 steps" in printed and "W&B run (offline)" in printed
    assert f"(last: {run / 'checkpoints/last.ckpt'})" in printed
    best = re.search(r"best \(val/loss=[\d.]+\): (\S+\.ckpt)", printed)
    assert best and Path(best.group(1)).parent == run / "checkpoints" and Path(best.group(1)).is_file()
    pictures = len(list((run / "pictures").glob("*.png")))
    assert f"pictures: runs/pretrain_cpu_demo/pictures ({pictures} PNG)" in printed and pictures > 0


def test_default_root_dir_moves_the_whole_run(pair_shards, tmp_path, monkeypatch):
    """The configs leave the W&B and checkpoint folders to the run folder, so one override moves all of it."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
          "--trainer.max_steps=1", "--trainer.default_root_dir=elsewhere"])
    assert (tmp_path / "elsewhere/checkpoints/last.ckpt").is_file()
    assert list((tmp_path / "elsewhere/wandb").glob("offline-run-*"))
    assert not (tmp_path / "runs").exists()


def test_fit_without_a_logger_leaves_the_lr_monitor_out(pair_shards, tmp_path, monkeypatch):
    """The configs' LearningRateMonitor needs a logger; `--trainer.logger=false` must not stop the run."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="no logger, so the config's LearningRateMonitor is left out"):
        main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
              "--trainer.max_steps=1", "--trainer.logger=false"])
    checkpoint = torch.load(tmp_path / "runs/pretrain_cpu_demo/checkpoints/last.ckpt", map_location="cpu",
                            weights_only=True)
    assert checkpoint["global_step"] == 1


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs/pretrain").glob("*.yaml")))
def test_every_pretrain_config_runs(config, pair_shards, tmp_path, monkeypatch, capsys):
    """Each YAML runs one training and one validation batch on CPU at its own model size: one optimiser
    step (the GPU configs' accelerator, strategy and precision are set to CPU ones), and, as a fast_dev_run,
    writes no checkpoint."""
    monkeypatch.chdir(tmp_path)
    image_size = 128 if config.startswith("cpu_demo") else 224
    main(["fit", "-c", str(REPO / "configs/pretrain" / config), *data_args(pair_shards, image_size, 2),
          "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.devices=1",
          "--trainer.strategy=auto", "--trainer.precision=32-true"])
    assert "crocoman: finished 1 steps" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.ckpt*"))


def test_missing_shards_are_reported_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="crocoman-data synth"):
        main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL,
              "--data.train_shards=nowhere", "--trainer.max_steps=1"])


def assert_contains(parsed, snippet, path: str = "") -> None:
    """Every key the snippet sets has the snippet's value in the parsed config (scalars equal; lists of
    names, such as FSDP's wrap policies, which are sets of classes, equal in any order; ``key+`` lists at the
    end of ``key``'s)."""
    if isinstance(snippet, list) and all(isinstance(item, str) for item in snippet):
        assert sorted(parsed) == sorted(snippet), f"{path}: parsed {parsed!r}, snippet {snippet!r}"
    elif isinstance(snippet, list):
        assert isinstance(parsed, list) and len(parsed) == len(snippet), f"{path}: parsed {parsed!r}"
        for index, (parsed_item, item) in enumerate(zip(parsed, snippet)):
            assert_contains(parsed_item, item, f"{path}[{index}]")
    elif isinstance(snippet, dict):
        assert isinstance(parsed, dict), f"{path}: {parsed!r} is not a mapping"
        for key, value in snippet.items():
            name = key.removesuffix("+")
            assert name in parsed, f"{path}.{name} missing from the parsed config"
            assert_contains(parsed[name][-len(value):] if key.endswith("+") else parsed[name], value, f"{path}.{key}")
    else:
        assert parsed == snippet, f"{path}: parsed {parsed!r}, snippet {snippet!r}"


SNIPPETS = sorted(str(p.relative_to(REPO)) for folder in ("trainer", "logger", "callbacks")
                  for p in (REPO / "configs" / folder).glob("*.yaml"))


@pytest.mark.parametrize("snippet", SNIPPETS)
def test_snippets_compose_with_task_configs(snippet, capsys):
    """Every trainer, logger and callbacks snippet layers over a task config and every value it sets is in the
    result; a callbacks snippet adds its callbacks after the task's own (GPU snippets are run where GPUs are)."""
    task = REPO / "configs/pretrain/vitb.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(task), "-c", str(REPO / snippet), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    values = yaml.safe_load((REPO / snippet).read_text())
    assert_contains(printed, values)
    if snippet.startswith("configs/callbacks/"):
        own = [callback["class_path"] for callback in yaml.safe_load(task.read_text())["trainer"]["callbacks"]]
        added = [callback["class_path"] for callback in values["trainer"].get("callbacks+", [])]
        assert added and [callback["class_path"] for callback in printed["trainer"]["callbacks"]] == own + added


def test_tensorboard_logger_gets_scalars_and_pictures(pair_shards, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
          "-c", str(REPO / "configs/logger/tensorboard.yaml"), "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
          "--model.init_args.picture_every_n_steps=1"])
    run = tmp_path / "runs/tensorboard/version_0"
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"loss", "loss/cross_view", "loss/cross_pose", "val/loss"} <= set(events.Tags()["scalars"])
    assert "train/reconstruction" in events.Tags()["images"]
    assert list((run / "pictures").glob("train_reconstruction_step*.png"))
