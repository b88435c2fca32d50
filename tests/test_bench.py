"""crocoman-bench end to end on CPU, and the analytic FLOP count against torch's counter."""

import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backbone import CroCoNet, RandomMasking
from body import BodyModel
from crocoman import bench
from crocoman.flops import CroCoDims, pretrain_step_flops
from crocoman.synth.bodymodel import write_body_models
from datamodules.format import MESH_HAS_KEYS
from datamodules.mesh import BODY_MODELS
from heads import CompletionHead
from heads.dense import NUM_PARTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 2,
        "decoder_num_heads": 2}
# Every fine-tuning config at tiny size: the backbone and data above, each head small in its own arguments.
TINY_FINETUNE = {**{f"model.init_args.backbone.init_args.{key}": value for key, value in TINY.items()},
                 "model.init_args.backbone.init_args.img_size": 32, "data.init_args.image_size": 32,
                 "data.init_args.batch_size": 2}
TINY_MESH_HEAD = {"dim": 32, "depth": 1, "num_heads": 2}
TINY_HEADS = {"gesture": {}, "body_mesh_smpl": TINY_MESH_HEAD, "body_mesh_model_free": TINY_MESH_HEAD,
              "body_mesh_joint_maps": {"features": 16, "hidden": 8}, "hand_mesh_mano": TINY_MESH_HEAD,
              "densepose": {"features": 16}}


@pytest.fixture(scope="module")
def body_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("body_models")
    write_body_models(root, ("smpl", "mano"))
    return root


def counted_train_step_flops(config: dict, batch_size: int, mask_ratio: float) -> int:
    """Matmul FLOPs torch executes for one forward + backward, attention through the math backend."""
    torch.manual_seed(0)
    net = CroCoNet(**config)
    head = CompletionHead()
    head.bind(net)
    size = config["img_size"]
    image1, image2 = torch.rand(batch_size, 3, size, size), torch.rand(batch_size, 3, size, size)
    mask = RandomMasking(mask_ratio)(batch_size, net.patch_grid)
    # The default CPU kernel (_scaled_dot_product_flash_attention_for_cpu) has no FLOP formula in
    # torch 2.14, so the counter would miss every attention score; the math backend is plain bmm.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        tokens1, pos1 = net.encode(image1, mask)
        tokens2, pos2 = net.encode(image2)
        head(net.decode(tokens1, pos1, tokens2, pos2, mask)).square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(("config", "mask_ratio"), [
    (TINY, 0.75),
    (yaml.safe_load(bench.CPU_DEMO_CONFIG.read_text())["model"]["init_args"]["backbone"]["init_args"], 0.9),
])
def test_analytic_flops_match_flop_counter(config, mask_ratio):
    analytic = pretrain_step_flops(config, batch_size=2, mask_ratio=mask_ratio)
    counted = counted_train_step_flops(config, 2, mask_ratio)
    # Exactly what runs: autograd skips the input gradient of the patch embedding (images need none).
    assert counted == pytest.approx(analytic["executed_train_step"], rel=1e-6)
    if config is not TINY:  # at the demo's size that convention gap is a few percent of the step
        assert counted == pytest.approx(analytic["train_step"], rel=0.03)
    assert analytic["train_step"] == 3 * analytic["forward"]


def test_flops_from_model_equal_flops_from_config():
    net = CroCoNet(**TINY)
    assert CroCoDims.from_model(net) == CroCoDims.from_config(TINY)
    assert pretrain_step_flops(net, 4) == pretrain_step_flops(TINY, 4)
    # Linear in the batch; more tokens per image at a larger image size.
    assert pretrain_step_flops(TINY, 4)["forward"] == 2 * pretrain_step_flops(TINY, 2)["forward"]
    assert pretrain_step_flops(TINY, 2, image_size=128)["forward"] > 4 * pretrain_step_flops(TINY, 2)["forward"]


def test_peak_table():
    assert bench.peak_bf16_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert bench.peak_bf16_flops("NVIDIA H200")[0] == 989e12
    assert bench.peak_bf16_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    peak, reason = bench.peak_bf16_flops("NVIDIA GeForce RTX 4090")
    assert peak is None and "PEAK_BF16_FLOPS" in reason


def test_bench_on_cpu_writes_the_result_file(tmp_path, pair_shards, monkeypatch):
    # The data case warms up until the shuffle buffer is full: ViT-B's 2000 pairs through one worker in each of
    # three modes would take most of this test's time and check nothing more.
    configured = bench.data_arguments
    monkeypatch.setattr(bench, "data_arguments", lambda path: {**configured(path), "shuffle_buffer": 16})
    report = bench.run_bench(["--out", str(tmp_path), "--steps", "1", "--warmup", "1", "--device", "cpu",
                         "--shards", str(pair_shards / "train"), "--finetune", "gesture"])
    files = list(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [f"{report['device']['slug']}.json"]
    assert files[0].name.startswith("cpu-") and files[0].name.endswith("cores.json")
    saved = json.loads(files[0].read_text())
    assert saved == json.loads(json.dumps(report))
    assert {"date", "git_commit", "versions", "device", "cases", "summary"} <= saved.keys()
    assert {"torch", "timm"} <= saved["versions"].keys()

    demo = saved["cases"]["cpu_demo_train"]
    assert demo["settings"]["batch_size"] == 32 and demo["settings"]["backbone"]["embed_dim"] == 192
    assert demo["results"]["pairs_per_s"] > 0 and demo["results"]["model_flops_per_step"] > 0
    assert demo["results"]["peak_memory_mib"] > 0 and "RSS" in demo["results"]["memory_measure"]
    assert demo["results"]["mfu"] is None and demo["results"]["mfu_reason"]

    assert "CUDA" in saved["cases"]["vit_pretrain"]["skipped"]

    data = saved["cases"]["data_pipeline"]
    for size in ("224px", "128px"):
        result = data["results"][size]
        assert all(result[mode]["pairs_per_s"] > 0 for mode in ("per_sample", "worker", "device"))
        assert result["pairs_per_s_per_worker"] == result["worker"]["pairs_per_s"]
        assert result["speedup_vs_per_sample"] == result["worker"]["pairs_per_s"] / result["per_sample"]["pairs_per_s"]
        stages = result["stages"]
        assert "colour jitter" in stages["per_sample"]["ms_per_pair"] and "colour jitter" in stages["worker"]["ms_per_pair"]
        assert "colour jitter" not in stages["device"]["ms_per_pair"]  # left to the training device
        assert all(stages[mode]["total_ms_per_pair"] > 0 for mode in ("per_sample", "worker", "device"))
    assert data["settings"]["224px"]["image_size"] == 224 and data["settings"]["128px"]["image_size"] == 128
    assert data["workers_to_feed"]["cpu_demo_128px"] >= 1
    assert saved["summary"].startswith("crocoman-bench: cpu-")

    # The CPU demo config trained from the shards (its one worker, each mode) and from tensors.
    from_shards = saved["cases"]["pretrain_from_shards"]
    assert from_shards["settings"]["config"] == "configs/pretrain/cpu_demo.yaml"
    runs = from_shards["results"]
    assert set(runs) == {"from_tensors", "from_shards_worker_1_workers", "from_shards_device_1_workers"}
    for name in ("from_shards_worker_1_workers", "from_shards_device_1_workers"):
        assert runs[name]["vs_from_tensors"] == runs[name]["pairs_per_s"] / runs["from_tensors"]["pairs_per_s"]
    assert "from shards vs tensors" in saved["summary"]

    # The gesture module at the full size of its CPU config.
    finetune = saved["cases"]["finetune_train"]
    assert list(finetune["results"]) == ["gesture"]
    gesture_settings = finetune["settings"]["modules"]["gesture"]
    assert gesture_settings["config"] == "configs/finetune/gesture_cpu.yaml"
    assert gesture_settings["batch_size"] == 32 and gesture_settings["backbone"]["embed_dim"] == 192
    gesture = finetune["results"]["gesture"]
    assert gesture["samples_per_s"] > 0 and gesture["optimizer_steps"] == 2 and math.isfinite(gesture["last_loss"])
    assert gesture["first_step_s"] > 0
    assert "finetune gesture" in saved["summary"]


def test_data_case_writes_its_own_shards_without_shards_flag(tmp_path, monkeypatch):
    """Without --shards the data case renders shards with crocoman.synth (tiny ones here)."""
    monkeypatch.setattr(bench, "SYNTH_SHARDS", {**bench.SYNTH_SHARDS, "num_groups": 2, "groups_per_shard": 1})
    monkeypatch.setattr(bench, "SYNTH_SOURCE_SIZE", {"224px": 32, "128px": 32})
    monkeypatch.setattr(bench, "VITB_CONFIG", bench.CPU_DEMO_CONFIG)  # batch 32 instead of 64
    data = bench.data_case(1, None, tmp_path)
    assert not multiprocessing.active_children()  # no loader worker outlives its case (and its shards)
    assert data["settings"]["128px"]["shards"]["source"] == "crocoman.synth.write_pair_shards"
    assert data["results"]["128px"]["pairs_per_s_per_worker"] > 0


def test_vit_case_code_path_on_cpu():
    """The CUDA-only case, shrunk to a tiny model so its bookkeeping runs here (eager only)."""
    case = bench.VitCase("tiny", partial(CroCoNet, **TINY), 2, "vit_tiny_patch16_224")
    device = torch.device("cpu")
    out = bench.vit_pretrain_case(device, bench.describe_device(device), steps=1, warmup=1, compile_modes=(False,),
                                  cases=[case], image_size=64)
    eager = out["results"]["tiny"]["eager"]
    assert eager["pairs_per_s"] > 0 and eager["achieved_tflops"] > 0 and eager["mfu"] is None
    versus = out["results"]["tiny"]["encoder_vs_timm_eager"]
    assert versus["ours"]["images_per_s"] > 0 and versus["timm"]["images_per_s"] > 0
    assert versus["ratio_step_time_ours_over_timm"] > 0


def test_vit_options_choose_the_models_batch_and_compile_modes():
    """--vit, --vit-batch-size and --no-compile, as parsed, pick the CUDA case's runs (the case itself needs CUDA)."""
    assert bench.vit_plan(bench.parse_args([])) == ((False, True), list(bench.VIT_CASES))
    modes, cases = bench.vit_plan(bench.parse_args(["--vit", "vit_l", "--vit-batch-size", "8", "--no-compile"]))
    assert modes == (False,) and [(case.name, case.batch_size) for case in cases] == [("vit_l", 8)]
    assert cases[0].timm_name == "vit_large_patch16_224"
    with pytest.raises(SystemExit):
        bench.parse_args(["--vit", "vit_h"])


def test_skip_data(tmp_path):
    report = bench.run_bench(["--out", str(tmp_path), "--steps", "1", "--warmup", "0", "--device", "cpu", "--skip-data",
                         "--skip-from-shards", "--skip-finetune", "--skip-vit"])
    assert report["cases"]["data_pipeline"] == {"skipped": "--skip-data"}
    assert report["cases"]["pretrain_from_shards"] == {"skipped": "--skip-from-shards"}
    assert report["cases"]["finetune_train"] == {"skipped": "--skip-finetune"}
    assert report["cases"]["vit_pretrain"] == {"skipped": "--skip-vit"}
    assert "finetune: skipped" in report["summary"] and "ViT: skipped" in report["summary"]
    assert report["cases"]["cpu_demo_train"]["results"]["first_step_s"] is None
    assert "data: skipped" in report["summary"]


def test_the_installed_command_exits_zero_after_writing_its_file(tmp_path):
    """Run as users run it (a console script in its own process), so its exit status is the one make and
    `set -e` scripts see."""
    command = Path(sys.executable).parent / "crocoman-bench"
    done = subprocess.run([command, "--out", str(tmp_path), "--steps", "1", "--warmup", "0", "--device", "cpu",
                           "--skip-data", "--skip-from-shards", "--skip-finetune", "--skip-vit"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("crocoman-bench: cpu-") and len(list(tmp_path.glob("*.json"))) == 1
    wrong = subprocess.run([command, "--steps", "0"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "--steps must be at least 1" in wrong.stderr


def test_vit_b_case_is_the_vitb_config():
    """Case 2's ViT-B is the network configs/pretrain/vitb.yaml trains, so its MFU is that run's."""
    config = yaml.safe_load(bench.VITB_CONFIG.read_text())["model"]["init_args"]["backbone"]["init_args"]
    assert CroCoDims.from_model(bench.VIT_CASES[0].build()) == CroCoDims.from_config(config)


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_every_finetune_module_trains_from_its_config(device_type, body_models, tmp_path):
    """Case 4 on CPU at tiny size; with "cuda", the GPU configs (bf16-mixed) run on CPU, which is all of
    the CUDA path but the device. Each module's own training_step and optimiser run every step."""
    device = torch.device("cpu")
    for case in bench.FINETUNE_CASES:
        config_path = case.config(torch.device(device_type))
        config = yaml.safe_load(config_path.read_text())
        overrides = {**TINY_FINETUNE, **{f"model.init_args.head.init_args.{key}": value
                                         for key, value in TINY_HEADS[case.name].items()}}
        run = bench.finetune_train(case, device, steps=2, warmup=2, body_models=body_models, root_dir=tmp_path,
                                   config_path=config_path, overrides=overrides)
        settings, results = run["settings"], run["results"]
        assert settings["config"] == str(config_path.relative_to(bench.REPO))
        assert config_path.name == (case.cuda_config if device_type == "cuda" else case.cpu_config)
        assert settings["module"] == config["model"]["class_path"]
        assert settings["head"]["class_path"] == config["model"]["init_args"]["head"]["class_path"]
        assert settings["precision"] == config["trainer"]["precision"]
        assert settings["batch_size"] == 2 and settings["backbone"]["embed_dim"] == TINY["embed_dim"]
        assert 0 < settings["trainable_parameters"] < settings["parameters"]  # the decoder is frozen
        assert results["optimizer_steps"] == 4 and math.isfinite(results["last_loss"]), case.name
        assert results["samples_per_s"] == pytest.approx(2 / results["step_time_s"])
        assert results["first_step_s"] > 0 and results["peak_memory_mib"] >= 0
    assert not any(tmp_path.iterdir())  # no logs or checkpoints: only the training loop was timed


def test_gpu_configs_are_the_ones_named_without_cpu():
    for case in bench.FINETUNE_CASES:
        cpu, cuda = case.config(torch.device("cpu")), case.config(torch.device("cuda"))
        assert cpu.is_file() and cuda.is_file() and cpu.name == cuda.name.replace(".yaml", "_cpu.yaml")


@pytest.mark.parametrize("model_type", ["smpl", "mano"])
def test_synthetic_mesh_batch_keeps_the_mesh_datamodules_contract(model_type, body_models):
    """Shapes of datamodules.MeshDataModule, every label flagged, and the mesh in front of the camera, in the crop."""

    class Module:  # what mesh_batch reads of a MeshRecoveryModule
        body_model = BodyModel(model_type, str(body_models))

    spec = BODY_MODELS[model_type]
    batch = bench.mesh_batch(Module(), 3, 32, torch.Generator().manual_seed(0))
    assert batch["image"].shape == (3, 3, 32, 32) and batch[spec.pose_key].shape == (3, spec.pose_dim)
    assert batch["vertices"].shape == (3, spec.num_vertices, 3) and batch["betas"].shape == (3, 10)
    assert all(batch["has"][name].all() for name in MESH_HAS_KEYS)
    joints = batch["keypoints_3d"].shape[1]
    assert batch["keypoints_2d"].shape == (3, joints, 3) and batch["keypoints_3d"].shape == (3, joints, 4)
    assert (batch["vertices"][..., 2] > 0).all()
    pixels = batch["keypoints_2d"][..., :2]
    assert (pixels > -0.5).all() and (pixels < 31.5).all()


def test_synthetic_densepose_batch_has_parts_only_on_the_person():
    batch = bench.densepose_batch(None, 2, 32, torch.Generator().manual_seed(0))
    iuv = batch["iuv"]
    assert iuv.dtype == torch.uint8 and iuv.shape == (2, 3, 32, 32)
    background = iuv[:, 0] == 0
    assert iuv[:, 0].max() <= NUM_PARTS and background.any() and not background.all()
    assert (iuv[:, 1:][background[:, None].expand(-1, 2, -1, -1)] == 0).all()


def test_peak_memory_is_each_cases_own_peak():
    """A case that needs less than an earlier one still reports its own peak (ru_maxrss growth would say 0)."""
    if not bench._reset_peak_rss():
        pytest.skip("no resettable peak RSS (/proc/self/clear_refs) on this system")
    big = torch.ones(160 * 2**20 // 4)  # 160 MiB, touched
    del big
    memory = bench.PeakMemory(torch.device("cpu"))
    small = torch.ones(48 * 2**20 // 4)
    del small
    result = memory.result()
    assert 44 <= result["peak_memory_mib"] <= 80, result


def test_a_misspelt_override_names_itself():
    """The bench parses configs and overrides with the CLI's parser, which refuses what the CLI would."""
    with pytest.raises(argparse.ArgumentError, match="embed_dimm"):
        bench.finetune_train(bench.FINETUNE_CASES[0], torch.device("cpu"), 1, 0, Path("unused"), Path("unused"),
                             overrides={"model.init_args.backbone.init_args.embed_dimm": 8})
