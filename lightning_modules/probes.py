"""Online probes: is the pretraining learning something useful, asked at every validation.

The completion loss falls for an encoder that learns nothing transferable, and a fine-tune per
checkpoint is too slow to ask often. So at every validation, and once before the first step (the
random encoder's floor), the frozen encoder's features of a held-out labelled set feed probes
fitted on the spot in closed form (ridge regression, penalty chosen on a held-out part of the
fitting half) and scored on the other half:

- ``probe/keypoints_2d_pck``: per patch token, a linear map to one heat value per joint (a
  Gaussian around the joint, one token wide); the hottest token is the joint. PCK at 10% of the
  image side, over the visible keypoints. Dense: it asks whether tokens know where body parts are.
- ``probe/joints_3d_mpjpe_mm`` and ``probe/joints_3d_pa_mpjpe_mm``: root-relative 3D joints from
  the tokens pooled to the image and to its four quarters.
- ``probe/gesture_top1``: class from the pooled tokens (ridge on one-hot targets), for shards with
  ``cls`` labels.

The labelled set is decoded once and kept in memory; features are computed on rank 0 only, and
the scores are broadcast to every rank (which wait for them): each rank's history and
``trainer.callback_metrics`` hold the same ``probe/<name>`` values, so a checkpoint or early-stopping
monitor can use them under DDP.
"""

import json
import logging
import time

import torch
import torch.nn.functional as F
import webdataset as wds
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from datamodules.format import ARRAYS_KEY, CLASS_KEY, META_KEY
from datamodules.labelled import LabelledSample, find_manifest
from datamodules.shards import expand_shards
from lightning_modules.mesh_metrics import procrustes_align

log = logging.getLogger(__name__)

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # times the mean feature variance


def ridge_fit(features: Tensor, targets: Tensor, penalty: float) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``targets ~ features @ W + b`` with an L2 penalty on W (float64 normal equations)."""
    x, y = features.double(), targets.double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    x, y = x - mean_x, y - mean_y
    gram = x.T @ x
    scale = penalty * gram.diagonal().mean().clamp_min(1e-12)
    weights = torch.linalg.solve(gram + scale * torch.eye(len(gram), dtype=gram.dtype), x.T @ y)
    return weights, mean_y - mean_x @ weights


def ridge(fit_x: Tensor, fit_y: Tensor, score_x: Tensor, groups: Tensor | None = None) -> Tensor:
    """Predictions for ``score_x`` of the ridge fit on (fit_x, fit_y), its penalty chosen on the last
    fifth of the fitting rows (``groups``: a sample id per row, so one sample's rows stay on one side)."""
    ids = groups if groups is not None else torch.arange(len(fit_x))
    held = ids >= ids.max() - (ids.max() - ids.min() + 1) // 5 + 1
    best, best_error = PENALTIES[0], float("inf")
    for penalty in PENALTIES:
        weights, bias = ridge_fit(fit_x[~held], fit_y[~held], penalty)
        error = float(((fit_x[held].double() @ weights + bias) - fit_y[held].double()).square().mean())
        if error < best_error:
            best, best_error = penalty, error
    weights, bias = ridge_fit(fit_x, fit_y, best)
    return (score_x.double() @ weights + bias).float()


def every_shard(urls: list[str]) -> list[str]:
    """All shards for this process: rank 0 probes on the whole set (webdataset would split them by rank,
    or refuse without a splitter, under DDP)."""
    return urls


def pooled(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, N, D) tokens pooled over the image and over its four quarters: (B, 5 D)."""
    maps = tokens.transpose(1, 2).reshape(len(tokens), -1, *grid)
    quarters = F.adaptive_avg_pool2d(maps, 2).flatten(2).transpose(1, 2).flatten(1)
    return torch.cat([tokens.mean(1), quarters], 1)


class OnlineProbes(Callback):
    """Probe the frozen encoder on a labelled held-out set at every validation; log ``probe/<name>``.

    Args:
        shards: labelled shards (``crocoman-data labelled`` or a converter's output: keypoints and/or
            ``cls``); the first ``samples`` are read once, the first two thirds fit, the rest score.
        samples: how many labelled crops to use.
        image_size: their side in pixels (default: the backbone's input size).
        batch_size: images per encoder forward pass.
        missing: what to do without shards at ``shards``: ``warn`` (train without probes, saying
            so) or ``error``.
    """

    def __init__(self, shards: str, samples: int = 600, image_size: int | None = None, batch_size: int = 64,
                 missing: str = "warn") -> None:
        if missing not in ("warn", "error"):
            raise ValueError(f"missing={missing!r}: 'warn' or 'error'")
        self.shards, self.samples, self.image_size = shards, samples, image_size
        self.batch_size, self.missing = batch_size, missing
        self.data: dict[str, Tensor] | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self.seconds = 0.0

    def load(self, image_size: int) -> dict[str, Tensor] | None:
        try:
            urls = expand_shards(self.shards)
        except FileNotFoundError as error:
            if self.missing == "error":
                raise
            log.warning("online probes are off: %s. Make probe shards with: crocoman-data labelled --task body "
                        "--out data/synth_probe --samples 400 --val-samples 600 --size 128 --no-vertices", error)
            return None
        manifest = find_manifest(self.shards)
        first = next(iter(wds.WebDataset(urls[:1], shardshuffle=False, nodesplitter=every_shard)))
        keys = tuple(key for key in (CLASS_KEY, META_KEY, ARRAYS_KEY) if key in first)
        decode = LabelledSample(keys, image_size, augment=False, crop_scale=(1.0, 1.0), color_jitter=0.0,
                                num_classes=len(manifest["classes"]) if "classes" in manifest else None)
        samples = []
        for sample in wds.WebDataset(urls, shardshuffle=False, nodesplitter=every_shard):
            samples.append(decode(sample))
            if len(samples) == self.samples:
                break
        data = {"image": torch.stack([s["image"] for s in samples])}
        for name in ("keypoints_2d", "keypoints_3d", "label"):
            if all(name in s for s in samples):
                data[name] = torch.stack([s[name] for s in samples])
        return data

    @torch.no_grad()
    def tokens(self, module: LightningModule) -> Tensor:
        backbone = module.backbone
        training = backbone.training
        backbone.eval()
        out = []
        for start in range(0, len(self.data["image"]), self.batch_size):
            images = self.data["image"][start:start + self.batch_size].to(module.device).float().div_(255.0)
            out.append(backbone.encode(images)[0].float().cpu())
        backbone.train(training)
        return torch.cat(out)

    def scores(self, tokens: Tensor, grid: tuple[int, int]) -> dict[str, float]:
        count = len(tokens)
        fit = torch.arange(count) < (2 * count) // 3
        results = {}
        if "keypoints_2d" in self.data:
            results["keypoints_2d_pck"] = self.keypoints_2d(tokens, grid, fit)
        if "keypoints_3d" in self.data:
            results.update(self.joints_3d(pooled(tokens, grid), fit))
        if "label" in self.data:
            labels = self.data["label"]
            onehot = F.one_hot(labels, int(labels.max()) + 1).float()
            features = pooled(tokens, grid)
            predicted = ridge(features[fit], onehot[fit], features[~fit]).argmax(1)
            results["gesture_top1"] = float((predicted == labels[~fit]).float().mean())
        return results

    def keypoints_2d(self, tokens: Tensor, grid: tuple[int, int], fit: Tensor) -> float:
        keypoints = self.data["keypoints_2d"]  # (S, J, 3) pixels of the probe image + confidence
        size = self.data["image"].shape[-1]
        rows, cols = grid
        cell = size / cols
        centres = torch.stack(torch.meshgrid((torch.arange(rows) + 0.5) * size / rows - 0.5,
                                             (torch.arange(cols) + 0.5) * cell - 0.5, indexing="ij"), -1)
        centres = centres.flip(-1).reshape(-1, 2)  # (N, 2) as (x, y)
        distance = (centres[None, :, None] - keypoints[:, None, :, :2]).square().sum(-1)  # (S, N, J)
        heat = torch.exp(-distance / (2 * cell**2))
        samples = torch.arange(len(tokens))[:, None].expand(-1, rows * cols)
        predicted = ridge(tokens[fit].flatten(0, 1), heat[fit].flatten(0, 1), tokens[~fit].flatten(0, 1),
                          groups=samples[fit].flatten())
        hottest = predicted.view(int((~fit).sum()), rows * cols, -1).argmax(1)  # (S', J)
        error = (centres[hottest] - keypoints[~fit, :, :2]).norm(dim=-1)
        visible = (keypoints[~fit, :, 2] > 0) & (keypoints[~fit, :, :2] >= 0).all(-1) & (
            keypoints[~fit, :, :2] < size).all(-1)
        return float((error[visible] < 0.1 * size).float().mean())

    def joints_3d(self, features: Tensor, fit: Tensor) -> dict[str, float]:
        joints = self.data["keypoints_3d"][..., :3]
        relative = joints - joints[:, :1]  # root-relative (the first joint is the root in our layouts)
        predicted = ridge(features[fit], relative[fit].flatten(1), features[~fit]).view(-1, *relative.shape[1:])
        truth = relative[~fit]
        return {"joints_3d_mpjpe_mm": float(1000 * (predicted - truth).norm(dim=-1).mean()),
                "joints_3d_pa_mpjpe_mm": float(1000 * (procrustes_align(predicted, truth) - truth).norm(dim=-1).mean())}

    def measure(self, module: LightningModule) -> dict[str, float] | None:
        """The probe scores of the module's encoder now (None without probe data)."""
        began = time.perf_counter()
        if self.data is None:
            backbone = module.backbone
            self.data = self.load(self.image_size or backbone.patch_grid[0] * backbone.patch_size) or {}
        if not self.data:
            return None
        tokens = self.tokens(module)
        results = self.scores(tokens, module.backbone.image_grid(self.data["image"][:1]))
        self.seconds += time.perf_counter() - began
        return results | {"seconds_total": self.seconds}

    def probe(self, trainer: Trainer, module: LightningModule) -> None:
        """Measure on rank 0, hand the scores to every rank, log them."""
        results = trainer.strategy.broadcast(self.measure(module) if trainer.is_global_zero else None, src=0)
        if results is None:
            return
        self.seconds = results["seconds_total"]
        self.history.append((trainer.global_step, results))
        metrics = {f"probe/{name}": value for name, value in results.items()}
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step == 0:  # the floor: what the untrained encoder's features give
            self.probe(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.probe(trainer, pl_module)

    def summary_lines(self) -> list[str]:
        """Lines for the run summary: each probe at its first and last measurement."""
        if len(self.history) < 2:
            return []
        (first_step, first), (last_step, last) = self.history[0], self.history[-1]
        scores = ", ".join(f"{name} {first[name]:.3g} -> {last[name]:.3g}" for name in last if name != "seconds_total")
        return [f"  probes (step {first_step} -> {last_step}): {scores}; {self.seconds:.0f} s in all"]

    @property
    def state_key(self) -> str:
        """One per probe set, so a config may probe on several (say bodies and hands)."""
        return self._generate_state_key(shards=self.shards)

    def state_dict(self) -> dict:
        return {"history": json.dumps(self.history), "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(entry) for entry in json.loads(state_dict["history"])]
        self.seconds = state_dict["seconds"]

