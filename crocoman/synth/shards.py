"""Write synthetic groups as WebDataset pair shards (the format: ``datamodules.format``).

Groups are rendered in worker processes and written by the parent in group order, and each
group draws its randomness from (seed, group index) alone, so the shards are byte-identical
for any number of workers: a dataset is named by its seed and sizes, not by the machine.
"""

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from crocoman.checks import check_at_least
from crocoman.synth.hand import render_hand_group
from crocoman.synth.world import Frame, render_group
from datamodules.format import (
    GROUP_KEY,
    MANIFEST,
    SYNTH_PAIRS_VERSION,
    FrameRecord,
    TarSample,
    frame_members,
    jpeg_bytes,
    json_bytes,
    png_bytes,
)

SHARD_PATTERN = "pairs-%06d.tar"
_DECIMALS = 6  # 1 um in camera space, 1e-6 px in the crop


def _listed(values: torch.Tensor) -> list:
    return values.double().round(decimals=_DECIMALS).tolist()


def _frame_record(frame: Frame, image_key: str, mask_key: str) -> FrameRecord:
    return {
        "name": image_key,
        "mask": mask_key,
        "camera": f"cam{frame.camera}",
        "time": frame.time,
        "K": _listed(frame.K),
        "R": _listed(frame.R),
        "t": _listed(frame.t),
        "bbox": list(frame.bbox_px),
        "joints_2d": _listed(frame.joints_2d_px),
        "joints_3d": _listed(frame.joints_3d_m),
    }


GROUP_RENDERERS = {"body": render_group, "hand": render_hand_group}


def encode_group(index: int, seed: int, image_size: int, cameras: int, times: int,
                 task: str = "body") -> TarSample:
    """Render group `index` of people (task "body") or bare hands ("hand") and encode it as one tar
    sample (key, group.json, fN.jpg, fN.mask.png)."""
    group = GROUP_RENDERERS[task](seed, index, image_size, cameras, times)
    sample: TarSample = {"__key__": f"group{index:07d}"}
    records = []
    for number, frame in enumerate(group.frames):
        image_key, mask_key = frame_members(number)
        sample[image_key] = jpeg_bytes(frame.rendering.rgb)
        sample[mask_key] = png_bytes(frame.rendering.mask.numpy().astype(np.uint8) * 255)
        records.append(_frame_record(frame, image_key, mask_key))
    sample[GROUP_KEY] = json_bytes({"subject": group.subject, "frames": records})
    return sample


@contextmanager
def _rendered(job: Callable[[int], dict], indices: Sequence[int], workers: int) -> Iterator[Iterator[dict]]:
    """Samples in index order. Every renderer runs single-threaded, in-process or in a worker,
    so float results cannot depend on how many intra-op threads a process happened to have."""
    if workers > 1:
        # spawn, not fork: forking a parent that already ran torch's thread pools can deadlock.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            yield pool.imap(job, indices, chunksize=4)
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield map(job, indices)
        finally:
            torch.set_num_threads(threads)


def _refuse_stale_shards(split_dir: Path, shard_pattern: str) -> None:
    stale = sorted(split_dir.glob(shard_pattern.split("%")[0] + "*.tar"))
    if stale:
        raise FileExistsError(
            f"{split_dir} already holds {len(stale)} shards (e.g. {stale[0].name}); a reader globbing it "
            "would mix them with the new ones. Delete them or choose another out_dir."
        )


def write_sample_shards(
    out: Path,
    splits: dict[str, range],
    job: Callable[[int], dict],
    workers: int,
    samples_per_shard: int,
    shard_pattern: str,
    desc: str,
    unit: str,
) -> dict[str, list[tuple[str, int, int]]]:
    """Encode sample `index` with `job` for every index of every split (in worker processes) and
    write them in index order into `out/<split>/<shard_pattern>`: the bytes depend on the
    indices alone, not on `workers`. Returns per split its shards as (path relative to `out`,
    samples, bytes)."""
    for split in splits:
        _refuse_stale_shards(out / split, shard_pattern)
    everything = [index for indices in splits.values() for index in indices]
    shards = {}
    with _rendered(job, everything, workers) as samples, tqdm(total=len(everything), unit=unit, desc=desc) as bar:
        for split, indices in splits.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            samples_in_shard: Counter[Path] = Counter()
            # mtime fixed so that equal data gives byte-equal tars.
            pattern = str(out / split / shard_pattern)
            with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=0) as writer:
                for _ in indices:
                    writer.write(next(samples))
                    samples_in_shard[Path(writer.fname)] += 1
                    bar.update()
            shards[split] = [
                (path.relative_to(out).as_posix(), count, path.stat().st_size)
                for path, count in samples_in_shard.items()
            ]
    return shards


def manifest_splits(shards: dict[str, list[tuple[str, int, int]]], counts: dict[str, dict], unit: str) -> dict:
    """The manifest's ``splits``: per split its ``counts``, then its shards as {path, <unit>, bytes}."""
    return {split: {**counts[split], "shards": [{"path": path, unit: count, "bytes": size}
                                                 for path, count, size in entries]}
            for split, entries in shards.items()}


def save_manifest(out: Path, manifest: dict, summary: str) -> dict:
    """Write ``out/manifest.json`` and print the tool's one-line summary, shards and bytes appended."""
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    num_shards = sum(len(split["shards"]) for split in manifest["splits"].values())
    print(f"{summary} in {num_shards} shards, {manifest['total_bytes'] / 1e6:.1f} MB, "
          f"{manifest['generation_seconds']:.1f} s -> {out}")
    return manifest


def total_bytes(shards: dict[str, list[tuple[str, int, int]]]) -> int:
    return sum(size for entries in shards.values() for _, _, size in entries)


def split_indices(train: int, val: int) -> dict[str, range]:
    """Index ranges per split; validation indices follow the train ones, so they are other people."""
    splits = {"train": range(train)}
    if val:
        splits["val"] = range(train, train + val)
    return splits


def write_pair_shards(
    out_dir: str | Path,
    num_groups: int,
    image_size: int = 128,
    cameras: int = 3,
    times: int = 3,
    seed: int = 0,
    workers: int = 1,
    groups_per_shard: int = 100,
    val_groups: int = 0,
    task: str = "body",
) -> dict:
    """Render `num_groups` train (and `val_groups` validation) groups of `cameras` x `times`
    frames of people (`task` "body") or hands ("hand") into `out_dir/{train,val}/pairs-%06d.tar`
    and return the manifest also written to `out_dir/manifest.json`. Validation groups follow the
    train indices, so they are different people."""
    if task not in GROUP_RENDERERS:
        raise ValueError(f"task must be one of {sorted(GROUP_RENDERERS)}, got {task!r}")
    check_at_least(
        "write_pair_shards", num_groups=(num_groups, 1), image_size=(image_size, 16), cameras=(cameras, 1),
        times=(times, 1), workers=(workers, 1), groups_per_shard=(groups_per_shard, 1), val_groups=(val_groups, 0),
    )  # fmt: skip
    out = Path(out_dir)
    started = time.perf_counter()
    job = partial(encode_group, seed=seed, image_size=image_size, cameras=cameras, times=times, task=task)
    splits = split_indices(num_groups, val_groups)
    shards = write_sample_shards(out, splits, job, workers, groups_per_shard, SHARD_PATTERN, desc="synth", unit="group")
    seconds = time.perf_counter() - started
    counts = {split: {"groups": len(indices), "frames": len(indices) * cameras * times}
              for split, indices in splits.items()}
    manifest = {
        "version": SYNTH_PAIRS_VERSION,
        "task": task,
        "seed": seed,
        "image_size": image_size,
        "cameras": cameras,
        "times": times,
        "frames_per_group": cameras * times,
        "groups_per_shard": groups_per_shard,
        "splits": manifest_splits(shards, counts, "groups"),
        "total_bytes": total_bytes(shards),
        "generation_seconds": round(seconds, 2),
    }
    total = num_groups + val_groups
    return save_manifest(out, manifest, f"synth: {num_groups} train + {val_groups} val {task} groups "
                                        f"({total * cameras * times} frames of {image_size} px, "
                                        f"{total / seconds:.1f} groups/s, {workers} workers)")

