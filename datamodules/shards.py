"""Finding shards, and the WebDataset loaders every crocoman DataModule builds on."""

import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import braceexpand
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import default_collate

from datamodules.health import SkipCounter
from datamodules.workers import worker_context


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


class StreamSeeds:
    """The training stream's randomness as a function of (seed, epoch, rank, worker) alone.

    The rank is the trainer's, given here: workers start outside the process group
    (``datamodules.workers``).

    Shard resampling, source mixing, the shuffle buffer and each worker's torch / Python / NumPy
    generators (which drive augmentation) are all seeded from here, per epoch. Together with fresh
    workers every epoch, a run resumed at epoch ``e`` reads exactly the samples an uninterrupted
    run reads in epoch ``e``; ``skip_batches`` drops those a mid-epoch checkpoint had already
    trained on. (With ``num_workers=0`` augmentation runs on the main process's generators, so
    only the choice and order of samples are reproduced.)
    """

    def __init__(self, seed: int, rank: int, epoch: int, skip_batches: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.resumed_epoch, self.skip_batches = epoch, skip_batches

    def value(self, stage: str) -> int:
        _, _, worker, _ = wds.utils.pytorch_worker_info()
        return zlib.crc32(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{stage}".encode())

    def seed_worker(self, worker_id: int) -> None:
        """DataLoader ``worker_init_fn``: augmentation generators from the same (seed, epoch, rank, worker)."""
        value = self.value("augment")
        torch.manual_seed(value)
        random.seed(value)
        np.random.seed(value)

    def batches_to_skip(self) -> int:
        """This worker's share of the batches a mid-epoch checkpoint had already used (workers take turns)."""
        if self.epoch != self.resumed_epoch or self.skip_batches == 0:
            return 0
        _, _, worker, num_workers = wds.utils.pytorch_worker_info()
        workers = max(1, num_workers)
        return max(0, (self.skip_batches - worker + workers - 1) // workers)


def _mixed(sources: list, weights: list[float], seeds: StreamSeeds):
    """Samples from source ``i`` with probability ``weights[i] / sum(weights)``, whatever their sizes."""
    rng = random.Random(seeds.value("mix"))
    streams = [iter(source) for source in sources]
    while True:
        yield next(rng.choices(streams, weights)[0])


def _shuffled(samples, buffer_size: int, seeds: StreamSeeds):
    yield from wds.filters._shuffle(samples, buffer_size, rng=random.Random(seeds.value("shuffle")))


def _skip_resumed(batches, seeds: StreamSeeds):
    skip = seeds.batches_to_skip()
    for index, batch in enumerate(batches):
        if index >= skip:
            yield batch


class EpochLoader(wds.WebLoader):
    """A WebLoader that tells its stream which epoch it is starting (see ``StreamSeeds``)."""

    def __init__(self, dataset: wds.DataPipeline, seeds: StreamSeeds, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.seeds = seeds
        self.next_epoch = seeds.epoch

    def __iter__(self):
        self.seeds.epoch = self.next_epoch  # read by the workers, which start afresh each epoch
        self.next_epoch += 1
        yield from super().__iter__()


def train_loader(sources: list[list[str]], weights: list[float] | None, to_sample: Callable[[dict], dict | list[dict]],
                 batch_size: int, num_workers: int, batches_per_rank: int, shuffle_buffer: int,
                 seeds: StreamSeeds, pin_memory: bool = False) -> wds.WebLoader:
    """Infinite resampled stream, mixed over sources, cut into epochs of exactly ``batches_per_rank`` full batches.

    Resampling (shards drawn with replacement per worker) means every rank and worker always
    has data, so all ranks run the same number of steps and DDP never waits on a short rank.
    Each source is its own stream; with several, every sample comes from source i with
    probability ``weights[i] / sum(weights)`` whatever the sources' sizes. Workers are not kept
    between epochs, so each epoch starts from its own seeds (``StreamSeeds``). ``to_sample`` may
    return a list, as in ``eval_loader``.
    """
    skips = SkipCounter()
    streams = [wds.DataPipeline(wds.ResampledShards(urls, deterministic=True,
                                                    worker_seed=partial(seeds.value, f"shards{index}")),
                                wds.tarfile_to_samples(handler=skips.shard_error))
               for index, urls in enumerate(sources)]
    dataset = wds.DataPipeline(
        streams[0] if len(streams) == 1 else partial(_mixed, streams, weights, seeds),
        partial(_shuffled, buffer_size=shuffle_buffer, seeds=seeds),
        wds.map(partial(_as_list, to_sample), handler=skips.sample_error),
        _each,
        wds.batched(batch_size, collation_fn=default_collate, partial=False),
        partial(_skip_resumed, seeds=seeds),
        wds.map(skips.attach),
    )
    loader = EpochLoader(dataset, seeds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         worker_init_fn=seeds.seed_worker if num_workers > 0 else None, generator=own_generator(),
                         multiprocessing_context=worker_context(num_workers))
    # with_epoch cuts the stream; the length only lets Lightning show progress and count steps.
    return loader.with_epoch(batches_per_rank).with_length(batches_per_rank, silent=True)


def _as_list(to_sample: Callable[[dict], dict | list[dict]], sample: dict) -> list[dict]:
    """``to_sample``'s samples as a list: webdataset's map adds the tar sample's ``__key__`` to a dict result
    but not to a list, and one image of one person among images of several would then leave the batch's
    samples with different keys (``default_collate`` fails on them)."""
    result = to_sample(sample)
    return result if isinstance(result, list) else [result]


def _each(samples):
    """Samples one at a time, where a map stage turned one tar sample into a list (an image of several people)."""
    for sample in samples:
        yield from sample


def eval_loader(urls: list[str], to_sample: Callable[[dict], dict | list[dict]], batch_size: int, num_workers: int,
                rank: int, world_size: int, pin_memory: bool = False) -> wds.WebLoader:
    """Deterministic single pass: shards split over ranks, then over workers; every sample seen once.
    ``to_sample`` may return a list: each of its samples is evaluated."""
    workers = max(1, num_workers)
    if len(urls) < world_size * workers:
        raise ValueError(f"{len(urls)} evaluation shards cannot be split over {world_size} ranks x {workers} "
                         f"workers (each needs at least one shard): write more, smaller shards or lower num_workers")
    skips = SkipCounter()
    dataset = (
        wds.WebDataset(urls, resampled=False, shardshuffle=False,
                       nodesplitter=partial(_rank_share, rank=rank, world_size=world_size),
                       handler=skips.shard_error)
        .map(partial(_as_list, to_sample), handler=skips.sample_error)
        .compose(_each)
        .batched(batch_size, collation_fn=default_collate, partial=True)
        .map(skips.attach)
    )
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         generator=own_generator(), multiprocessing_context=worker_context(num_workers))


def _rank_share(urls: Iterable[str], rank: int, world_size: int) -> Iterator[str]:
    """This rank's shards: every ``world_size``-th from its own (the trainer's rank, not the workers' view)."""
    return itertools.islice(urls, rank, None, world_size)


def own_generator() -> torch.Generator:
    """A DataLoader draws a base seed from its generator whenever it starts an iterator; with its own one
    that draw leaves the training's global generator alone (workers seed themselves: ``StreamSeeds``)."""
    return torch.Generator().manual_seed(0)
