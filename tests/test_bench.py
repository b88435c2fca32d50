"""crocoman-bench end to end on CPU, and the analytic FLOP count against torch's counter."""

import json
from functools import partial

import pytest
import torch
import yaml
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from backbone import CroCoNet, RandomMasking
from heads import CompletionHead
from tools import bench
from tools.flops import CroCoDims, pretrain_step_flops

TINY = {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2, "decoder_embed_dim": 32, "decoder_depth": 2,
        "decoder_num_heads": 2}


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


def test_bench_on_cpu_writes_the_result_file(tmp_path, pair_shards):
    report = bench.main(["--out", str(tmp_path), "--steps", "1", "--warmup", "1", "--device", "cpu",
                         "--shards", str(pair_shards / "train")])
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
    assert demo["results"]["peak_memory_mib"] >= 0 and "ru_maxrss" in demo["results"]["memory_measure"]
    assert demo["results"]["mfu"] is None and demo["results"]["mfu_reason"]

    assert "CUDA" in saved["cases"]["vit_pretrain"]["skipped"]

    data = saved["cases"]["data_pipeline"]
    for size in ("224px", "128px"):
        assert data["results"][size]["workers_0"]["pairs_per_s"] > 0
        assert data["results"][size]["pairs_per_s_per_worker"] > 0
    assert data["settings"]["224px"]["image_size"] == 224 and data["settings"]["128px"]["image_size"] == 128
    assert data["workers_to_feed"]["cpu_demo_128px"] >= 1
    assert saved["summary"].startswith("crocoman-bench: cpu-")


def test_data_case_writes_its_own_shards_without_shards_flag(tmp_path, monkeypatch):
    """Without --shards the data case renders shards with tools.synth (tiny ones here)."""
    monkeypatch.setattr(bench, "SYNTH_SHARDS", {**bench.SYNTH_SHARDS, "num_groups": 2, "groups_per_shard": 1})
    monkeypatch.setattr(bench, "SYNTH_SOURCE_SIZE", {"224px": 32, "128px": 32})
    monkeypatch.setattr(bench, "VITB_CONFIG", bench.CPU_DEMO_CONFIG)  # batch 32 instead of 64
    data = bench.data_case(1, None, tmp_path)
    assert data["settings"]["128px"]["shards"]["source"] == "tools.synth.write_pair_shards"
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


def test_skip_data(tmp_path):
    report = bench.main(["--out", str(tmp_path), "--steps", "1", "--warmup", "0", "--device", "cpu", "--skip-data"])
    assert report["cases"]["data_pipeline"] == {"skipped": "--skip-data"}
    assert report["cases"]["cpu_demo_train"]["results"]["first_step_s"] is None
    assert "data: skipped" in report["summary"]


def test_vit_b_case_is_the_vitb_config():
    """Case 2's ViT-B is the network configs/pretrain/vitb.yaml trains, so its MFU is that run's."""
    config = yaml.safe_load(bench.VITB_CONFIG.read_text())["model"]["init_args"]["backbone"]["init_args"]
    assert CroCoDims.from_model(bench.VIT_CASES[0].build()) == CroCoDims.from_config(config)
