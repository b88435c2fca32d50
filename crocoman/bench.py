"""``crocoman-bench``: how fast we train and load data on this machine, written down as JSON.

Five cases, each recorded with its settings next to its results so that files from different
machines and commits compare like with like:

1. ``cpu_demo_train``: the model of ``configs/pretrain/cpu_demo.yaml`` (built from that file's
   ``model`` section, so the numbers follow the config) trained on synthetic tensors at the
   config's batch size: masking, forward, loss, backward, gradient clipping, AdamW step.
2. ``vit_pretrain`` (CUDA only): ViT-B and ViT-L CroCo at 224 px, mask 0.9, bf16 autocast, eager
   and ``torch.compile``d, with model FLOPs utilisation from ``crocoman.flops``; plus our encoder
   against timm's ViT of the same size (forward + backward, all tokens) so that the cost of our
   RoPE blocks is visible as a ratio.
3. ``data_pipeline``: pairs per second out of one loader worker of ``datamodules.PairDataModule``
   at 224 px and at the demo's 128 px, in each augmentation mode and on the replaced per-sample
   path (``crocoman.bench_data``), the speed-up over it, a per-stage profile of a pair's time in each
   mode, and how many workers keep the model of case 1 / 2 fed.
4. ``pretrain_from_shards``: the pretraining config (CPU demo; ViT-B on CUDA, 4 and 8 workers)
   trained by a Lightning ``Trainer`` from pair shards in each mode and from random tensors, in
   the same run: the ratio is what the data pipeline costs the model.
5. ``finetune_train``: each fine-tuning module (gesture, SMPL body mesh, SMPL from joint maps,
   model-free body mesh, MANO hand mesh, DensePose) built from the ``model`` section of its
   ``configs/finetune/*_cpu.yaml`` (on CUDA: the GPU config of the same name without ``_cpu``, bf16
   there) and trained by a Lightning ``Trainer`` with the config's precision and gradient
   clipping on one synthetic batch of the module's batch contract, at the config's batch and
   image size: samples per second and peak memory. Layout: ``settings.modules.<name>`` (config,
   overrides, sizes, parameter counts) and ``results.<name>`` (``samples_per_s``, ``step_time_s``, ``first_step_s``,
   ``peak_memory_mib``, ``memory_measure``).

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set of the
case above the resident set at its start (``PeakMemory`` says how the peak is reset per case).

The file is ``<out>/<device>.json`` with ``<device>`` like ``cpu-<model>-<n>cores`` or
``cuda-<gpu name>``; a later run on the same device replaces it.
"""

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import platform
import re
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import yaml
from lightning import Callback, LightningDataModule, LightningModule, Trainer
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from backbone import CroCoNet, HumanMasking, croco_base, croco_large
from body.camera import project
from crocoman.bench_data import MODES, loader_throughput, pairs_in_mode, stage_profile
from crocoman.flops import pretrain_step_flops
from crocoman.main import build
from crocoman.provenance import git_commit
from crocoman.synth.bodymodel import write_body_models
from crocoman.synth.hand import GESTURE_NAMES
from datamodules.format import MESH_HAS_KEYS
from heads import CompletionHead
from heads.dense import NUM_PARTS
from lightning_modules.finetune import FinetuneTask
from lightning_modules.pretrain import PretrainModule

REPO = Path(__file__).resolve().parents[1]
CPU_DEMO_CONFIG = REPO / "configs" / "pretrain" / "cpu_demo.yaml"
VITB_CONFIG = REPO / "configs" / "pretrain" / "vitb.yaml"
FINETUNE_CONFIGS = REPO / "configs" / "finetune"
CPU_DEMO_BACKBONE = REPO / "configs" / "backbone" / "cpu_demo.yaml"
MODEL_WARMUP_STEPS = 3
DATA_WARMUP_BATCHES = 1
# Lightning precision settings of a config -> the autocast dtype that reproduces them.
AUTOCAST_DTYPES = {"32-true": None, "32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Generated shards when no --shards is given: crops a little larger than the model input at
# 224 px (as real person crops are), and the demo's own 128 px shards (`make data`).
SYNTH_SHARDS = {"num_groups": 16, "cameras": 3, "times": 3, "seed": 0, "groups_per_shard": 8}
SYNTH_SOURCE_SIZE = {"224px": 256, "128px": 128}

# Dense bf16 tensor-core peak per GPU (vendor datasheets), matched as substrings of
# torch.cuda.get_device_name(); first match wins, so variants come before the family.
PEAK_BF16_FLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", None),
    ("H200 NVL", None),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),  # same compute as H100 SXM, more and faster memory
    ("A100", 312e12),
)


@dataclass(frozen=True)
class VitCase:
    """One ViT pretraining setting of case 2 and the timm model its encoder is compared with."""

    name: str
    build: Callable[[], CroCoNet]
    batch_size: int
    timm_name: str


VIT_CASES = (
    VitCase("vit_b", partial(croco_base, img_size=224), 256, "vit_base_patch16_224"),
    VitCase("vit_l", partial(croco_large, img_size=224), 128, "vit_large_patch16_224"),
)


# ---------------------------------------------------------------------------------------------
# Machine description


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz' -> 'intel-xeon-platinum-8375c-cpu-2-90ghz'."""
    text = re.sub(r"\((r|tm|c)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def peak_bf16_flops(gpu_name: str) -> tuple[float | None, str]:
    """(dense bf16 FLOP/s, where the number comes from, or why there is none)."""
    for pattern, peak in PEAK_BF16_FLOPS:
        if pattern.lower() in gpu_name.lower():
            if peak is None:
                return None, f"{gpu_name!r} is a {pattern} variant whose peak is not in PEAK_BF16_FLOPS"
            return peak, f"PEAK_BF16_FLOPS[{pattern!r}] (datasheet, dense)"
    return None, f"no peak bf16 FLOP/s known for {gpu_name!r}: add it to PEAK_BF16_FLOPS in crocoman/bench.py"


def describe_device(device: torch.device) -> dict:
    """What the results were measured on; ``slug`` names the result file."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        peak, source = peak_bf16_flops(props.name)
        return {"type": "cuda", "name": props.name, "slug": f"cuda-{slug(props.name)}",
                "capability": f"{props.major}.{props.minor}", "memory_gib": round(props.total_memory / 2**30, 1),
                "multiprocessors": props.multi_processor_count, "cuda": torch.version.cuda,
                "peak_bf16_flops": peak, "peak_bf16_flops_source": source,
                "float32_matmul_precision": torch.get_float32_matmul_precision()}
    name, cores = cpu_model_name(), usable_cores()
    return {"type": "cpu", "name": name, "slug": f"cpu-{slug(name)}-{cores}cores", "cores": cores,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "peak_bf16_flops": None, "peak_bf16_flops_source": "no peak FLOP/s table for CPUs"}


def load_average() -> float | None:
    """Other work on the machine skews every number here; a load above the core count means it did."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def versions() -> dict:
    import timm
    import webdataset

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "webdataset": getattr(webdataset, "__version__", None)}


# ---------------------------------------------------------------------------------------------
# Measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Drop compiled graphs (they keep their module alive) and cached blocks before the next case."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of one case: CUDA peak allocated bytes, or on CPU the peak resident set growth.

    CPU: freed heap is handed back to the OS (``malloc_trim``) and the kernel's high-water mark
    is reset (``/proc/self/clear_refs``, Linux), so the figure is this case's own peak RSS above
    where it started (parameters, optimiser state, activations, allocator slack), not an
    earlier, bigger case's. Where that reset is unavailable it falls back to the growth of
    ``ru_maxrss``, which only ever rises and so reads 0 for a case smaller than one before it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            return
        gc.collect()
        self.resettable = _reset_peak_rss()
        self.start_bytes = _proc_status_bytes("VmRSS") if self.resettable else _max_rss_bytes()

    def result(self) -> dict:
        if self.device.type == "cuda":
            return {"peak_memory_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                    "memory_measure": "torch.cuda.max_memory_allocated over the case"}
        if self.resettable:
            peak = _proc_status_bytes("VmHWM")
            measure = "peak RSS over the case (VmHWM after clear_refs) - RSS at start"
        else:
            peak, measure = _max_rss_bytes(), "peak RSS growth over the case (resource.getrusage ru_maxrss)"
        return {"peak_memory_mib": round((peak - self.start_bytes) / 2**20, 1), "memory_measure": measure}


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of /proc/self/status (kB there)."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return int(match.group(1)) * 1024


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS, then reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; without it freed-but-kept heap hides the next case's growth
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def run_timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device, desc: str) -> dict:
    """Run ``warmup`` untimed then ``steps`` timed calls; the first call's time shows compile cost."""
    first, first_step_s = time.perf_counter(), None
    for i in tqdm(range(warmup), desc=f"{desc} (warmup)", leave=False, file=sys.stderr):
        step()
        if i == 0:
            synchronize(device)
            first_step_s = time.perf_counter() - first
    synchronize(device)
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=desc, leave=False, file=sys.stderr):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"step_time_s": elapsed / steps, "first_step_s": first_step_s}


def random_person_masks(batch_size: int, size: int, generator: torch.Generator) -> Tensor:
    """Filled ellipses of random centre and radii: a stand-in silhouette for human masking."""
    centre = 0.3 + 0.4 * torch.rand(batch_size, 2, 1, 1, generator=generator)
    radii = 0.15 + 0.25 * torch.rand(batch_size, 2, 1, 1, generator=generator)
    coords = torch.linspace(0, 1, size)
    rows, cols = coords.view(1, -1, 1), coords.view(1, 1, -1)
    inside = ((rows - centre[:, 0]) / radii[:, 0]) ** 2 + ((cols - centre[:, 1]) / radii[:, 1]) ** 2
    return (inside <= 1).float()


def random_pair_batch(batch_size: int, image_size: int) -> dict[str, Tensor]:
    """A pretraining batch of random images and ellipse person masks, the same for every case (seed 0)."""
    generator = torch.Generator().manual_seed(0)
    return {"image1": torch.rand(batch_size, 3, image_size, image_size, generator=generator),
            "image2": torch.rand(batch_size, 3, image_size, image_size, generator=generator),
            "person1": random_person_masks(batch_size, image_size, generator),
            "pair_type": torch.zeros(batch_size, dtype=torch.long)}


def repo_relative(path: Path) -> str:
    """A config's path as the result file records it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def train_throughput(module: PretrainModule, batch_size: int, image_size: int, device: torch.device, steps: int,
                     warmup: int, amp_dtype: torch.dtype | None = None, compiled: bool = False,
                     gradient_clip_val: float | None = None, desc: str = "train") -> dict:
    """Time full pretraining steps on random pairs through the module's own ``complete`` (masking,
    forward, per-pair-type loss: what ``training_step`` runs, free of host syncs).

    The optimiser is the task's (AdamW, its lr/betas/weight decay, no decay on 1-D parameters);
    ``compiled`` compiles each transformer block, as ``CrocoTask(compile=True)`` does.
    """
    from timm.optim import param_groups_weight_decay

    module = module.to(device).train()
    hp = module.hparams
    no_decay = [f"backbone.{name}" for name in module.backbone.no_weight_decay()]
    optimizer = torch.optim.AdamW(param_groups_weight_decay(module, hp.weight_decay, no_decay), lr=hp.lr,
                                  betas=hp.betas, fused=device.type == "cuda")
    batch = move_data_to_device(random_pair_batch(batch_size, image_size), device)
    if compiled:
        torch._dynamo.reset()  # fresh caches per model, so earlier cases never push it to the recompile limit
        module.backbone.compile()

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = sum(module.complete(batch)[2].values())
        loss.backward()
        if gradient_clip_val:
            nn.utils.clip_grad_norm_(module.parameters(), gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    memory = PeakMemory(device)
    timing = run_timed(step, steps, warmup, device, desc)
    flops = pretrain_step_flops(module.backbone, batch_size, module.masking.ratio, image_size)
    achieved = flops["train_step"] / timing["step_time_s"]
    return {"pairs_per_s": batch_size / timing["step_time_s"], **timing, **memory.result(),
            "model_flops_per_step": flops["train_step"], "achieved_tflops": achieved / 1e12}


def add_mfu(result: dict, device_info: dict) -> dict:
    peak = device_info["peak_bf16_flops"]
    result["mfu"] = result["achieved_tflops"] * 1e12 / peak if peak else None
    if not peak:
        result["mfu_reason"] = device_info["peak_bf16_flops_source"]
    return result


def cpu_demo_case(device: torch.device, device_info: dict, steps: int, warmup: int = MODEL_WARMUP_STEPS,
                  config_path: Path = CPU_DEMO_CONFIG) -> dict:
    """Case 1: the CPU demo model, as its YAML builds it, at its batch size and precision."""
    torch.manual_seed(0)
    memory_before_model = PeakMemory(device)
    run = build([config_path])
    module, config = run.model, run.config.as_dict()
    batch_size = config["data"]["init_args"]["batch_size"]
    image_size = config["data"]["init_args"]["image_size"]
    clip, precision = config["trainer"]["gradient_clip_val"], str(config["trainer"]["precision"])
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"{config_path}: trainer.precision {precision!r} is not one the bench can mimic "
                         f"({', '.join(AUTOCAST_DTYPES)})")
    settings = {"config": repo_relative(config_path), "backbone": config["model"]["init_args"]["backbone"]["init_args"],
                "masking": config["model"]["init_args"].get("masking"),
                "batch_size": batch_size, "image_size": image_size, "precision": precision,
                "gradient_clip_val": clip, "warmup_steps": warmup, "timed_steps": steps,
                "inputs": "random images, random ellipse person masks",
                "parameters": sum(p.numel() for p in module.parameters())}
    results = train_throughput(module, batch_size, image_size, device, steps, warmup,
                               amp_dtype=AUTOCAST_DTYPES[precision], gradient_clip_val=clip, desc="cpu demo model")
    # Model and optimiser state are part of what a run needs: count them from before the build.
    results.update(memory_before_model.result())
    return {"settings": settings, "results": add_mfu(results, device_info)}


def encoder_timing(model: nn.Module, ours: bool, images: Tensor, device: torch.device, steps: int, warmup: int,
                   compiled: bool, desc: str) -> dict:
    """Forward + backward of one encoder in bf16; a function of its own so the model is freed on return.

    ``compiled`` compiles each transformer block of either model (timm's ``blocks``), as training does.
    """
    forward = (lambda x: model.encode(x)[0]) if ours else model.forward_features
    if compiled:
        torch._dynamo.reset()
        for block in model.enc_blocks if ours else model.blocks:
            block.compile()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            tokens = forward(images)
        tokens.float().mean().backward()
        model.zero_grad(set_to_none=True)

    memory = PeakMemory(device)
    timing = run_timed(step, steps, warmup, device, desc)
    return {"images_per_s": len(images) / timing["step_time_s"], **timing, **memory.result()}


def encoder_vs_timm(case: VitCase, device: torch.device, steps: int, warmup: int, compiled: bool,
                    image_size: int = 224) -> dict:
    """Our encoder alone against timm's same-size ViT: forward + backward, all tokens, bf16 autocast.

    timm runs ``forward_features`` (197 tokens with its class token, learned position embedding);
    ours encodes 196 tokens with 2D RoPE. ``ratio`` > 1 means our encoder is slower.
    """
    import timm

    images = torch.rand(case.batch_size, 3, image_size, image_size, device=device)
    builders = {"ours": case.build,
                "timm": partial(timm.create_model, case.timm_name, pretrained=False, img_size=image_size)}
    timings = {}
    for label, build in builders.items():  # one at a time, so each peak holds only its own model
        timings[label] = encoder_timing(build().to(device).train(), label == "ours", images, device, steps, warmup,
                                        compiled, f"{case.name} encoder {label}")
        release_memory(device)
    return {**timings, "timm_model": case.timm_name,
            "ratio_step_time_ours_over_timm": timings["ours"]["step_time_s"] / timings["timm"]["step_time_s"]}


def vit_pretrain_case(device: torch.device, device_info: dict, steps: int, warmup: int = MODEL_WARMUP_STEPS,
                      compile_modes: Sequence[bool] = (False, True), cases: Sequence[VitCase] = VIT_CASES,
                      image_size: int = 224, mask_ratio: float = 0.9) -> dict:
    """Case 2: ViT-B / ViT-L pretraining steps in bf16, eager and compiled, with MFU."""
    settings = {"image_size": image_size, "mask_ratio": mask_ratio, "masking": "HumanMasking",
                "precision": "bf16 autocast", "warmup_steps": warmup, "timed_steps": steps,
                "models": {c.name: {"batch_size": c.batch_size, "timm_reference": c.timm_name} for c in cases},
                "compile_scope": "each transformer block compiled, as CrocoTask(compile=True) does; the rest eager"}
    results = {}
    for case in cases:
        results[case.name] = {}
        for compiled in compile_modes:
            mode = "compiled" if compiled else "eager"
            torch.manual_seed(0)
            module = PretrainModule(backbone=case.build(), head=CompletionHead(), masking=HumanMasking(mask_ratio),
                                    weight_decay=0.05)
            result = train_throughput(module, case.batch_size, image_size, device, steps, warmup,
                                      amp_dtype=torch.bfloat16, compiled=compiled, gradient_clip_val=1.0,
                                      desc=f"{case.name} {mode}")
            del module
            release_memory(device)
            results[case.name][mode] = add_mfu(result, device_info)
            results[case.name][f"encoder_vs_timm_{mode}"] = encoder_vs_timm(case, device, steps, warmup,
                                                                            compiled, image_size)
    return {"settings": settings, "results": results}


# ---------------------------------------------------------------------------------------------
# Fine-tuning modules


def gesture_batch(module: FinetuneTask, batch_size: int, image_size: int, generator: torch.Generator) -> dict:
    """``GestureModule``'s batch: images and class ids of the synthetic hands' gestures."""
    return {"image": torch.rand(batch_size, 3, image_size, image_size, generator=generator),
            "label": torch.randint(len(GESTURE_NAMES), (batch_size,), generator=generator),
            "key": [f"synthetic/{i}" for i in range(batch_size)]}


def densepose_batch(module: FinetuneTask, batch_size: int, image_size: int, generator: torch.Generator) -> dict:
    """``DensePoseModule``'s batch: ``iuv`` with random parts and charts inside an ellipse person, background out."""
    person = random_person_masks(batch_size, image_size, generator).bool()
    parts = torch.randint(1, NUM_PARTS + 1, (batch_size, image_size, image_size), generator=generator) * person
    charts = torch.randint(256, (batch_size, 2, image_size, image_size), generator=generator) * person[:, None]
    return {"image": torch.rand(batch_size, 3, image_size, image_size, generator=generator),
            "iuv": torch.cat([parts[:, None], charts], dim=1).to(torch.uint8),
            "key": [f"synthetic/{i}" for i in range(batch_size)]}


def mesh_batch(module: FinetuneTask, batch_size: int, image_size: int, generator: torch.Generator) -> dict:
    """``MeshRecoveryModule``'s batch with every label present and consistent, so every loss term runs.

    Parameters are drawn near an upright pose facing the camera; the module's own body model
    gives vertices and joints (all its joints are the keypoints), centred on the optical axis with
    its nearest point where it spans 80% of a crop whose focal length is the crop side, so every
    point projects inside the crop, and projected with that ``K``.
    """
    body = getattr(module, "body_model", None)
    if body is None:
        raise ValueError(f"{type(module).__name__} has no body_model: the bench draws mesh labels from one; give "
                         f"the config's model a body_model (body.BodyModel)")
    global_orient = torch.tensor([math.pi, 0.0, 0.0]) + 0.2 * torch.randn(batch_size, 3, generator=generator)
    pose = 0.2 * torch.randn(batch_size, 3 * body.num_pose_joints, generator=generator)
    betas = 0.5 * torch.randn(batch_size, body.num_betas, generator=generator)
    with torch.no_grad():
        vertices, joints = body.from_axis_angle(global_orient, pose, betas)
    focal_px = float(image_size)
    low, high = vertices.amin(dim=1), vertices.amax(dim=1)
    nearest_m = focal_px * (high - low)[:, :2].amax(dim=-1) / (0.8 * image_size)
    transl = torch.cat([-(low + high)[:, :2] / 2, (nearest_m - low[:, 2])[:, None]], dim=1)
    centre = (image_size - 1) / 2
    K = torch.tensor([[focal_px, 0.0, centre], [0.0, focal_px, centre], [0.0, 0.0, 1.0]]).expand(batch_size, 3, 3)
    keypoints_3d = joints + transl[:, None]
    confidence = torch.ones(*joints.shape[:2], 1)
    return {"image": torch.rand(batch_size, 3, image_size, image_size, generator=generator),
            "key": [f"synthetic/{i}" for i in range(batch_size)], "K": K.contiguous(),
            "keypoints_2d": torch.cat([project(keypoints_3d, K), confidence], dim=-1),
            "keypoints_3d": torch.cat([keypoints_3d, confidence], dim=-1),
            "global_orient": global_orient, body.pose_name: pose, "betas": betas, "transl": transl,
            "vertices": vertices + transl[:, None],
            "has": {name: torch.ones(batch_size, dtype=torch.bool) for name in MESH_HAS_KEYS}}


@dataclass(frozen=True)
class FinetuneCase:
    """One fine-tuning module of case 4: its CPU and GPU configs and the batch its ``training_step`` reads."""

    name: str
    cpu_config: str
    cuda_config: str
    make_batch: Callable[[FinetuneTask, int, int, torch.Generator], dict]
    classes: tuple[str, ...] | None = None  # what the DataModule's ``classes`` says (the gesture task reads it)

    def config(self, device: torch.device) -> Path:
        """The config a run on ``device`` trains with."""
        return FINETUNE_CONFIGS / (self.cuda_config if device.type == "cuda" else self.cpu_config)


FINETUNE_CASES = (
    FinetuneCase("gesture", "gesture_cpu.yaml", "gesture.yaml", gesture_batch, GESTURE_NAMES),
    FinetuneCase("body_mesh_smpl", "body_mesh_smpl_cpu.yaml", "body_mesh_smpl.yaml", mesh_batch),
    FinetuneCase("body_mesh_joint_maps", "body_mesh_joint_maps_cpu.yaml", "body_mesh_joint_maps.yaml", mesh_batch),
    FinetuneCase("body_mesh_model_free", "body_mesh_model_free_cpu.yaml", "body_mesh_model_free.yaml", mesh_batch),
    FinetuneCase("hand_mesh_mano", "hand_mesh_mano_cpu.yaml", "hand_mesh_mano.yaml", mesh_batch),
    FinetuneCase("densepose", "densepose_cpu.yaml", "densepose.yaml", densepose_batch),
)


class SyntheticBatches(LightningDataModule):
    """One fixed batch served ``batches`` times: the module's training cost without decoding or augmentation.

    ``batch_size`` (the LR scaling reads it) and ``classes`` are what the modules ask of a
    crocoman DataModule. The batch already lives on the training device, as in case 1.
    """

    def __init__(self, batch: dict, batch_size: int, batches: int, classes: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.batch, self.batch_size, self.batches, self.classes = batch, batch_size, batches, classes

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.batch] * self.batches, batch_size=None)


class StepTimer(Callback):
    """Times whole training-loop iterations after ``warmup`` of them, syncing the device at both ends.

    An iteration is Lightning's: fetch, forward, loss, backward, clipping, optimiser and
    scheduler step, logging. The first iteration's time (which includes any compilation) is kept
    apart, as in ``run_timed``.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device, desc: str) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.first_step_s: float | None = None
        self.step_time_s: float | None = None
        self.bar = tqdm(total=warmup + steps, desc=desc, leave=False, file=sys.stderr)

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch: dict, batch_idx: int) -> None:
        if batch_idx == 0:
            self.first_start = self.timed_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs, batch: dict,
                           batch_idx: int) -> None:
        self.bar.update()
        first = batch_idx == 0 and self.warmup > 0  # with no warmup, the first step is a timed one
        warmed_up = batch_idx == self.warmup - 1
        last = batch_idx == self.warmup + self.steps - 1
        if not (first or warmed_up or last):
            return
        synchronize(self.device)
        now = time.perf_counter()
        if first:
            self.first_step_s = now - self.first_start
        if warmed_up:
            self.timed_start = now
        if last:
            self.step_time_s = (now - self.timed_start) / self.steps
            self.bar.close()


def model_path_keys(spec, prefix: str = "model") -> list[str]:
    """Dotted keys of every ``model_path`` (body model, model-free head) in a config's ``model`` section."""
    if not isinstance(spec, dict):
        return []
    return [key for name, value in spec.items()
            for key in ([f"{prefix}.{name}"] if name == "model_path" else model_path_keys(value, f"{prefix}.{name}"))]


@contextlib.contextmanager
def quiet_lightning():
    """Keep Lightning's per-fit info lines and the warnings that do not apply here out of the bench output."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # No pretrained checkpoint on purpose: weights do not change the speed.
            warnings.filterwarnings("ignore", message="fine-tuning without a pretrained encoder")
            # The loader serves a batch already in memory; workers would only add IPC.
            warnings.filterwarnings("ignore", message=".*does not have many workers")
            # Only training is timed.
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            yield
    finally:
        logger.setLevel(level)


def finetune_train(case: FinetuneCase, device: torch.device, steps: int, warmup: int, body_models: Path,
                   root_dir: Path, config_path: Path | None = None, overrides: dict | None = None) -> dict:
    """One fine-tuning module, built from its config's ``model`` section, trained by a Lightning ``Trainer``.

    The trainer takes the config's ``precision`` and ``gradient_clip_val``; the module's own
    ``configure_optimizers`` (layer-wise LR decay, fused AdamW on CUDA, schedule) and
    ``training_step`` (losses, train metrics, logging) run as in ``crocoman fit``, on one device.
    ``pretrained`` is dropped (a config that takes its backbone's sizes from that checkpoint, as the CPU demos do,
    gets the sizes it would have given, those of ``make pretrain``'s model: ``configs/backbone/cpu_demo.yaml``) and
    every ``model_path`` points at ``body_models`` (a folder ``write_body_models`` wrote). ``config_path`` replaces
    the device's config (``case.config``);
    ``overrides`` are dotted config keys (``{"data.init_args.batch_size": 2}``), for tests at tiny size.
    """
    config_path = config_path or case.config(device)
    model = yaml.safe_load(config_path.read_text())["model"]
    body_model_paths = {key: str(body_models) for key in model_path_keys(model)}
    sizes = [] if "init_args" in model["init_args"]["backbone"] else [CPU_DEMO_BACKBONE]
    torch.manual_seed(0)
    memory = PeakMemory(device)  # from before the build: parameters and optimiser state are part of a run's memory
    with contextlib.redirect_stdout(sys.stderr):  # smplx prints notes; stdout is for the summary line
        run = build([config_path, *sizes],
                    {**body_model_paths, "model.init_args.pretrained": None, **(overrides or {})})
    module, config = run.model, run.config.as_dict()
    model_spec, data_args, trainer_args = config["model"], config["data"]["init_args"], config["trainer"]
    batch_size, image_size = data_args["batch_size"], data_args["image_size"]
    precision, clip = str(trainer_args["precision"]), trainer_args["gradient_clip_val"]
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"{config_path}: trainer.precision {precision!r} is not one the bench runs "
                         f"({', '.join(AUTOCAST_DTYPES)})")
    batch = case.make_batch(module, batch_size, image_size, torch.Generator().manual_seed(0))
    data = SyntheticBatches(move_data_to_device(batch, device), batch_size, warmup + steps, case.classes)
    timer = StepTimer(warmup, steps, device, f"{case.name} fine-tuning")
    with quiet_lightning():
        trainer = Trainer(accelerator=device.type, devices=[device.index or 0] if device.type == "cuda" else 1,
                          precision=precision, gradient_clip_val=clip, max_steps=warmup + steps, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root_dir, callbacks=[timer])
        trainer.fit(module, datamodule=data)
    if timer.step_time_s is None:
        raise RuntimeError(f"{config_path}: the trainer stopped at step {trainer.global_step} of {warmup + steps}")
    results = {"samples_per_s": batch_size / timer.step_time_s, "step_time_s": timer.step_time_s,
               "first_step_s": timer.first_step_s, **memory.result(), "optimizer_steps": trainer.global_step,
               # A NaN here means the synthetic batch broke the module's contract, not a speed.
               "last_loss": float(trainer.callback_metrics["loss"])}
    settings = {"config": repo_relative(config_path), "overrides": overrides or {}, "module": model_spec["class_path"],
                "backbone": model_spec["init_args"]["backbone"]["init_args"],
                "head": {"class_path": model_spec["init_args"]["head"]["class_path"],
                         **(model_spec["init_args"]["head"].get("init_args") or {})},
                "batch_size": batch_size, "image_size": image_size, "precision": precision, "gradient_clip_val": clip,
                "parameters": sum(p.numel() for p in module.parameters()),
                "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad)}
    del trainer, module, data, batch, run
    release_memory(device)
    return {"settings": settings, "results": results}


def finetune_case(device: torch.device, steps: int, warmup: int = MODEL_WARMUP_STEPS,
                  cases: Sequence[FinetuneCase] = FINETUNE_CASES, overrides: dict | None = None) -> dict:
    """Case 4: training throughput and peak memory of each fine-tuning module, one after another."""
    with tempfile.TemporaryDirectory(prefix="crocoman-bench-finetune-") as workdir:
        body_models = Path(workdir) / "body_models"
        with contextlib.redirect_stdout(sys.stderr):  # its summary line is not the bench's
            write_body_models(body_models, ("smpl", "mano"))
        runs = {case.name: finetune_train(case, device, steps, warmup, body_models, Path(workdir),
                                          overrides=overrides) for case in cases}
    return {"settings": {"warmup_steps": warmup, "timed_steps": steps, "devices": 1,
                         "inputs": "one synthetic batch of the module's batch contract, already on the device; "
                                   "mesh labels from the synthetic body models (crocoman.synth.bodymodel)",
                         "trainer": "lightning Trainer with the config's precision and gradient_clip_val, "
                                    "no logger, checkpointing or validation; pretrained=None",
                         "modules": {name: run["settings"] for name, run in runs.items()}},
            "results": {name: run["results"] for name, run in runs.items()}}


# ---------------------------------------------------------------------------------------------
# Data pipeline


class ShardsUnavailable(RuntimeError):
    """No ``--shards`` and no shard writer in ``crocoman.synth`` to make some."""


def synthetic_shards(root: Path, name: str, image_size: int) -> tuple[Path, dict]:
    """A small pair-shard set of ``image_size`` px crops written by ``crocoman.synth``.

    Resampled loading cycles through it, so a few groups suffice: only decoding and
    augmentation are timed, and the files stay in the page cache as real hot shards would.
    """
    try:
        from crocoman.synth import write_pair_shards
    except ImportError as error:
        raise ShardsUnavailable(f"no --shards given and crocoman.synth cannot write shards ({error}); "
                                f"pass --shards DIR") from error

    out = root / f"synth-{name}"
    settings = {**SYNTH_SHARDS, "image_size": image_size}
    if not (out / "manifest.json").is_file():  # the data cases share one set per size
        with contextlib.redirect_stdout(sys.stderr):  # its summary line is not the bench's
            write_pair_shards(out, workers=min(4, usable_cores()), **settings)
    return out / "train", {"source": "crocoman.synth.write_pair_shards", **settings}


def data_arguments(config_path: Path) -> dict:
    """The DataModule arguments of a config as the CLI resolves them (the config's and the class defaults)."""
    with contextlib.redirect_stdout(sys.stderr):
        return build([config_path]).config.as_dict()["data"]["init_args"]


def data_case(steps: int, shards: str | None, workdir: Path) -> dict:
    """Case 3: pairs per second out of one loader worker in each mode, at the ViT-B config's 224 px and
    the demo's 128 px, against the replaced per-sample path in the same run; and per stage, where a
    pair's time goes in each mode."""
    configs = {"224px": VITB_CONFIG, "128px": CPU_DEMO_CONFIG}
    settings = {"warmup_batches": f"at least {DATA_WARMUP_BATCHES}, and until the shuffle buffer is full (each "
                                  f"result says how many)", "timed_batches": steps, "workers": 1, "torch_threads": 1,
                "modes": {"per_sample": "the replaced pipeline: PIL decode, torchvision crop + jitter per sample, "
                                        "float out of the worker",
                          "worker": "OpenCV decode + crop + jitter on uint8 in the worker (the default)",
                          "device": "decode + crop in the worker; jitter and float conversion after the transfer, "
                                    "on the training device (not timed here: that is the worker's share)"}}
    results = {}
    for label, config_path in configs.items():
        data_args = data_arguments(config_path)
        shard_dir, shard_info = (shards, {"source": shards}) if shards else synthetic_shards(
            workdir, label, SYNTH_SOURCE_SIZE[label])
        data_args = {k: data_args[k] for k in ("batch_size", "image_size", "augment", "shuffle_buffer", "crop_scale",
                                               "color_jitter", "independent_augmentation") if k in data_args}
        settings[label] = {"config": repo_relative(config_path), "shards": shard_info, **data_args}
        modes = {mode: loader_throughput(str(shard_dir), data_args, mode, 1, steps, DATA_WARMUP_BATCHES)
                 for mode in MODES}
        default = modes["worker"]["pairs_per_s"]
        results[label] = {**modes, "pairs_per_s_per_worker": default,
                          "speedup_vs_per_sample": default / modes["per_sample"]["pairs_per_s"],
                          "device_mode_worker_ms_per_pair": 1e3 / modes["device"]["pairs_per_s"],
                          "stages": stage_profile(str(shard_dir), data_args, pairs=steps * data_args["batch_size"])}
    return {"settings": settings, "results": results}


def pretrain_run(config_path: Path, device: torch.device, steps: int, warmup: int, root_dir: Path,
                 data: LightningDataModule | None) -> dict:
    """Pretraining steps of a config's model through a Lightning ``Trainer`` (its precision and clipping,
    no logger, checkpoints or validation), from ``data`` or, when None, from one batch of random tensors
    already on the device."""
    torch.manual_seed(0)
    run = build([config_path])
    module, config = run.model, run.config.as_dict()
    data_args, trainer_args = config["data"]["init_args"], config["trainer"]
    batch_size, image_size = data_args["batch_size"], data_args["image_size"]
    if data is None:
        batch = move_data_to_device(random_pair_batch(batch_size, image_size), device)
        data = SyntheticBatches(batch, batch_size, warmup + steps)
    timer = StepTimer(warmup, steps, device, "pretraining from " + ("tensors" if isinstance(data, SyntheticBatches)
                                                                    else "shards"))
    with quiet_lightning():
        trainer = Trainer(accelerator=device.type, devices=[device.index or 0] if device.type == "cuda" else 1,
                          precision=trainer_args["precision"], gradient_clip_val=trainer_args["gradient_clip_val"],
                          max_steps=warmup + steps,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          default_root_dir=root_dir, callbacks=[timer])
        trainer.fit(module, datamodule=data)
    del trainer, module, data, run
    gc.collect()  # stops the loader's workers before the next run is timed
    release_memory(device)
    return {"pairs_per_s": batch_size / timer.step_time_s, "step_time_s": timer.step_time_s,
            "first_step_s": timer.first_step_s}


def pretrain_from_shards_case(device: torch.device, steps: int, warmup: int, shards: str | None,
                              workdir: Path) -> dict:
    """Case 5: the pretraining config trained from pair shards and from tensors in the same run.

    On CPU the demo config (128 px, its own worker count, in each augmentation mode); on CUDA the
    ViT-B config at 224 px from 4 and 8 workers. The ratio to the from-tensors run is what the data
    pipeline costs the model.
    """
    config_path = VITB_CONFIG if device.type == "cuda" else CPU_DEMO_CONFIG
    data_args = data_arguments(config_path)
    label = f"{data_args['image_size']}px"
    if shards is None:
        shards, shard_info = synthetic_shards(workdir, label, SYNTH_SOURCE_SIZE[label])
    else:
        shard_info = {"source": shards}
    worker_counts = (4, 8) if device.type == "cuda" else (data_args["num_workers"],)
    # warm up until the shuffle buffer is full: until then webdataset reads two groups per pair
    warmup = max(warmup, -(-data_args["shuffle_buffer"] // data_args["batch_size"]) + 1)
    results = {"from_tensors": pretrain_run(config_path, device, steps, warmup, workdir, None)}
    for mode in ("worker", "device"):
        for workers in worker_counts:
            data = pairs_in_mode(mode, **{**data_args, "train_shards": str(shards), "val_shards": None,
                                          "num_workers": workers,
                                          "epoch_pairs": data_args["batch_size"] * (warmup + steps)})
            run = pretrain_run(config_path, device, steps, warmup, workdir, data)
            run["vs_from_tensors"] = run["pairs_per_s"] / results["from_tensors"]["pairs_per_s"]
            results[f"from_shards_{mode}_{workers}_workers"] = run
    settings = {"config": repo_relative(config_path), "shards": shard_info, "warmup_steps": warmup,
                "timed_steps": steps, "batch_size": data_args["batch_size"], "image_size": data_args["image_size"],
                "trainer": "lightning Trainer with the config's precision and gradient_clip_val, no logger, "
                           "checkpointing or validation; from_tensors: one random batch already on the device"}
    return {"settings": settings, "results": results}


def workers_to_feed(report: dict) -> dict:
    """Loader workers needed to keep each measured model busy = model pairs/s / per-worker pairs/s."""
    data = report["cases"]["data_pipeline"].get("results")
    if not data:
        return {}
    needed = {}
    demo = report["cases"]["cpu_demo_train"].get("results")
    if demo and "128px" in data:
        needed["cpu_demo_128px"] = math.ceil(demo["pairs_per_s"] / data["128px"]["pairs_per_s_per_worker"])
    for name, modes in (report["cases"]["vit_pretrain"].get("results") or {}).items():
        for mode in ("eager", "compiled"):
            if mode in modes and "224px" in data:
                needed[f"{name}_{mode}_224px"] = math.ceil(
                    modes[mode]["pairs_per_s"] / data["224px"]["pairs_per_s_per_worker"])
    return needed


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crocoman-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of the result JSON")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model case and batches per data case")
    parser.add_argument("--shards", help="pair shards for the data case (default: a small crocoman.synth set)")
    parser.add_argument("--warmup", type=int, default=MODEL_WARMUP_STEPS,
                        help="untimed steps before each model case (the first one includes compilation)")
    parser.add_argument("--skip-data", action="store_true", help="skip the data pipeline case")
    parser.add_argument("--skip-from-shards", action="store_true",
                        help="skip training the pretraining config from shards vs from tensors")
    parser.add_argument("--no-compile", action="store_true", help="CUDA case: eager only, no torch.compile")
    parser.add_argument("--skip-vit", action="store_true", help="skip the CUDA ViT-B / ViT-L pretraining case")
    vit_names = [case.name for case in VIT_CASES]
    parser.add_argument("--vit", nargs="+", choices=vit_names, default=vit_names, metavar="MODEL",
                        help=f"ViT pretraining models to time (default: all of {', '.join(vit_names)})")
    parser.add_argument("--vit-batch-size", type=int, help="pairs per step of every ViT case (default: each case's)")
    names = [case.name for case in FINETUNE_CASES]
    parser.add_argument("--finetune", nargs="+", choices=names, default=names, metavar="MODULE",
                        help=f"fine-tuning modules to time (default: all of {', '.join(names)})")
    parser.add_argument("--skip-finetune", action="store_true", help="skip the fine-tuning modules case")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    return args


def vit_plan(args: argparse.Namespace) -> tuple[tuple[bool, ...], list[VitCase]]:
    """The ViT case's compile modes and models, as ``--no-compile``, ``--vit`` and ``--vit-batch-size`` choose."""
    compile_modes = (False,) if args.no_compile else (False, True)
    return compile_modes, [replace(case, batch_size=args.vit_batch_size or case.batch_size)
                           for case in VIT_CASES if case.name in args.vit]


def summary_line(report: dict, path: Path, seconds: float) -> str:
    cases, parts = report["cases"], [report["device"]["slug"]]
    demo = cases["cpu_demo_train"]["results"]
    parts.append(f"demo {demo['pairs_per_s']:.0f} pairs/s, +{demo['peak_memory_mib']:.0f} MiB")
    vit = cases["vit_pretrain"]
    if "skipped" in vit:
        parts.append("ViT: skipped")
    else:
        for name, modes in vit["results"].items():
            best = max((m for m in ("eager", "compiled") if m in modes), key=lambda m: modes[m]["pairs_per_s"])
            mfu = modes[best]["mfu"]
            parts.append(f"{name} {modes[best]['pairs_per_s']:.0f} pairs/s {best}"
                         + (f" MFU {100 * mfu:.0f}%" if mfu is not None else ""))
    data = cases["data_pipeline"]
    if "skipped" in data:
        parts.append("data: skipped")
    else:
        per_worker = ", ".join(f"{k} {v['pairs_per_s_per_worker']:.0f} ({v['speedup_vs_per_sample']:.1f}x per-sample)"
                               for k, v in data["results"].items())
        parts.append(f"data/worker {per_worker} pairs/s")
        if data.get("workers_to_feed"):
            parts.append("workers to feed " + ", ".join(f"{k} {v}" for k, v in data["workers_to_feed"].items()))
    from_shards = cases["pretrain_from_shards"]
    if "skipped" in from_shards:
        parts.append("from shards: skipped")
    else:
        ratios = ", ".join(f"{name.removeprefix('from_shards_')} {run['vs_from_tensors']:.2f}x"
                           for name, run in from_shards["results"].items() if "vs_from_tensors" in run)
        parts.append(f"from shards vs tensors {ratios}")
    finetune = cases["finetune_train"]
    if "skipped" in finetune:
        parts.append("finetune: skipped")
    else:
        rates = ", ".join(f"{name} {result['samples_per_s']:.0f}" for name, result in finetune["results"].items())
        parts.append(f"finetune {rates} samples/s")
    return f"crocoman-bench: {'; '.join(parts)} -> {path} ({seconds:.0f} s)"


def run_bench(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark cases, write ``<out>/<device>.json`` and return its content."""
    args = parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device)
    device_info = describe_device(device)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
              "versions": versions(), "device": device_info,
              "command": "crocoman-bench " + " ".join(sys.argv[1:] if argv is None else argv),
              "load_average_1min": {"start": load_average()}, "cases": {}}
    cases = report["cases"]

    print(f"[1/5] CPU demo model training on {device_info['name']}", file=sys.stderr)
    cases["cpu_demo_train"] = cpu_demo_case(device, device_info, args.steps, args.warmup)

    print("[2/5] ViT-B / ViT-L pretraining (CUDA only)", file=sys.stderr)
    if args.skip_vit:
        cases["vit_pretrain"] = {"skipped": "--skip-vit"}
    elif device.type == "cuda":
        cases["vit_pretrain"] = vit_pretrain_case(device, device_info, args.steps, args.warmup, *vit_plan(args))
    else:
        cases["vit_pretrain"] = {"skipped": "needs a CUDA device (bf16 ViT-B/L steps are not meaningful on CPU)"}

    print("[3/5] data pipeline", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="crocoman-bench-") as workdir:
        if args.skip_data:
            cases["data_pipeline"] = {"skipped": "--skip-data"}
        else:
            try:
                cases["data_pipeline"] = data_case(args.steps, args.shards, Path(workdir))
            except ShardsUnavailable as error:
                cases["data_pipeline"] = {"skipped": str(error)}
        if "results" in cases["data_pipeline"]:
            cases["data_pipeline"]["workers_to_feed"] = workers_to_feed(report)
            cases["data_pipeline"]["workers_to_feed_note"] = (
                "ceil(model pairs/s / pairs/s of one loader worker), model from this file's cases; on a CPU "
                "device the workers compete with the model for the same cores, so read it as a lower bound")

        print("[4/5] pretraining from shards vs from tensors", file=sys.stderr)
        if args.skip_from_shards:
            cases["pretrain_from_shards"] = {"skipped": "--skip-from-shards"}
        else:
            try:
                cases["pretrain_from_shards"] = pretrain_from_shards_case(device, args.steps, args.warmup, args.shards,
                                                                          Path(workdir))
            except ShardsUnavailable as error:
                cases["pretrain_from_shards"] = {"skipped": str(error)}

    print(f"[5/5] fine-tuning modules ({device.type} configs)", file=sys.stderr)
    if args.skip_finetune:
        cases["finetune_train"] = {"skipped": "--skip-finetune"}
    else:
        chosen = [case for case in FINETUNE_CASES if case.name in args.finetune]
        cases["finetune_train"] = finetune_case(device, args.steps, args.warmup, chosen)

    report["load_average_1min"]["end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_info['slug']}.json"
    report["summary"] = summary_line(report, path, time.perf_counter() - began)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(report["summary"])
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """The ``crocoman-bench`` entry point (console scripts exit with what it returns, so: nothing)."""
    run_bench(argv)


if __name__ == "__main__":
    main()
