"""Finding shards, and the WebDataset loaders every crocoman DataModule builds on."""

from collections.abc import Callable
from pathlib import Path

import braceexpand
import webdataset as wds
from torch.utils.data import default_collate

from datamodules.health import SkipCounter


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs from a directory (its ``*.tar``), a brace pattern, a ``pipe:`` URL, or a list of those."""
    if isinstance(spec, (list, tuple)):
        return [url for item in spec for url in expand_shards(item)]
    if spec.startswith("pipe:") or "://" in spec:
        return list(braceexpand.braceexpand(spec))
    if Path(spec).is_dir():
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
    else:
        urls = [url for url in braceexpand.braceexpand(spec) if Path(url).is_file()]
    if not urls:
        raise FileNotFoundError(f"no shards found at {spec!r}: give a directory of .tar shards, a brace pattern "
                                f"such as 'data/pairs-{{000000..000009}}.tar', or a 'pipe:' URL. To make demo "
                                f"shards: crocoman-data synth --out data/synth")
    return urls


def shard_sources(spec: str | list[str], weights: list[float] | None) -> list[list[str]]:
    """One URL list per source: each entry of ``spec`` when weights are given, else all in one."""
    if weights is None:
        return [expand_shards(spec)]
    entries = [spec] if isinstance(spec, str) else list(spec)
    if len(weights) != len(entries) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"train_weights {weights} must give one non-negative weight per train_shards entry "
                         f"({len(entries)}: {entries}), not all zero")
    return [expand_shards(entry) for entry in entries]


def train_loader(sources: list[list[str]], weights: list[float] | None, to_sample: Callable[[dict], dict],
                 batch_size: int, num_workers: int, batches_per_rank: int, shuffle_buffer: int) -> wds.WebLoader:
    """Infinite resampled stream, mixed over sources, cut into epochs of exactly ``batches_per_rank`` full batches.

    Resampling (shards drawn with replacement per worker) means every rank and worker always
    has data, so all ranks run the same number of steps and DDP never waits on a short rank.
    Each source is its own stream; with several, every sample comes from source i with
    probability ``weights[i] / sum(weights)`` whatever the sources' sizes.
    """
    skips = SkipCounter()
    streams = [wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=wds.split_by_node,
                              handler=skips.shard_error) for urls in sources]
    dataset = wds.DataPipeline(
        streams[0] if len(streams) == 1 else wds.RandomMix(streams, weights),
        wds.shuffle(shuffle_buffer),
        wds.map(to_sample, handler=skips.sample_error),
        wds.batched(batch_size, collation_fn=default_collate, partial=False),
        wds.map(skips.attach),
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
    # with_epoch cuts the stream; the length only lets Lightning show progress and count steps.
    return loader.with_epoch(batches_per_rank).with_length(batches_per_rank, silent=True)


def eval_loader(urls: list[str], to_sample: Callable[[dict], dict], batch_size: int, num_workers: int,
                world_size: int) -> wds.WebLoader:
    """Deterministic single pass: shards split over ranks, then over workers; every sample seen once."""
    workers = max(1, num_workers)
    if len(urls) < world_size * workers:
        raise ValueError(f"{len(urls)} evaluation shards cannot be split over {world_size} ranks x {workers} "
                         f"workers (each needs at least one shard): write more, smaller shards or lower num_workers")
    skips = SkipCounter()
    dataset = (
        wds.WebDataset(urls, resampled=False, shardshuffle=False, nodesplitter=wds.split_by_node,
                       handler=skips.shard_error)
        .map(to_sample, handler=skips.sample_error)
        .batched(batch_size, collation_fn=default_collate, partial=True)
        .map(skips.attach)
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers)
