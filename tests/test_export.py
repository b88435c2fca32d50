"""`crocoman-export` turns a run's checkpoint into files other code bases load."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from backbone import CroCoNet
from backbone.weights import load_into_timm
from heads.completion import build_from_croco
from tests.conftest import REPO
from tests.test_cli import TINY_MODEL, data_args
from crocoman.export import export
from crocoman.main import main


@pytest.fixture(scope="module")
def trained_run(pair_shards, tmp_path_factory) -> Path:
    """The folder of a 2-step run of the tiny pretraining model: its config.yaml and checkpoints."""
    root = tmp_path_factory.mktemp("trained")
    with contextlib.chdir(root):
        main(["fit", "-c", str(REPO / "configs/pretrain/cpu_demo.yaml"), *TINY_MODEL, *data_args(pair_shards, 64, 4),
              "--trainer.max_steps=2"])
    return root / "runs/pretrain_cpu_demo"


def test_export_croco_and_timm_from_a_trained_run(trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(trained_run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    common = ["--config", str(trained_run / "config.yaml"), "--checkpoint", str(trained_run / "checkpoints/last.ckpt")]

    backbone, head, report = build_from_croco(export([*common, "--format", "croco", "--out", "croco.pth"]))
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(backbone.enc_blocks[1].attn.qkv.weight,
                               checkpoint["backbone.enc_blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(head.proj.weight, checkpoint["head.proj.weight"])

    state = load_file(export([*common, "--format", "timm", "--out", "encoder.safetensors"]))
    model = timm.create_model("vit_base_patch16_rope_224", pretrained=False, img_size=64, embed_dim=32, depth=2,
                              num_heads=2)
    timm_report = load_into_timm(state, model)
    assert set(timm_report.missing) == {"cls_token", "head.weight", "head.bias"} and not timm_report.shape_mismatched

    # As users run it: the installed command, in its own process, exits 0 on success ...
    command = Path(sys.executable).parent / "crocoman-export"
    done = subprocess.run([command, *common, "--format", "timm", "--out", "cli.safetensors"], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli.safetensors").is_file() and done.stderr.strip() == ""
    # That file, loaded by timm's own (strict) loader into a RoPE ViT without class token, as the export is meant
    # to be used, computes the tokens of the trained encoder: timm normalising with its preset's mean and std.
    encoder = CroCoNet(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                       decoder_num_heads=2).eval()
    encoder.load_state_dict({k.removeprefix("backbone."): v for k, v in checkpoint.items()
                             if k.startswith("backbone.")})
    vit = timm.create_model("vit_base_patch16_rope_224", pretrained=True, img_size=64, embed_dim=32, depth=2,
                            num_heads=2, class_token=False, global_pool="avg", num_classes=0,
                            pretrained_cfg_overlay={"file": str(tmp_path / "cli.safetensors")}).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = (torch.tensor(vit.pretrained_cfg[name]).view(1, 3, 1, 1) for name in ("mean", "std"))
    with torch.no_grad():
        ours = encoder.encode(images)[0]
        torch.testing.assert_close(vit.forward_features((images - mean) / std), ours, rtol=1e-5, atol=1e-5)
        assert ours.shape == (2, 16, 32) and ours.std() > 0.1  # tokens of every patch, not a constant
    # ... and non-zero, naming the file, when the checkpoint is not there: one line, not a traceback.
    failed = subprocess.run([command, "--config", str(trained_run / "config.yaml"), "--checkpoint", "missing.ckpt",
                             "--format", "timm", "--out", "x.safetensors"], capture_output=True, text=True)
    assert failed.returncode == 2 and "--checkpoint missing.ckpt: not found" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_export_says_what_is_wrong_with_its_input(trained_run, tmp_path, monkeypatch, capsys):
    """A config that is not a run's, and a checkpoint of another network: one line each, exit status 2 / 1."""
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    config["model"]["init_args"]["backbone"]["init_args"]["num_heads"] = 4  # the same shapes but ...
    config["model"]["init_args"]["backbone"]["init_args"]["embed_dim"] = 64  # ... not these
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(config))
    checkpoint = ["--checkpoint", str(trained_run / "checkpoints/last.ckpt"), "--format", "timm",
                  "--out", "x.safetensors"]
    for config_file, status, message in [
            (REPO / "configs/trainer/ddp.yaml", 2, "no model.init_args.backbone and head"),
            (tmp_path / "wider.yaml", 1, "checkpoint does not fit the model")]:
        with pytest.raises(SystemExit) as exit_info:
            export(["--config", str(config_file), *checkpoint])
        error = capsys.readouterr().err
        assert exit_info.value.code == status and message in error and str(config_file) in error, error
    assert not (tmp_path / "x.safetensors").exists()
