"""The pretraining study (crocoman-study): the MAE arm cannot see its target, and the whole pipeline runs
end to end on tiny real data, resumes from finished runs, and validates the GPU preset."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from backbone import CroCoNet, RandomMasking
from datamodules import PairDataModule
from heads import CompletionHead
from lightning_modules import PAIR_TYPES, PretrainModule
from crocoman.study import ARMS, MODELS, TASKS, ensure_data, label_subset, load_preset
from crocoman.study import run_study as study


def single_image_batch(pair_shards: Path, single_image: bool) -> dict:
    data = PairDataModule(str(pair_shards / "val"), val_shards=str(pair_shards / "val"), batch_size=4, num_workers=0,
                          image_size=32, single_image=single_image)
    return data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)


def test_mae_arm_cannot_see_its_hidden_patches(pair_shards):
    """Changing only the hidden patches of image 1 must leave the MAE prediction unchanged; with the literal
    'image 2 = image 1' it changes, which is what the blank image 2 prevents."""
    batch = single_image_batch(pair_shards, single_image=True)
    assert batch["image2"].abs().sum() == 0 and batch["image1"].std() > 0.01
    assert PAIR_TYPES[batch["pair_type"][0]] == "single_image" and len(set(batch["pair_type"].tolist())) == 1
    pairs = single_image_batch(pair_shards, single_image=False)
    assert pairs["image2"].abs().sum() > 0 and "single_image" not in {PAIR_TYPES[t] for t in pairs["pair_type"]}
    torch.manual_seed(0)
    module = PretrainModule(CroCoNet(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                     decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2), CompletionHead(),
                            masking=RandomMasking(0.75)).eval()
    image1 = batch["image1"]
    mask = module.masking(len(image1), (4, 4), None, image1.device)
    hidden_pixels = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(image1)
    changed = torch.where(hidden_pixels, torch.rand_like(image1), image1)
    with torch.no_grad():
        mae = module(image1, batch["image2"], mask), module(changed, batch["image2"], mask)
        copy = module(image1, image1, mask), module(changed, changed, mask)
    torch.testing.assert_close(mae[0], mae[1])
    assert (copy[0] - copy[1]).abs().max() > 1e-3


def test_label_subsets_are_fixed_per_seed_and_shared(tmp_path):
    for index in range(20):
        (tmp_path / f"labelled-{index:06d}.tar").touch()
    tenth = label_subset(tmp_path, 0.1, seed=0)
    assert len(tenth) == 2 and tenth == label_subset(tmp_path, 0.1, seed=0)
    assert any(label_subset(tmp_path, 0.1, seed) != tenth for seed in range(1, 5))
    assert len(label_subset(tmp_path, 1.0, seed=3)) == 20


TOY_PRESET = {
    "name": "toy",
    "data": {"image_size": 32, "pairs": {"groups": 4, "val_groups": 2, "cameras": 2, "times": 2, "per_shard": 4},
             "hand_pairs": {"groups": 4, "val_groups": 2, "cameras": 2, "times": 2, "per_shard": 4},
             "bodies": {"samples": 8, "val_samples": 4, "per_shard": 4},
             "hands": {"samples": 8, "val_samples": 4, "per_shard": 4}},
    "probes": {"samples": 4},
    "label_fractions": [0.5],
    "threads": 1,
    "backbone": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                 "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
    "trainer": {"log_every_n_steps": 1, "enable_progress_bar": False, "enable_model_summary": False},
    "loader": {"num_workers": 0, "shuffle_buffer": 4},
    "pretrain": {"config": "configs/pretrain/cpu_demo.yaml", "steps": 2, "batch_size": 2,
                 "overrides": {"model.init_args.picture_every_n_steps": 1000}},
    "finetune": {"body_mesh": {"config": "configs/finetune/body_mesh_smpl_cpu.yaml", "steps": 1, "batch_size": 2},
                 "gesture": {"config": "configs/finetune/gesture_cpu.yaml", "steps": 1, "batch_size": 2}},
}


def write_preset(tmp_path: Path, **changes) -> Path:
    preset = json.loads(json.dumps(TOY_PRESET))
    preset["data"]["root"] = str(tmp_path / "data")
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")
        node = preset
        for key in parents:
            node = node[key]
        node[last] = value
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_study_end_to_end_on_toy_data_and_resume(tmp_path, capsys):
    preset = write_preset(tmp_path)
    arguments = ["--preset", str(preset), "--seeds", "0", "--out", str(tmp_path / "out"),
                 "--runs", str(tmp_path / "runs")]
    report = study(arguments)
    first = capsys.readouterr().out
    pretrainings = (len(ARMS) - 1) * len(MODELS)
    runs = pretrainings + len(ARMS) * len(TASKS)
    assert first.count(": training (") == runs

    out = tmp_path / "out" / "toy"
    saved = json.loads((out / "results.json").read_text())
    assert saved["finetune"] == report["finetune"] and len(saved["pretrain"]) == pretrainings
    for record in saved["finetune"]:
        assert record["global_step"] == 1 and record["metrics"][record["metric"]] == record["value"]
    gesture = [r["value"] for r in saved["finetune"] if r["task"] == "gesture"]
    assert all(0 <= value <= 1 for value in gesture)
    assert all(r["value"] > 0 for r in saved["finetune"] if r["task"] == "body_mesh")
    # Probes: measured before the first step and after the last, the same random encoder for every arm.
    for record in saved["pretrain"]:
        assert [step for step, _ in record["probes"]] == [0, 2]
        assert record["probe_floor"] == record["probes"][0][1] and record["probe_final"] == record["probes"][1][1]
        assert {"keypoints_2d_pck", "joints_3d_pa_mpjpe_mm"} <= set(record["probe_final"])
    assert "gesture_top1" in next(r for r in saved["pretrain"] if r["model"] == "hand")["probe_final"]
    assert saved["floors_agree"] is True

    table = (out / "results.md").read_text()
    mesh = next(r["value"] for r in saved["finetune"] if (r["arm"], r["task"]) == ("view+pose", "body_mesh"))
    probe_row, finetune_row = [line for line in table.splitlines() if line.startswith("| (a) cross-view + cross-pose")]
    assert f"{mesh:.2f} ± 0.00" in finetune_row and finetune_row.count("±") == 2
    pck = 100 * next(r for r in saved["pretrain"] if (r["model"], r["arm"]) == ("body", "view+pose")
                     )["probe_final"]["keypoints_2d_pck"]
    assert probe_row.startswith(f"| (a) cross-view + cross-pose | {pck:.2f} ± 0.00 |")
    floor = 100 * next(r for r in saved["pretrain"] if r["model"] == "body")["probe_floor"]["keypoints_2d_pck"]
    scratch_row = [line for line in table.splitlines() if line.startswith("| (e) no pretraining")][0]
    assert scratch_row.startswith(f"| (e) no pretraining | {floor:.2f} ± 0.00 |")
    assert "| commit |" in table and "| wall time |" in table and "crocoman-study --preset" in table
    assert Image.open(out / "plot.png").size[0] > 400
    toy = tmp_path / "runs/toy"
    configs = [yaml.safe_load(p.read_text()) for p in (toy / "finetune/scratch").rglob("study_config.yaml")]
    assert len(configs) == 2 and all(c["model"]["init_args"]["pretrained"] is None for c in configs)
    view = yaml.safe_load((toy / "finetune/view/gesture/50pct/seed0/study_config.yaml").read_text())
    pretrained = view["model"]["init_args"]["pretrained"]
    assert pretrained == str(toy / "pretrain/hand/view/seed0/checkpoints/last.ckpt")  # gestures: the hand model
    assert Path(pretrained).is_file() and len(view["data"]["init_args"]["train_shards"]) == 1
    mae = yaml.safe_load((toy / "pretrain/body/mae/seed0/study_config.yaml").read_text())
    assert mae["data"]["init_args"]["single_image"] is True
    assert mae["trainer"]["logger"][0]["init_args"]["group"] == "study-toy"
    probes = [c for c in mae["trainer"]["callbacks"] if c["class_path"].endswith("OnlineProbes")]
    assert [c["init_args"]["shards"] for c in probes] == [str(tmp_path / "data/bodies/val")]
    assert list((toy / "pretrain/body/mae/seed0/wandb").glob("offline-run-*"))

    # Resume: a lost record is redone, the others are reused, and the table is the same.
    redone = "finetune/mae/gesture/50pct/seed0"
    (out / "records" / f"{redone}.json").unlink()
    again = study(arguments)["finetune"]
    assert [r for r in again if r["key"] != redone] == [r for r in report["finetune"] if r["key"] != redone]
    assert next(r for r in again if r["key"] == redone)["global_step"] == 1
    second = capsys.readouterr().out
    assert second.count(": training (") == 1 and second.count(": reusing ") == runs - 1
    # On a fresh clone (run directories gone, records kept with the results) nothing is trained again, unless a
    # fine-tune lost its record: then its pretraining is redone for the weights it starts from, and only that.
    shutil.rmtree(tmp_path / "runs")
    assert study(arguments)["finetune"] == again and capsys.readouterr().out.count(": training (") == 0
    (out / "records" / f"{redone}.json").unlink()
    study(arguments)
    third = capsys.readouterr().out
    assert third.count(": training (") == 2 and "pretrain/hand/mae/seed0: training" in third
    assert f"{redone}: training" in third

    # Data written with other settings is refused, not silently mixed with the cached results.
    changed = load_preset(str(write_preset(tmp_path, **{"data/hands/samples": 12})))
    with pytest.raises(ValueError, match="data/hands holds hands written with"):
        ensure_data(changed)


def test_gpu_preset_validates_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert study(["--preset", "gpu", "--seeds", "0", "--dry-run"]) == {}
    out = capsys.readouterr().out
    assert "28 run configs validated" in out and "would write pairs" in out and "would write hand_pairs" in out
    config = yaml.safe_load(Path("runs/study/gpu/pretrain/hand/view/seed0/study_config.yaml").read_text())
    assert config["model"]["init_args"]["backbone"]["init_args"]["embed_dim"] == 384
    assert config["data"]["init_args"]["cross_view_ratio"] == 1.0
    assert config["data"]["init_args"]["train_shards"] == "data/study/gpu/hand_pairs/train"
    assert not Path("data/study/gpu/pairs").exists()


def test_a_config_that_does_not_validate_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preset = write_preset(tmp_path, **{"pretrain/overrides": {"model.init_args.no_such_argument": 1}})
    with pytest.raises(RuntimeError, match="does not validate"):
        study(["--preset", str(preset), "--seeds", "0", "--dry-run"])
