"""``crocoman-study``: the pretraining study of issue #8 on the synthetic world, in one command.

Pretrains with one budget (steps, batch, model) (a) cross-view + cross-pose completion, (b)
cross-view only, (c) cross-pose only, (d) single-image masked autoencoding, then fine-tunes each of
them and (e) a randomly initialised encoder on body mesh recovery (PA-MPJPE) and gesture
classification (top-1) with a fraction of the training labels, per seed. Every run goes through
``tools.main.main`` (the ``crocoman`` LightningCLI) with a config written from the task's own YAML,
its own directory and a W&B group per study; a finished run leaves ``result.json``, reused when
the study is run again with the same config, so an interrupted study resumes where it stopped.
The preset (``configs/study/<name>.yaml``) holds every size; the outputs are ``results.md``,
``results.json`` and ``plot.png`` under ``--out/<preset>``.
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

from tools.main import main as crocoman
from tools.provenance import git_commit
from tools.synth import write_body_models, write_labelled_shards, write_pair_shards

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
class Task:
    """A fine-tuning task of the study: the metric it is judged by and the data it reads."""

    name: str
    title: str
    metric: str
    unit: str
    lower_is_better: bool
    shards: str  # sub-folder of the study's data root


TASKS = (Task("body_mesh", "body mesh", "val/pa_mpjpe", "PA-MPJPE mm", True, "bodies"),
         Task("gesture", "gesture", "val/top1", "top-1 %", False, "hands"))


class FinalMetrics(Callback):
    """Writes the scalar metrics the run ends with (its last validation) to a JSON file.

    The study reads a run's numbers from here rather than from a logger, so a result exists only
    for a run that finished.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = {name: value.item() for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        Path(self.path).write_text(json.dumps({"global_step": trainer.global_step, "metrics": metrics}, indent=2))


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
    jobs = {
        "pairs": (write_pair_shards, {"num_groups": spec["pairs"]["groups"], "val_groups": spec["pairs"]["val_groups"],
                                      "image_size": size, "cameras": spec["pairs"]["cameras"],
                                      "times": spec["pairs"]["times"], "seed": spec.get("seed", 0),
                                      "groups_per_shard": spec["pairs"]["per_shard"], "workers": workers}),
        "bodies": (write_labelled_shards, {"task": "body", "num_samples": spec["bodies"]["samples"],
                                           "val_samples": spec["bodies"]["val_samples"], "image_size": size,
                                           "seed": spec.get("seed", 0),
                                           "samples_per_shard": spec["bodies"]["per_shard"], "workers": workers}),
        "hands": (write_labelled_shards, {"task": "hand", "num_samples": spec["hands"]["samples"],
                                          "val_samples": spec["hands"]["val_samples"], "image_size": size,
                                          "seed": spec.get("seed", 0), "samples_per_shard": spec["hands"]["per_shard"],
                                          "workers": workers}),
    }
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

    key: str  # e.g. "pretrain/view+pose/seed0", "finetune/mae/gesture/10pct/seed1"
    config: dict
    directory: Path
    arm: str
    seed: int
    task: Task | None = None
    fraction: float | None = None
    source: "Run | None" = None  # the pretraining run a fine-tune starts from

    @property
    def digest(self) -> str:
        """Identifies what the run computes: its config and, through its source, the weights it starts from.

        The logger is left out: renaming a W&B run or group must not redo finished training.
        """
        trainer = {k: v for k, v in self.config["trainer"].items() if k != "logger"}
        return digest({"config": {**self.config, "trainer": trainer},
                       "source": self.source.digest if self.source else None})

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoints" / "last.ckpt"

    def cached(self) -> dict | None:
        """The result of an earlier run of exactly this run, if it finished (and left its checkpoint)."""
        path = self.directory / "result.json"
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("digest") != self.digest or (self.task is None and not self.checkpoint.is_file()):
            return None
        return result


def run_config(base: str, run_dir: Path, name: str, group: str, job_type: str, seed: int, steps: int,
               settings: dict, checkpoint: bool) -> dict:
    """A task's own LightningCLI YAML with the study's budget, paths, seed and W&B group written in."""
    config = yaml.safe_load((REPO / base).read_text())
    config["seed_everything"] = seed
    trainer = config["trainer"]
    trainer.update(max_steps=steps, default_root_dir=str(run_dir), num_sanity_val_steps=0,
                   enable_checkpointing=checkpoint)
    trainer["logger"] = [{"class_path": "lightning_modules.loggers.WandbLogger",
                          "init_args": {"save_dir": str(run_dir), "name": name, "group": group,
                                        "job_type": job_type}}]
    callbacks = [c for c in trainer.get("callbacks", []) if not c["class_path"].endswith("ModelCheckpoint")]
    if checkpoint:  # only the last weights: what fine-tuning starts from
        callbacks.append({"class_path": "lightning_modules.callbacks.ModelCheckpoint",
                          "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True,
                                        "save_top_k": 0}})
    callbacks.append({"class_path": "tools.study.FinalMetrics", "init_args": {"path": str(run_dir / "metrics.json")}})
    trainer["callbacks"] = callbacks
    for dotted, value in settings.items():
        set_in(config, dotted, value)
    return config


def plan(preset: dict, data: dict[str, Path], seeds: list[int], steps_scale: float, group: str,
         runs_root: Path) -> tuple[list[Run], list[Run]]:
    """Every pretraining and fine-tuning run of the study, in the order they run."""
    common = {"data.init_args.image_size": preset["data"]["image_size"],
              **{f"model.init_args.backbone.init_args.{k}": v for k, v in preset["backbone"].items()},
              **{f"trainer.{k}": v for k, v in preset.get("trainer", {}).items()},
              **{f"data.init_args.{k}": v for k, v in preset.get("loader", {}).items()}}
    pre = preset["pretrain"]
    pre_steps = max(1, round(pre["steps"] * steps_scale))
    pretrain_runs = {}
    for seed in seeds:
        for arm, pair_args in ARMS.items():
            if pair_args is None:
                continue
            directory = runs_root / "pretrain" / arm / f"seed{seed}"
            settings = {**common, "data.init_args.train_shards": str(data["pairs"] / "train"),
                        "data.init_args.val_shards": str(data["pairs"] / "val"),
                        "data.init_args.batch_size": pre["batch_size"],
                        "data.init_args.epoch_pairs": pre_steps * pre["batch_size"],
                        **{f"data.init_args.{k}": v for k, v in pair_args.items()}, **pre.get("overrides", {})}
            config = run_config(pre["config"], directory, f"pretrain-{arm}-s{seed}", group, "pretrain", seed,
                                pre_steps, settings, checkpoint=True)
            pretrain_runs[arm, seed] = Run(f"pretrain/{arm}/seed{seed}", config, directory, arm, seed)
    finetune_runs = []
    for seed in seeds:
        for task in TASKS:
            spec = preset["finetune"][task.name]
            steps = max(1, round(spec["steps"] * steps_scale))
            for fraction in preset["label_fractions"]:
                train = data[task.shards] / "train"
                # a dry run before the data exists validates the configs with the whole folder instead
                shards = label_subset(train, fraction, seed) if train.is_dir() else [str(train)]
                percent = f"{round(100 * fraction)}pct"
                for arm in ARMS:
                    source = pretrain_runs.get((arm, seed))
                    directory = runs_root / "finetune" / arm / task.name / percent / f"seed{seed}"
                    settings = {**common, "data.init_args.train_shards": shards,
                                "data.init_args.val_shards": str(data[task.shards] / "val"),
                                "data.init_args.batch_size": spec["batch_size"],
                                "data.init_args.epoch_samples": steps * spec["batch_size"],
                                "model.init_args.pretrained": str(source.checkpoint) if source else None}
                    if task.name == "body_mesh":
                        settings["model.init_args.body_model.init_args.model_path"] = str(data["body_models"])
                    config = run_config(spec["config"], directory, f"{task.name}-{arm}-{percent}-s{seed}", group,
                                        "finetune", seed, steps, {**settings, **spec.get("overrides", {})},
                                        checkpoint=False)
                    finetune_runs.append(Run(f"finetune/{arm}/{task.name}/{percent}/seed{seed}", config, directory,
                                             arm, seed, task, fraction, source))
    return list(pretrain_runs.values()), finetune_runs


def execute(run: Run, dry_run: bool) -> dict | None:
    """Run (or reuse) one run through the ``crocoman`` CLI; returns its result record (None when dry)."""
    cached = run.cached()
    if cached is not None:
        print(f"study: {run.key}: reusing {run.directory / 'result.json'}", flush=True)
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
    started = time.perf_counter()
    try:
        crocoman(["fit", "-c", str(config_path)])
    finally:
        import wandb  # each run is its own W&B run, as a separate process would make it

        wandb.finish()
    if not metrics_path.is_file():
        raise RuntimeError(f"{run.key}: fit ended without {metrics_path}; see the log above and {run.directory}")
    finished = json.loads(metrics_path.read_text())
    result = {"key": run.key, "arm": run.arm, "seed": run.seed, "digest": run.digest,
              "wall_seconds": round(time.perf_counter() - started, 1), **finished}
    if run.task is not None:
        value = finished["metrics"].get(run.task.metric)
        if value is None:
            raise RuntimeError(f"{run.key}: the run logged no {run.task.metric} "
                               f"(logged: {sorted(finished['metrics'])})")
        result |= {"task": run.task.name, "fraction": run.fraction, "metric": run.task.metric, "value": value}
    (run.directory / "result.json").write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------ reports

def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def display(task: Task, value: float) -> float:
    return 100 * value if task.unit.endswith("%") else value


def summarise(results: list[dict], fractions: list[float]) -> dict:
    """{task: {arm: {fraction: (mean, spread, n)}}} in display units."""
    table: dict = {}
    for task in TASKS:
        for arm in ARMS:
            for fraction in fractions:
                values = [display(task, r["value"]) for r in results
                          if r["task"] == task.name and r["arm"] == arm and r["fraction"] == fraction]
                if values:
                    table.setdefault(task.name, {}).setdefault(arm, {})[fraction] = (*mean_spread(values), len(values))
    return table


def verdicts(table: dict, fractions: list[float]) -> list[str]:
    """Per column: the best arm, and whether full pretraining beats no pretraining by more than the spreads."""
    lines = []
    for task in TASKS:
        for fraction in fractions:
            cells = {arm: table.get(task.name, {}).get(arm, {}).get(fraction) for arm in ARMS}
            cells = {arm: cell for arm, cell in cells.items() if cell}
            if not cells:
                continue
            best = (min if task.lower_is_better else max)(cells, key=lambda arm: cells[arm][0])
            line = f"- {task.title}, {round(100 * fraction)}% labels: best {ARM_LABELS[best]}"
            if "view+pose" in cells and "scratch" in cells:
                (full, full_sd, _), (scratch, scratch_sd, _) = cells["view+pose"], cells["scratch"]
                gain = (scratch - full) if task.lower_is_better else (full - scratch)
                clear = abs(gain) > full_sd + scratch_sd
                word = ("beats" if gain > 0 else "is worse than") if clear else "is within the seed spread of"
                line += f"; (a) {word} (e) by {abs(gain):.2f} {task.unit.split()[-1]}"
            lines.append(line)
    return lines


MAE_NOTE = ("Arm (d), single-image MAE: image 1 is drawn and masked exactly as in the pair arms; image 2 is a "
            "blank image, so the decoder (same network, same FLOPs) gets nothing about the hidden patches through "
            "its cross-attention. 'Image 2 = image 1' taken literally would let it copy them.")
SUBSET_NOTE = ("A fraction below 100% fine-tunes on a subset of the training shards drawn once per seed and shared "
               "by every arm, for the same number of steps as 100%. Every run's numbers: `results.json`; plot: "
               "`plot.png`.")


def markdown(table: dict, fractions: list[float], header: dict) -> str:
    columns = [(task, fraction) for task in TASKS for fraction in fractions]
    heads = [f"{task.title} {round(100 * f)}% ({task.unit}, {'lower' if task.lower_is_better else 'higher'} "
             f"is better)" for task, f in columns]
    rows = ["| pretraining | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(columns)]
    for arm in ARMS:
        cells = []
        for task, fraction in columns:
            cell = table.get(task.name, {}).get(arm, {}).get(fraction)
            cells.append(f"{cell[0]:.2f} ± {cell[1]:.2f}" if cell else "–")
        rows.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, header["seeds"]))
    return "\n".join([
        f"# Pretraining study, preset `{header['preset']}`", "",
        f"Cells: mean ± sample standard deviation over seeds {seeds} (one fine-tune per seed).", "",
        *rows, "",
        "Reading (computed from the table; 'beats' means by more than the two spreads together):", "",
        *verdicts(table, fractions), "",
        "| | |", "| --- | --- |",
        f"| command | `{header['command']}` |",
        f"| commit | `{header['commit']}` |",
        f"| seeds | {seeds} |",
        (f"| wall time | {header['wall_seconds'] / 60:.1f} min for this invocation; the runs' own times add up "
         f"to {header['run_seconds'] / 60:.1f} min |"),
        f"| machine | {header['machine']} |",
        f"| finished | {header['finished']} |", "",
        "Budget per arm: " + header["budget"], "",
        MAE_NOTE, "", SUBSET_NOTE, ""])


COLOURS = {"view+pose": (214, 39, 40), "view": (31, 119, 180), "pose": (44, 160, 44), "mae": (148, 103, 189),
           "scratch": (90, 90, 90)}


def plot(table: dict, fractions: list[float], path: Path) -> None:
    """Metric vs label fraction, one panel per task, one line (with seed-spread bars) per pretraining arm."""
    panel_w, panel_h, margin = 460, 340, 60
    image = Image.new("RGB", (panel_w * len(TASKS), panel_h + 110), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    xs = [math.log10(f) for f in fractions]
    x_lo, x_hi = min(xs) - 0.15, max(xs) + 0.15
    for index, task in enumerate(TASKS):
        left = index * panel_w
        cells = table.get(task.name, {})
        values = [m + s * sign for arm in cells.values() for m, s, _ in arm.values() for sign in (-1, 1)]
        if not values:
            continue
        y_lo, y_hi = min(values), max(values)
        pad = 0.08 * (y_hi - y_lo or 1.0)
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def to_px(x: float, y: float, left: int = left, y_lo: float = y_lo, y_hi: float = y_hi) -> tuple[float, float]:
            return (left + margin + (x - x_lo) / (x_hi - x_lo) * (panel_w - margin - 20),
                    20 + (y_hi - y) / (y_hi - y_lo) * (panel_h - 60))

        x0, y0 = to_px(x_lo, y_lo)
        x1, y1 = to_px(x_hi, y_hi)
        draw.rectangle((x0, y1, x1, y0), outline="black")
        for tick in range(5):
            y = y_lo + (y_hi - y_lo) * tick / 4
            _, py = to_px(x_lo, y)
            draw.line((x0 - 4, py, x0, py), fill="black")
            draw.text((left + 4, py - 6), f"{y:.1f}", fill="black", font=font)
        for fraction, x in zip(fractions, xs):
            px, _ = to_px(x, y_lo)
            draw.line((px, y0, px, y0 + 4), fill="black")
            draw.text((px - 12, y0 + 8), f"{round(100 * fraction)}%", fill="black", font=font)
        better = "lower" if task.lower_is_better else "higher"
        draw.text((left + margin, y0 + 24), f"{task.title}: {task.unit} vs label fraction ({better} is better)",
                  fill="black", font=font)
        for rank, (arm, colour) in enumerate(COLOURS.items()):
            shift = (rank - 2) * 5  # pixels, so that the spread bars of the arms do not hide each other
            points = [(to_px(x, cells[arm][f][0]), to_px(x, cells[arm][f][0] - cells[arm][f][1]),
                       to_px(x, cells[arm][f][0] + cells[arm][f][1]))
                      for f, x in zip(fractions, xs) if f in cells.get(arm, {})]
            points = [((px + shift, py), lo, hi) for (px, py), (_, lo), (_, hi) in points]
            if len(points) > 1:
                draw.line([p for p, _, _ in points], fill=colour, width=2)
            for (px, py), lo, hi in points:
                draw.line((px, lo, px, hi), fill=colour, width=2)
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
    for index, (arm, colour) in enumerate(COLOURS.items()):
        x, y = 20 + (index % 3) * 300, panel_h + 50 + (index // 3) * 20
        draw.line((x, y + 6, x + 24, y + 6), fill=colour, width=3)
        draw.text((x + 30, y), ARM_LABELS[arm], fill="black", font=font)
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
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
    header = {"preset": preset["name"], "seeds": args.seeds, "commit": git_commit(), "machine": machine(),
              "command": shlex.join(["crocoman-study", *(sys.argv[1:] if argv is None else argv)])}
    group = f"study-{preset['name']}"
    data = ensure_data(preset, args.dry_run)
    runs_root = args.runs / preset["name"]
    pretrain_runs, finetune_runs = plan(preset, data, args.seeds, args.steps_scale, group, runs_root)
    print(f"study: {len(pretrain_runs)} pretraining and {len(finetune_runs)} fine-tuning runs under {runs_root}",
          flush=True)
    from tqdm import tqdm

    records = [execute(run, args.dry_run) for run in tqdm([*pretrain_runs, *finetune_runs], desc="study", unit="run")]
    if args.dry_run:
        print(f"study: dry run: {len(records)} run configs validated under {runs_root}")
        return {}
    pretrain_records, finetune_records = records[:len(pretrain_runs)], records[len(pretrain_runs):]
    fractions = sorted(preset["label_fractions"])
    table = summarise(finetune_records, fractions)
    header |= {"wall_seconds": time.perf_counter() - started,
               "run_seconds": sum(r["wall_seconds"] for r in records),
               "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "budget": (f"pretraining {round(preset['pretrain']['steps'] * args.steps_scale)} steps x batch "
                          f"{preset['pretrain']['batch_size']}; " + "; ".join(
                              f"{t.title} {round(preset['finetune'][t.name]['steps'] * args.steps_scale)} steps x "
                              f"batch {preset['finetune'][t.name]['batch_size']}" for t in TASKS)
                          + f"; backbone {preset['backbone']}, {preset['data']['image_size']} px")}
    out = args.out / preset["name"]
    out.mkdir(parents=True, exist_ok=True)
    report = {**header, "wall_seconds": round(header["wall_seconds"], 1), "preset_config": preset,
              "pretrain": pretrain_records, "finetune": finetune_records,
              "table": {task: {arm: {str(f): {"mean": m, "spread": s, "n": n} for f, (m, s, n) in cells.items()}
                               for arm, cells in arms.items()} for task, arms in table.items()}}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(table, fractions, header))
    plot(table, fractions, out / "plot.png")
    print(f"study: {len(finetune_records)} fine-tunes over {len(pretrain_records)} pretrainings in "
          f"{header['wall_seconds'] / 60:.1f} min -> {out / 'results.md'}, results.json, plot.png")
    return report


def main(argv: list[str] | None = None) -> None:
    """The ``crocoman-study`` entry point (console scripts exit with what it returns, so: nothing)."""
    run_study(argv)


if __name__ == "__main__":
    main()
