"""``crocoman-study``: does completion pretraining help, and which pairs? One command, resumable.

For a body model and a hand model (CroCo-Man trains them separately), pretrains with one budget (a)
cross-view + cross-pose completion, (b) cross-view only, (c) cross-pose only and (d) single-image
masked autoencoding, per seed, each on its own synthetic pair shards; (e) is no pretraining. Arms are
compared two ways: **frozen probes** (``lightning_modules.probes.OnlineProbes`` on held-out labelled
people: 2D keypoints, 3D joints, gesture class; (e) is the same random encoder's score before the
first step, which every run measures) and **fine-tuning** (body mesh recovery from the body model,
gesture classification from the hand model, with a fraction of the training labels). Every run goes
through ``crocoman.main.main`` (the ``crocoman`` LightningCLI) with a config written from the task's own
YAML, its own directory and a W&B group per study. Runs go seed by seed (a seed's pretrainings, then
its fine-tunes), and a finished run leaves its record under ``--out/<preset>/records/``, beside the
results and committed with them: the study run again with the same configs reuses every record (a
pretraining's checkpoint is only needed while one of its fine-tunes has none), so an interrupted study
resumes where it stopped, on this machine or on a fresh clone. The tables are rewritten after every
finished seed. The preset (``configs/study/<name>.yaml``) holds every size; the outputs are
``results.md``, ``results.json`` and ``plot.png`` under ``--out/<preset>``.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont

from crocoman.main import main as crocoman
from crocoman.provenance import git_commit
from crocoman.synth import write_body_models, write_labelled_shards, write_pair_shards
from lightning_modules.probes import OnlineProbes

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "study"

# Pretraining arms: PairDataModule arguments that differ; None = no pretraining.
ARMS: dict[str, dict | None] = {
    "view+pose": {"cross_view_ratio": 0.5},
    "view": {"cross_view_ratio": 1.0},
    "pose": {"cross_view_ratio": 0.0},
    "mae": {"single_image": True},
    "scratch": None,
}
ARM_LABELS = {"view+pose": "(a) cross-view + cross-pose", "view": "(b) cross-view only",
              "pose": "(c) cross-pose only", "mae": "(d) single-image MAE", "scratch": "(e) no pretraining"}


@dataclass(frozen=True)
class Model:
    """A pretrained model of the study: the pair shards it learns from, the labelled people it is probed
    and fine-tuned on (keys of ``data`` in the preset and sub-folders of its root)."""

    name: str
    pairs: str
    labelled: str
    synth_task: str


MODELS = {"body": Model("body", "pairs", "bodies", "body"), "hand": Model("hand", "hand_pairs", "hands", "hand")}


@dataclass(frozen=True)
class Task:
    """A fine-tuning task of the study: the metric it is judged by and the model it starts from."""

    name: str
    title: str
    metric: str
    unit: str
    lower_is_better: bool
    model: str


TASKS = (Task("body_mesh", "body mesh", "val/pa_mpjpe", "PA-MPJPE mm", True, "body"),
         Task("gesture", "gesture", "val/top1", "top-1 %", False, "hand"))


@dataclass(frozen=True)
class Probe:
    """A frozen-encoder probe score (``OnlineProbes``), for the models whose labelled shards carry it."""

    name: str
    title: str
    unit: str
    lower_is_better: bool


PROBES = (Probe("keypoints_2d_pck", "2D keypoints", "PCK@0.1 %", False),
          Probe("joints_3d_pa_mpjpe_mm", "3D joints", "PA-MPJPE mm", True),
          Probe("joints_3d_mpjpe_mm", "3D joints", "MPJPE mm", True),
          Probe("gesture_top1", "gesture", "top-1 %", False))


@dataclass
class Column:
    """One column of the study's tables: a metric and each arm's values over the seeds (display units)."""

    title: str
    unit: str
    lower_is_better: bool
    values: dict[str, list[float]]

    def cell(self, arm: str) -> tuple[float, float, int] | None:
        """Mean, sample standard deviation and count of an arm's values, or None."""
        values = self.values.get(arm)
        return (*mean_spread(values), len(values)) if values else None


class FinalMetrics(Callback):
    """Writes the scalar metrics the run ends with (its last validation) and the online probes' scores
    (each measurement: step 0, then every validation) to a JSON file.

    The study reads a run's numbers from here rather than from a logger, so a result exists only
    for a run that finished.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {name: value.item() for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        probes = [entry for callback in trainer.callbacks if isinstance(callback, OnlineProbes)
                  for entry in callback.history]
        Path(self.path).write_text(json.dumps({"global_step": trainer.global_step, "metrics": metrics,
                                               "probes": probes}, indent=2))


def load_preset(name: str) -> dict:
    """A preset by name (``configs/study/<name>.yaml``) or path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.yaml"))
        raise FileNotFoundError(f"study preset {path} not found: give one of {known} or a path to a YAML file")
    preset = yaml.safe_load(path.read_text())
    preset.setdefault("name", path.stem)
    return preset


def set_in(config: dict, dotted: str, value) -> None:
    """``config["a"]["b"]["c"] = value`` for ``dotted = "a.b.c"``, creating the dicts on the way."""
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- data

def ensure_data(preset: dict, dry_run: bool = False) -> dict[str, Path]:
    """Write the study's synthetic data under ``data.root`` unless it is there, written with the same settings.

    Shards written with other settings are refused rather than overwritten: results cached on them
    would no longer match the data.
    """
    spec = preset["data"]
    root = Path(spec["root"])
    size, workers = spec["image_size"], spec.get("workers", 1)
    seed = spec.get("seed", 0)
    jobs = {}
    for model in MODELS.values():
        pairs = spec[model.pairs]
        jobs[model.pairs] = (write_pair_shards, {
            "num_groups": pairs["groups"], "val_groups": pairs["val_groups"], "image_size": size,
            "cameras": pairs["cameras"], "times": pairs["times"], "seed": seed,
            "groups_per_shard": pairs["per_shard"], "workers": workers, "task": model.synth_task})
        labelled = spec[model.labelled]
        jobs[model.labelled] = (write_labelled_shards, {
            "task": model.synth_task, "num_samples": labelled["samples"], "val_samples": labelled["val_samples"],
            "image_size": size, "seed": seed, "samples_per_shard": labelled["per_shard"], "workers": workers})
    paths = {"body_models": root / "body_models"}
    for name, (writer, kwargs) in jobs.items():
        out = paths[name] = root / name
        stamp = out / "study_data.json"
        if stamp.is_file():
            if json.loads(stamp.read_text()) != kwargs:
                raise ValueError(f"{out} holds {name} written with {stamp.read_text().strip()}, the preset now asks "
                                 f"for {kwargs}: delete {out} or set another data.root in the preset")
            continue
        if dry_run:
            print(f"study: would write {name} {kwargs} -> {out}")
            continue
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} is not empty but has no study_data.json (unfinished or foreign data): delete it")
        writer(out, **kwargs)
        stamp.write_text(json.dumps(kwargs))
    if not (paths["body_models"] / "smpl" / "SMPL_NEUTRAL.pkl").is_file() and not dry_run:
        write_body_models(paths["body_models"], ("smpl",))
    return paths


def label_subset(shard_dir: Path, fraction: float, seed: int) -> list[str]:
    """The training shards a run with ``fraction`` of the labels sees: fixed per seed, shared by every arm."""
    shards = sorted(str(p) for p in shard_dir.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {shard_dir}")
    count = max(1, round(fraction * len(shards)))
    if count == len(shards):
        return shards
    return sorted(random.Random(seed).sample(shards, count))


# --------------------------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One training run of the study: its config, directory and, for a fine-tune, what it starts from."""

    key: str  # e.g. "pretrain/body/view+pose/seed0", "finetune/mae/gesture/10pct/seed1"
    config: dict
    directory: Path
    record: Path  # its result, kept with the study's results (outlives the run directory)
    arm: str
    seed: int
    model: str
    task: Task | None = None
    fraction: float | None = None
    source: "Run | None" = None  # the pretraining run a fine-tune starts from

    @property
    def digest(self) -> str:
        """Identifies what the run computes: its config and, through its source, the weights it starts from.

        The logger and the study's own ``FinalMetrics`` are left out: renaming a W&B run or group, or moving
        the study's module, must not redo finished training.
        """
        trainer = {k: v for k, v in self.config["trainer"].items() if k != "logger"}
        trainer["callbacks"] = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith(".FinalMetrics")]
        return digest({"config": {**self.config, "trainer": trainer},
                       "source": self.source.digest if self.source else None})

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    def cached(self, weights_needed: bool = False) -> dict | None:
        """The record of an earlier run of exactly this run; for a pretraining whose weights a fine-tune still
        needs, only if its checkpoint is still there too."""
        if not self.record.is_file():
            return None
        result = json.loads(self.record.read_text())
        if result.get("digest") != self.digest or (weights_needed and not self.checkpoint.is_file()):
            return None
        return result


def run_config(base: str, run_dir: Path, name: str, group: str, job_type: str, seed: int, steps: int,
               settings: dict, checkpoint: bool, probes: dict | None = None) -> dict:
    """A task's own LightningCLI YAML with the study's budget, paths, seed and W&B group written in, and
    ``OnlineProbes`` with ``probes`` as its arguments (instead of the config's own) when given."""
    config = yaml.safe_load((REPO / base).read_text())
    config["seed_everything"] = seed
    trainer = config["trainer"]
    trainer.update(max_steps=steps, default_root_dir=str(run_dir), num_sanity_val_steps=0,
                   enable_checkpointing=checkpoint)
    trainer["logger"] = [{"class_path": "lightning_modules.loggers.WandbLogger",
                          "init_args": {"save_dir": str(run_dir), "name": name, "group": group,
                                        "job_type": job_type}}]
    callbacks = [c for c in trainer.get("callbacks", [])
                 if not c["class_path"].endswith(("ModelCheckpoint", "OnlineProbes"))]
    if probes is not None:
        callbacks.append({"class_path": "lightning_modules.probes.OnlineProbes", "init_args": probes})
    if checkpoint:  # only the last weights: what fine-tuning starts from
        callbacks.append({"class_path": "lightning_modules.callbacks.ModelCheckpoint",
                          "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True,
                                        "save_top_k": 0}})
    callbacks.append({"class_path": "crocoman.study.FinalMetrics", "init_args": {"path": str(run_dir / "metrics.json")}})
    trainer["callbacks"] = callbacks
    for dotted, value in settings.items():
        set_in(config, dotted, value)
    return config


def plan(preset: dict, data: dict[str, Path], seeds: list[int], steps_scale: float, group: str,
         runs_root: Path, records: Path) -> tuple[list[Run], list[Run]]:
    """Every pretraining and fine-tuning run of the study (records of finished runs go to ``records``)."""
    common = {"data.init_args.image_size": preset["data"]["image_size"],
              **{f"model.init_args.backbone.init_args.{k}": v for k, v in preset["backbone"].items()},
              **{f"trainer.{k}": v for k, v in preset.get("trainer", {}).items()},
              **{f"data.init_args.{k}": v for k, v in preset.get("loader", {}).items()}}
    pre = preset["pretrain"]
    pre_steps = max(1, round(pre["steps"] * steps_scale))
    probe_samples = preset.get("probes", {}).get("samples", 600)
    pretrain_runs = {}
    for seed in seeds:
        for model in MODELS.values():
            for arm, pair_args in ARMS.items():
                if pair_args is None:
                    continue
                directory = runs_root / "pretrain" / model.name / arm / f"seed{seed}"
                settings = {**common, "data.init_args.train_shards": str(data[model.pairs] / "train"),
                            "data.init_args.val_shards": str(data[model.pairs] / "val"),
                            "data.init_args.batch_size": pre["batch_size"],
                            "data.init_args.epoch_pairs": pre_steps * pre["batch_size"],
                            **{f"data.init_args.{k}": v for k, v in pair_args.items()}, **pre.get("overrides", {})}
                probes = {"shards": str(data[model.labelled] / "val"), "samples": probe_samples, "missing": "error"}
                config = run_config(pre["config"], directory, f"pretrain-{model.name}-{arm}-s{seed}", group,
                                    "pretrain", seed, pre_steps, settings, checkpoint=True, probes=probes)
                key = f"pretrain/{model.name}/{arm}/seed{seed}"
                pretrain_runs[model.name, arm, seed] = Run(key, config, directory, records / f"{key}.json", arm,
                                                           seed, model.name)
    finetune_runs = []
    for seed in seeds:
        for task in TASKS:
            spec = preset["finetune"][task.name]
            steps = max(1, round(spec["steps"] * steps_scale))
            labelled = data[MODELS[task.model].labelled]
            for fraction in preset["label_fractions"]:
                # a dry run before the data exists validates the configs with the whole folder instead
                shards = label_subset(labelled / "train", fraction, seed) if (labelled / "train").is_dir() \
                    else [str(labelled / "train")]
                percent = f"{round(100 * fraction)}pct"
                for arm in ARMS:
                    source = pretrain_runs.get((task.model, arm, seed))
                    directory = runs_root / "finetune" / arm / task.name / percent / f"seed{seed}"
                    settings = {**common, "data.init_args.train_shards": shards,
                                "data.init_args.val_shards": str(labelled / "val"),
                                "data.init_args.batch_size": spec["batch_size"],
                                "data.init_args.epoch_samples": steps * spec["batch_size"],
                                "model.init_args.pretrained": str(source.checkpoint) if source else None}
                    if task.name == "body_mesh":
                        settings["model.init_args.body_model.init_args.model_path"] = str(data["body_models"])
                    config = run_config(spec["config"], directory, f"{task.name}-{arm}-{percent}-s{seed}", group,
                                        "finetune", seed, steps, {**settings, **spec.get("overrides", {})},
                                        checkpoint=False)
                    key = f"finetune/{arm}/{task.name}/{percent}/seed{seed}"
                    finetune_runs.append(Run(key, config, directory, records / f"{key}.json", arm, seed, task.model,
                                             task, fraction, source))
    return list(pretrain_runs.values()), finetune_runs


def execute(run: Run, dry_run: bool, weights_needed: bool) -> dict | None:
    """Run (or reuse) one run through the ``crocoman`` CLI; returns its result record (None when dry)."""
    cached = run.cached(weights_needed)
    if cached is not None:
        print(f"study: {run.key}: reusing {run.record}", flush=True)
        return cached
    run.directory.mkdir(parents=True, exist_ok=True)
    config_path = run.directory / "study_config.yaml"
    config_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    if dry_run:  # the CLI parses and validates every class path and argument, then exits
        with open(os.devnull, "w") as sink, redirect_stdout(sink):
            try:
                crocoman(["fit", "-c", str(config_path), "--print_config"])
            except SystemExit as stop:
                if stop.code not in (0, None):
                    raise RuntimeError(f"{run.key}: {config_path} does not validate (exit {stop.code})") from None
        return None
    metrics_path = run.directory / "metrics.json"
    metrics_path.unlink(missing_ok=True)
    print(f"study: {run.key}: training ({config_path})", flush=True)
    commit = git_commit()  # the code on disk as the run starts (modules a run imports first are read then)
    started = time.perf_counter()
    try:
        crocoman(["fit", "-c", str(config_path)])
    finally:
        import wandb  # each run is its own W&B run, as a separate process would make it

        wandb.finish()
    if not metrics_path.is_file():
        raise RuntimeError(f"{run.key}: fit ended without {metrics_path}; see the log above and {run.directory}")
    finished = json.loads(metrics_path.read_text())
    result = {"key": run.key, "arm": run.arm, "seed": run.seed, "model": run.model, "digest": run.digest,
              "commit": commit, "wall_seconds": round(time.perf_counter() - started, 1), **finished}
    if run.task is None:  # a pretraining: the probes before its first step (the random encoder) and at its end
        if len(finished["probes"]) < 2:
            raise RuntimeError(f"{run.key}: the online probes measured {len(finished['probes'])} time(s), expected "
                               f"at step 0 and after training; see the log above")
        result |= {"probe_floor": finished["probes"][0][1], "probe_final": finished["probes"][-1][1]}
    if run.task is not None:
        value = finished["metrics"].get(run.task.metric)
        if value is None:
            raise RuntimeError(f"{run.key}: the run logged no {run.task.metric} "
                               f"(logged: {sorted(finished['metrics'])})")
        result |= {"task": run.task.name, "fraction": run.fraction, "metric": run.task.metric, "value": value}
    run.record.parent.mkdir(parents=True, exist_ok=True)
    run.record.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ------------------------------------------------------------------------------------------ reports

def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def display(unit: str, value: float) -> float:
    return 100 * value if unit.endswith("%") else value


def probe_columns(records: list[dict]) -> list[Column]:
    """Per model and probe score: arms (a)-(d) after pretraining, (e) the same seeds' random encoders
    (every run measures its encoder before the first step; the arms of a seed start from the same one)."""
    columns = []
    for model in MODELS:
        runs = [r for r in records if r["model"] == model]
        for probe in PROBES:
            if not runs or probe.name not in runs[0]["probe_final"]:
                continue
            values = {arm: [display(probe.unit, r["probe_final"][probe.name]) for r in runs if r["arm"] == arm]
                      for arm in ARMS if ARMS[arm] is not None}
            first_arm = next(iter(values))
            values["scratch"] = [display(probe.unit, r["probe_floor"][probe.name]) for r in runs
                                 if r["arm"] == first_arm]
            columns.append(Column(f"{model} probe: {probe.title}", probe.unit, probe.lower_is_better, values))
    return columns


def finetune_columns(records: list[dict], fractions: list[float]) -> list[Column]:
    """Per task and label fraction: each arm's fine-tuned metric over the seeds."""
    columns = []
    for task in TASKS:
        for fraction in fractions:
            values = {arm: [display(task.unit, r["value"]) for r in records
                            if r["task"] == task.name and r["arm"] == arm and r["fraction"] == fraction] for arm in ARMS}
            if any(values.values()):
                columns.append(Column(f"{task.title} fine-tuned, {round(100 * fraction)}% labels", task.unit,
                                      task.lower_is_better, values))
    return columns


def floors_agree(records: list[dict]) -> bool:
    """Whether the arms of each model and seed measured the same random encoder before their first step."""
    floors: dict = {}
    for record in records:  # the scores, not the time they took
        scores = {name: value for name, value in record["probe_floor"].items() if name != "seconds_total"}
        floors.setdefault((record["model"], record["seed"]), []).append(scores)
    return all(all(floor == group[0] for floor in group) for group in floors.values())


def verdicts(columns: list[Column]) -> list[str]:
    """Per column: the best arm, whether (a) beats (e) by more than the two spreads together, and the
    order of the pretraining arms (a)-(d)."""
    lines = []
    for column in columns:
        cells = {arm: column.cell(arm) for arm in ARMS if column.cell(arm)}
        if not cells:
            continue
        best = (min if column.lower_is_better else max)(cells, key=lambda arm: cells[arm][0])
        line = f"- {column.title}: best {ARM_LABELS[best]}"
        if "view+pose" in cells and "scratch" in cells:
            (full, full_sd, _), (scratch, scratch_sd, _) = cells["view+pose"], cells["scratch"]
            gain = (scratch - full) if column.lower_is_better else (full - scratch)
            clear = abs(gain) > full_sd + scratch_sd
            word = ("beats" if gain > 0 else "is worse than") if clear else "is within the seed spread of"
            line += f"; (a) {word} (e) by {abs(gain):.2f} {column.unit.split()[-1]}"
        pretrained = [arm for arm in cells if arm != "scratch"]
        order = sorted(pretrained, key=lambda arm: cells[arm][0], reverse=not column.lower_is_better)
        line += "; pretrained arms best first: " + ", ".join(ARM_LABELS[arm].split()[0] for arm in order)
        lines.append(line)
    return lines


MAE_NOTE = ("Arm (d), single-image MAE: image 1 is drawn and masked exactly as in the pair arms; image 2 is a "
            "blank image, so the decoder (same network, same FLOPs) gets nothing about the hidden patches through "
            "its cross-attention. 'Image 2 = image 1' taken literally would let it copy them.")
PROBE_NOTE = ("Probes (`lightning_modules/probes.py`) are fitted in closed form on the frozen encoder's tokens of "
              "the first two thirds of the held-out labelled people and scored on the rest: 2D keypoints by a "
              "per-token linear heat map (PCK at 10% of the image side), root-relative 3D joints and the gesture "
              "class from pooled tokens by ridge regression. Row (e) is each seed's random encoder, measured by "
              "every run before its first step.")
SUBSET_NOTE = ("A fraction below 100% fine-tunes on a subset of the training shards drawn once per seed and shared "
               "by every arm, for the same number of steps as 100%. Every run's numbers: `results.json`; plot: "
               "`plot.png`.")


def table(columns: list[Column]) -> list[str]:
    heads = [f"{c.title} ({c.unit}, {'lower' if c.lower_is_better else 'higher'} is better)" for c in columns]
    rows = ["| pretraining | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(columns)]
    for arm in ARMS:
        cells = [column.cell(arm) for column in columns]
        rows.append(f"| {ARM_LABELS[arm]} | " + " | ".join(f"{c[0]:.2f} ± {c[1]:.2f}" if c else "–" for c in cells)
                    + " |")
    return rows


def markdown(probes: list[Column], finetunes: list[Column], header: dict) -> str:
    seeds = ", ".join(map(str, header["seeds"]))
    return "\n".join([
        f"# Pretraining study, preset `{header['preset']}`", "",
        f"Cells: mean ± sample standard deviation over seeds {seeds} (one run per seed).", "",
        *([f"**Partial:** seeds {', '.join(map(str, header['pending']))} still to run; the same command continues "
           "the study from its records.", ""] if header.get("pending") else []),
        "## Frozen probes", "", *table(probes), "",
        "## Fine-tuning", "", *table(finetunes), "",
        "Reading (computed from the tables; 'beats' means by more than the two spreads together):", "",
        *verdicts(probes + finetunes), "",
        "| | |", "| --- | --- |",
        f"| command | `{header['command']}` |",
        f"| commit | `{header['commit']}` |",
        f"| seeds | {seeds} |",
        (f"| wall time | {header['wall_seconds'] / 60:.1f} min for this invocation; the runs' own times add up "
         f"to {header['run_seconds'] / 60:.1f} min |"),
        f"| machine | {header['machine']} |",
        f"| finished | {header['finished']} |", "",
        "Budget per arm: " + header["budget"], "",
        PROBE_NOTE + (" The arms of each seed started from the same random encoder (their step-0 probe scores are "
                      "identical)." if header["floors_agree"] else " NOTE: the arms of a seed did not measure the "
                      "same step-0 scores; row (e) is arm (a)'s."), "",
        MAE_NOTE, "", SUBSET_NOTE, ""])


COLOURS = {"view+pose": (214, 39, 40), "view": (31, 119, 180), "pose": (44, 160, 44), "mae": (148, 103, 189),
           "scratch": (90, 90, 90)}


def plot(columns: list[Column], path: Path, per_row: int = 4) -> None:
    """One panel per column: each arm's seeds (small dots) and mean with its seed spread (bar)."""
    panel_w, panel_h, margin = 300, 230, 48
    rows = math.ceil(len(columns) / per_row)
    image = Image.new("RGB", (panel_w * min(per_row, len(columns)), panel_h * rows + 50), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for index, column in enumerate(columns):
        left, top = (index % per_row) * panel_w, (index // per_row) * panel_h
        values = [v for vs in column.values.values() for v in vs]
        if not values:
            continue
        y_lo, y_hi = min(values), max(values)
        pad = 0.1 * (y_hi - y_lo or 1.0)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def to_y(y: float, top: int = top, y_lo: float = y_lo, y_hi: float = y_hi) -> float:
            return top + 30 + (y_hi - y) / (y_hi - y_lo) * (panel_h - 60)

        draw.rectangle((left + margin, to_y(y_hi), left + panel_w - 10, to_y(y_lo)), outline="black")
        for tick in range(4):
            y = y_lo + (y_hi - y_lo) * tick / 3
            draw.text((left + 4, to_y(y) - 6), f"{y:.3g}", fill="black", font=font)
        better = "lower" if column.lower_is_better else "higher"
        draw.text((left + 6, top + 6), f"{column.title}", fill="black", font=font)
        draw.text((left + 6, top + 16), f"{column.unit} ({better} is better)", fill="black", font=font)
        step = (panel_w - margin - 10) / len(ARMS)
        for rank, (arm, colour) in enumerate(COLOURS.items()):
            x = left + margin + step * (rank + 0.5)
            cell = column.cell(arm)
            if cell is None:
                continue
            for value in column.values[arm]:
                draw.ellipse((x + 6, to_y(value) - 2, x + 10, to_y(value) + 2), fill=colour)
            mean, spread, _ = cell
            draw.line((x, to_y(mean - spread), x, to_y(mean + spread)), fill=colour, width=2)
            draw.ellipse((x - 4, to_y(mean) - 4, x + 4, to_y(mean) + 4), fill=colour)
            draw.text((x - 8, to_y(y_lo) + 4), ARM_LABELS[arm].split()[0], fill="black", font=font)
    for index, (arm, colour) in enumerate(COLOURS.items()):
        x, y = 10 + index * 230, panel_h * rows + 20
        draw.line((x, y + 6, x + 20, y + 6), fill=colour, width=3)
        draw.text((x + 26, y), ARM_LABELS[arm], fill="black", font=font)
    image.save(path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    load = f", load average {os.getloadavg()[0]:.1f} at start" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads{load}"


# ---------------------------------------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crocoman-study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="configs/study/<name>.yaml, or a path to a preset YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/study"), help="results go to OUT/<preset>/")
    parser.add_argument("--runs", type=Path, default=Path("runs/study"), help="run directories go to RUNS/<preset>/")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every run's steps (at least 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate every run's config through the CLI; write no data, train nothing")
    return parser.parse_args(argv)


def run_study(argv: list[str] | None = None) -> dict:
    """Run the study; returns what ``results.json`` holds (nothing for a dry run)."""
    args = parse_args(argv)
    # the study hands each run its arguments on purpose, whatever its own command line was
    warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
    started = time.perf_counter()
    preset = load_preset(args.preset)
    if preset.get("threads"):
        torch.set_num_threads(preset["threads"])
    header = {"preset": preset["name"], "seeds": args.seeds, "machine": machine(),
              "command": shlex.join(["crocoman-study", *(sys.argv[1:] if argv is None else argv)])}
    group = f"study-{preset['name']}"
    data = ensure_data(preset, args.dry_run)
    runs_root, out = args.runs / preset["name"], args.out / preset["name"]
    pretrain_runs, finetune_runs = plan(preset, data, args.seeds, args.steps_scale, group, runs_root,
                                        out / "records")
    print(f"study: {len(pretrain_runs)} pretraining and {len(finetune_runs)} fine-tuning runs under {runs_root}",
          flush=True)
    weights_needed = {run.source.key for run in finetune_runs if run.source and run.cached() is None}
    from tqdm import tqdm

    records: dict[str, dict] = {}
    report = {}
    in_order = sorted([*pretrain_runs, *finetune_runs], key=lambda run: args.seeds.index(run.seed))
    for index, run in enumerate(tqdm(in_order, desc="study", unit="run")):
        records[run.key] = execute(run, args.dry_run, run.key in weights_needed)
        seed_done = index + 1 == len(in_order) or in_order[index + 1].seed != run.seed
        if seed_done and not args.dry_run:
            done = args.seeds[:args.seeds.index(run.seed) + 1]
            report = write_report(preset, header | {"seeds": done, "pending": args.seeds[len(done):]},
                                  args.steps_scale, out,
                                  [records[r.key] for r in pretrain_runs if r.seed in done],
                                  [records[r.key] for r in finetune_runs if r.seed in done], started)
    if args.dry_run:
        print(f"study: dry run: {len(records)} run configs validated under {runs_root}")
        return {}
    print(f"study: {len(report['finetune'])} fine-tunes over {len(report['pretrain'])} pretrainings in "
          f"{report['wall_seconds'] / 60:.1f} min -> {out / 'results.md'}, results.json, plot.png")
    return report


def write_report(preset: dict, header: dict, steps_scale: float, out: Path, pretrain_records: list[dict],
                 finetune_records: list[dict], started: float) -> dict:
    """Tables, verdicts and plot of the seeds in ``header`` (results.md, results.json, plot.png in ``out``)."""
    probes = probe_columns(pretrain_records)
    finetunes = finetune_columns(finetune_records, sorted(preset["label_fractions"]))
    records = pretrain_records + finetune_records
    header = header | {
        "commit": ", ".join(sorted({r.get("commit", "unknown") for r in records})),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "run_seconds": sum(r["wall_seconds"] for r in records),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "floors_agree": floors_agree(pretrain_records),
        "budget": (f"pretraining {round(preset['pretrain']['steps'] * steps_scale)} steps x batch "
                   f"{preset['pretrain']['batch_size']} per model ({', '.join(MODELS)}); " + "; ".join(
                       f"{t.title} {round(preset['finetune'][t.name]['steps'] * steps_scale)} steps x "
                       f"batch {preset['finetune'][t.name]['batch_size']} from the {t.model} model"
                       for t in TASKS)
                   + f"; backbone {preset['backbone']}, {preset['data']['image_size']} px")}
    out.mkdir(parents=True, exist_ok=True)
    report = {**header, "preset_config": preset, "pretrain": pretrain_records, "finetune": finetune_records,
              "columns": [{"title": c.title, "unit": c.unit, "lower_is_better": c.lower_is_better,
                           "values": c.values} for c in probes + finetunes]}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(probes, finetunes, header))
    plot(probes + finetunes, out / "plot.png")
    return report


def main(argv: list[str] | None = None) -> None:
    """The ``crocoman-study`` entry point (console scripts exit with what it returns, so: nothing)."""
    run_study(argv)


if __name__ == "__main__":
    main()
