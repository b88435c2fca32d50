"""``crocoman-bench``: how fast we train and load data on this machine, written down as JSON.

Three cases, each recorded with its settings next to its results so that files from different
machines and commits compare like with like:

1. ``cpu_demo_train``: the model of ``configs/pretrain/cpu_demo.yaml`` (built from that file's
   ``model`` section, so the numbers follow the config) trained on synthetic tensors at the
   config's batch size: masking, forward, loss, backward, gradient clipping, AdamW step.
2. ``vit_pretrain`` (CUDA only): ViT-B and ViT-L CroCo at 224 px, mask 0.9, bf16 autocast, eager
   and ``torch.compile``d, with model FLOPs utilisation from ``tools.flops``; plus our encoder
   against timm's ViT of the same size (forward + backward, all tokens) so that the cost of our
   RoPE blocks is visible as a ratio.
3. ``data_pipeline``: decoded and augmented pairs per second per loader worker through
   ``datamodules.PairDataModule`` at 224 px and at the demo's 128 px, and how many workers keep
   the model of case 1 / 2 fed.

The file is ``<out>/<device>.json`` with ``<device>`` like ``cpu-<model>-<n>cores`` or
``cuda-<gpu name>``; a later run on the same device replaces it.
"""

import argparse
import gc
import importlib
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from backbone import CroCoNet, HumanMasking, croco_base, croco_large
from heads import CompletionHead, patchify
from lightning_modules.losses import masked_patch_mse
from lightning_modules.pretrain import PretrainModule
from tools.flops import pretrain_step_flops

REPO = Path(__file__).resolve().parents[1]
CPU_DEMO_CONFIG = REPO / "configs" / "pretrain" / "cpu_demo.yaml"
VITB_CONFIG = REPO / "configs" / "pretrain" / "vitb.yaml"
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
    VitCase("vit_b", partial(croco_base, img_size=224), 64, "vit_base_patch16_224"),
    VitCase("vit_l", partial(croco_large, img_size=224), 32, "vit_large_patch16_224"),
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
    return None, f"no peak bf16 FLOP/s known for {gpu_name!r}: add it to PEAK_BF16_FLOPS in tools/bench.py"


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


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


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
    """Peak memory of one case: CUDA peak allocated bytes, or on CPU the growth of the peak RSS.

    ``ru_maxrss`` only ever rises, so the CPU figure is how far the case pushed the process's
    high-water mark: parameters, optimiser state, activations and allocator caching together.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        else:
            self.start_rss = self._max_rss_bytes()

    @staticmethod
    def _max_rss_bytes() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes

    def result(self) -> dict:
        if self.device.type == "cuda":
            return {"peak_memory_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1),
                    "memory_measure": "torch.cuda.max_memory_allocated over the case"}
        return {"peak_memory_mib": round((self._max_rss_bytes() - self.start_rss) / 2**20, 1),
                "memory_measure": "peak RSS growth over the case (resource.getrusage ru_maxrss)"}


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


def build_from_spec(spec):
    """Instantiate a LightningCLI ``class_path``/``init_args`` spec, nested specs included."""
    if isinstance(spec, dict) and "class_path" in spec:
        module_name, _, class_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        return cls(**{key: build_from_spec(value) for key, value in (spec.get("init_args") or {}).items()})
    if isinstance(spec, dict):
        return {key: build_from_spec(value) for key, value in spec.items()}
    if isinstance(spec, list):
        return [build_from_spec(value) for value in spec]
    return spec


def train_throughput(module: PretrainModule, batch_size: int, image_size: int, device: torch.device, steps: int,
                     warmup: int, amp_dtype: torch.dtype | None = None, compiled: bool = False,
                     gradient_clip_val: float | None = None, desc: str = "train") -> dict:
    """Time full pretraining steps on random pairs; the module's own masking draws each step's mask.

    The optimiser is the task's (AdamW, its lr/betas/weight decay, no decay on 1-D parameters);
    ``compiled`` wraps forward + loss in one ``torch.compile`` (``CrocoTask(compile=True)``
    compiles ``backbone.forward``, which pretraining never calls, so it cannot be used here).
    """
    from timm.optim import param_groups_weight_decay

    module = module.to(device).train()
    hp = module.hparams
    no_decay = [f"backbone.{name}" for name in module.backbone.no_weight_decay()]
    optimizer = torch.optim.AdamW(param_groups_weight_decay(module, hp.weight_decay, no_decay), lr=hp.lr,
                                  betas=hp.betas, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    image1 = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
    image2 = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
    person1 = random_person_masks(batch_size, image_size, generator).to(device)
    grid = module.backbone.image_grid(image1)

    def loss_of(image1: Tensor, image2: Tensor, mask: Tensor) -> Tensor:
        pred = module(image1, image2, mask)
        target = patchify(image1, module.backbone.patch_size)
        return masked_patch_mse(pred, target, mask.flatten(1), module.norm_pix).mean()

    if compiled:
        torch._dynamo.reset()  # fresh caches per model, so earlier cases never push it to the recompile limit
    loss_fn = torch.compile(loss_of) if compiled else loss_of

    def step() -> None:
        mask = module.masking(batch_size, grid, person1, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = loss_fn(image1, image2, mask)
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
    config = yaml.safe_load(config_path.read_text())
    torch.manual_seed(0)
    memory_before_model = PeakMemory(device)
    module = build_from_spec(config["model"])
    batch_size = config["data"]["init_args"]["batch_size"]
    image_size = config["data"]["init_args"]["image_size"]
    trainer = config.get("trainer", {})
    clip, precision = trainer.get("gradient_clip_val"), str(trainer.get("precision", "32-true"))
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"{config_path}: trainer.precision {precision!r} is not one the bench can mimic "
                         f"({', '.join(AUTOCAST_DTYPES)})")
    settings = {"config": str(config_path.relative_to(REPO)) if config_path.is_relative_to(REPO) else str(config_path),
                "backbone": config["model"]["init_args"]["backbone"]["init_args"],
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
    for label, build in builders.items():
        model = build().to(device).train()  # one at a time, so each peak holds only its own model
        forward = (lambda x: model.encode(x)[0]) if label == "ours" else model.forward_features
        forward = torch.compile(forward) if compiled else forward

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                tokens = forward(images)
            tokens.float().mean().backward()
            model.zero_grad(set_to_none=True)

        memory = PeakMemory(device)
        timing = run_timed(step, steps, warmup, device, f"{case.name} encoder {label}")
        timings[label] = {"images_per_s": case.batch_size / timing["step_time_s"], **timing, **memory.result()}
        del model, forward, step
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
                "compile_scope": "torch.compile of forward + loss (masking, backward, AdamW eager)"}
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
# Data pipeline


class ShardsUnavailable(RuntimeError):
    """No ``--shards`` and no shard writer in ``tools.synth`` to make some."""


def synthetic_shards(root: Path, name: str, image_size: int) -> tuple[Path, dict]:
    """A small pair-shard set of ``image_size`` px crops written by ``tools.synth``.

    Resampled loading cycles through it, so a few groups suffice: only decoding and
    augmentation are timed, and the files stay in the page cache as real hot shards would.
    """
    try:
        from tools.synth import write_pair_shards
    except ImportError as error:
        raise ShardsUnavailable(f"no --shards given and tools.synth cannot write shards ({error}); "
                                f"pass --shards DIR") from error

    out = root / f"synth-{name}"
    settings = {**SYNTH_SHARDS, "image_size": image_size}
    write_pair_shards(out, workers=min(4, usable_cores()), **settings)
    return out / "train", {"source": "tools.synth.write_pair_shards", **settings}


def data_throughput(shards: Path | str, data_args: dict, num_workers: int, steps: int) -> dict:
    """Pairs per second out of ``PairDataModule.train_dataloader()`` with ``num_workers`` workers."""
    from datamodules import PairDataModule

    batch_size = data_args["batch_size"]
    datamodule = PairDataModule(**{**data_args, "train_shards": str(shards), "val_shards": None,
                                   "num_workers": num_workers,
                                   "epoch_pairs": batch_size * (DATA_WARMUP_BATCHES + steps)})
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    # A DataLoader worker runs torch single-threaded; in-process loading does the same here, so
    # both numbers are one core's worth of work and the model's thread setting is untouched.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timing = run_timed(lambda: next(batches), steps, DATA_WARMUP_BATCHES, torch.device("cpu"),
                           f"data {data_args['image_size']}px {num_workers} workers")
    finally:
        torch.set_num_threads(threads)
    del batches, loader
    return {"pairs_per_s": batch_size / timing["step_time_s"], "batch_time_s": timing["step_time_s"],
            "first_batch_s": timing["first_step_s"]}


def data_case(steps: int, shards: str | None, workdir: Path) -> dict:
    """Case 3: decoded + augmented pairs per second, at the ViT-B config's 224 px and the demo's 128 px."""
    configs = {"224px": VITB_CONFIG, "128px": CPU_DEMO_CONFIG}
    settings, results = {"warmup_batches": DATA_WARMUP_BATCHES, "timed_batches": steps,
                         "torch_threads": 1}, {}
    for label, config_path in configs.items():
        data_args = yaml.safe_load(config_path.read_text())["data"]["init_args"]
        if shards:
            shard_dir, shard_info = shards, {"source": shards}
        else:
            shard_dir, shard_info = synthetic_shards(workdir, label, SYNTH_SOURCE_SIZE[label])
        settings[label] = {"config": str(config_path.relative_to(REPO)), "shards": shard_info,
                           **{k: data_args[k] for k in ("batch_size", "image_size", "augment", "shuffle_buffer",
                                                        "crop_scale", "color_jitter") if k in data_args}}
        results[label] = {f"workers_{n}": data_throughput(shard_dir, data_args, n, steps) for n in (0, 1)}
        # One worker process is the unit to scale by (0 workers adds no process start or IPC).
        results[label]["pairs_per_s_per_worker"] = results[label]["workers_1"]["pairs_per_s"]
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
    parser.add_argument("--shards", help="pair shards for the data case (default: a small tools.synth set)")
    parser.add_argument("--warmup", type=int, default=MODEL_WARMUP_STEPS,
                        help="untimed steps before each model case (the first one includes compilation)")
    parser.add_argument("--skip-data", action="store_true", help="skip the data pipeline case")
    parser.add_argument("--no-compile", action="store_true", help="CUDA case: eager only, no torch.compile")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; use --device cpu")
    return args


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
        per_worker = ", ".join(f"{k} {v['pairs_per_s_per_worker']:.0f}" for k, v in data["results"].items())
        parts.append(f"data/worker {per_worker} pairs/s")
        if data.get("workers_to_feed"):
            parts.append("workers to feed " + ", ".join(f"{k} {v}" for k, v in data["workers_to_feed"].items()))
    return f"crocoman-bench: {'; '.join(parts)} -> {path} ({seconds:.0f} s)"


def main(argv: Sequence[str] | None = None) -> dict:
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

    print(f"[1/3] CPU demo model training on {device_info['name']}", file=sys.stderr)
    cases["cpu_demo_train"] = cpu_demo_case(device, device_info, args.steps, args.warmup)

    print("[2/3] ViT-B / ViT-L pretraining (CUDA only)", file=sys.stderr)
    if device.type == "cuda":
        compile_modes = (False,) if args.no_compile else (False, True)
        cases["vit_pretrain"] = vit_pretrain_case(device, device_info, args.steps, args.warmup, compile_modes)
    else:
        cases["vit_pretrain"] = {"skipped": "needs a CUDA device (bf16 ViT-B/L steps are not meaningful on CPU)"}

    print("[3/3] data pipeline", file=sys.stderr)
    if args.skip_data:
        cases["data_pipeline"] = {"skipped": "--skip-data"}
    else:
        with tempfile.TemporaryDirectory(prefix="crocoman-bench-") as workdir:
            try:
                cases["data_pipeline"] = data_case(args.steps, args.shards, Path(workdir))
            except ShardsUnavailable as error:
                cases["data_pipeline"] = {"skipped": str(error)}
        if "results" in cases["data_pipeline"]:
            cases["data_pipeline"]["workers_to_feed"] = workers_to_feed(report)
            cases["data_pipeline"]["workers_to_feed_note"] = (
                "ceil(model pairs/s / pairs/s of one loader worker), model from this file's cases; on a CPU "
                "device the workers compete with the model for the same cores, so read it as a lower bound")

    report["load_average_1min"]["end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_info['slug']}.json"
    report["summary"] = summary_line(report, path, time.perf_counter() - began)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(report["summary"])
    return report


if __name__ == "__main__":
    main()
