"""Backbone sizes a fine-tuning config leaves out come from its pretrained checkpoint (``crocoman.backbone_sizes``)."""

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from backbone import CroCoNet
from backbone.weights import to_croco_checkpoint
from crocoman.main import main
from heads import CompletionHead
from tests.conftest import REPO
from tests.test_gesture import pretrain_checkpoint

DEMO_CHECKPOINT = "runs/pretrain_cpu_demo/checkpoints/last.ckpt"
CPU_CONFIGS = sorted(p.name for p in (REPO / "configs/finetune").glob("*_cpu.yaml"))
BACKBONE_SNIPPET = REPO / "configs/backbone/cpu_demo.yaml"


def backbone_of(config: dict) -> dict:
    return config["model"]["init_args"]["backbone"]["init_args"]


DEMO_SIZES = backbone_of(yaml.safe_load(BACKBONE_SNIPPET.read_text()))


def printed_config(args: list[str], capsys: pytest.CaptureFixture) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding what `make pretrain` leaves, at the demo's sizes."""
    workdir = tmp_path_factory.mktemp("workdir")
    pretrain_checkpoint(workdir / DEMO_CHECKPOINT, **DEMO_SIZES)
    return workdir


def test_the_backbone_snippet_is_the_model_of_the_cpu_pretraining_configs():
    for pretraining in ("cpu_demo.yaml", "cpu_demo_hand.yaml"):
        assert backbone_of(yaml.safe_load((REPO / "configs/pretrain" / pretraining).read_text())) == DEMO_SIZES


@pytest.mark.parametrize("config", CPU_CONFIGS)
def test_cpu_configs_take_the_sizes_of_the_demo_checkpoint(config, demo_checkpoint, monkeypatch, capsys):
    """With `make pretrain`'s checkpoint in place, each CPU config parses as it did when it listed the demo's
    sizes itself (here: given by the snippet), for --print_config, the run's config.yaml and the model alike."""
    monkeypatch.chdir(demo_checkpoint)
    path = str(REPO / "configs/finetune" / config)
    parsed = printed_config(["-c", path], capsys)
    assert parsed["model"]["init_args"]["pretrained"] == DEMO_CHECKPOINT
    assert parsed == printed_config(["-c", path, "-c", str(BACKBONE_SNIPPET)], capsys)
    assert DEMO_SIZES.items() <= backbone_of(parsed).items()


def test_sizes_come_from_a_croco_release_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sizes = {"img_size": 64, "patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 4, "decoder_embed_dim": 32,
             "decoder_depth": 1, "decoder_num_heads": 2, "pos_embed": "cosine"}
    backbone, head = CroCoNet(**sizes), CompletionHead()
    head.bind(backbone)
    torch.save(to_croco_checkpoint(backbone, head), tmp_path / "CroCo_release.pth")
    parsed = printed_config(["-c", str(REPO / "configs/finetune/gesture_cpu.yaml"),
                             "--model.init_args.pretrained=CroCo_release.pth"], capsys)
    assert sizes.items() <= backbone_of(parsed).items()


def test_given_sizes_that_differ_from_the_checkpoint_stop_the_run_naming_both(demo_checkpoint, monkeypatch):
    """A head count changes no weight shape: without the check, this encoder would load and train unnoticed.
    (jsonargparse reports the module's RuntimeError inside a ValueError of its own.)"""
    monkeypatch.chdir(demo_checkpoint)
    with pytest.raises(ValueError, match=r"does not fit the backbone: num_heads=6 here, 3 in the checkpoint"):
        main(["fit", "-c", str(REPO / "configs/finetune/gesture_cpu.yaml"),
              "--model.init_args.backbone.init_args.num_heads=6", "--trainer.logger=false"])


def test_without_a_pretrained_checkpoint_the_class_defaults_apply(tmp_path, monkeypatch, capsys):
    """What README and the CPU configs' headers say: from scratch, give the sizes (the snippet) or get ViT-B/16."""
    monkeypatch.chdir(tmp_path)
    args = ["-c", str(REPO / "configs/finetune/gesture_cpu.yaml"), "--model.init_args.pretrained=null"]
    vit_b = inspect.signature(CroCoNet).parameters["embed_dim"].default
    assert backbone_of(printed_config(args, capsys))["embed_dim"] == vit_b
    assert DEMO_SIZES.items() <= backbone_of(printed_config([*args, "-c", str(BACKBONE_SNIPPET)], capsys)).items()
