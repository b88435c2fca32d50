"""The pair pipeline's side of ``crocoman-bench``: loader throughput per mode and where a pair's time goes.

``PerSampleSampler`` is the pipeline ``PairSampler`` replaced (PIL decode, torchvision crop and
colour jitter per sample on uint8 tensors, float conversion in the worker), kept here so that every
bench run measures the speed-up against it on its own machine (machines differ ~2x per core).
"""

import gc
import io
import random
import sys
import time
import torch
import webdataset as wds
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from tqdm import tqdm

from datamodules import PairDataModule
from datamodules.color import jitter_pixels
from datamodules.decode import decode_crop, image_size, resized_crop, to_tensor
from datamodules.format import read_group
from datamodules.pairs import PairSampler, choose_pair, person_mask
from datamodules.shards import expand_shards

MODES = ("per_sample", "worker", "device")  # today's default path is "worker"


class PerSampleSampler(PairSampler):
    """The pair pipeline before the fast one: PIL decode, then torchvision's ``RandomResizedCrop`` and
    ``ColorJitter`` per sample on uint8 tensors, and float images out of the worker."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        strength = self.color_jitter
        geometry = (v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True) if self.augment
                    else v2.Resize((self.image_size, self.image_size), antialias=True))
        photometric = [v2.ColorJitter(strength, strength, strength, strength / 4)] if self.augment else []
        self.transform = v2.Compose([geometry, *photometric, v2.ToDtype({tv_tensors.Image: torch.float32,
                                                                          "others": None}, scale=True)])

    def view(self, sample: dict, frame: dict, augmentation, with_mask: bool) -> tuple[dict[str, Tensor], None]:
        image = Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB")
        pixels = tv_tensors.Image(v2.functional.pil_to_tensor(image))
        if not with_mask:
            return {"image": self.transform(pixels).as_subclass(Tensor)}, None
        mask = tv_tensors.Mask(torch.from_numpy(person_mask(sample, frame, image.size)).bool())
        pixels, mask = self.transform(pixels, mask)
        return {"image": pixels.as_subclass(Tensor), "person": mask.as_subclass(Tensor)}, None


class PerSamplePairs(PairDataModule):
    """``PairDataModule`` on the replaced per-sample pipeline."""

    def _sampler(self, train: bool) -> PerSampleSampler:
        fast = super()._sampler(train)
        return PerSampleSampler(fast.image_size, fast.cross_view_ratio, fast.time_gap, fast.augment,
                                fast.independent_augmentation, fast.crop_scale, fast.color_jitter, fast.deterministic)


def pairs_in_mode(mode: str, **data_args) -> PairDataModule:
    """The pair DataModule that runs ``mode``: ``per_sample`` (replaced), ``worker`` or ``device``."""
    if mode == "per_sample":
        return PerSamplePairs(**{**data_args, "augment_on": "worker"})
    return PairDataModule(**{**data_args, "augment_on": mode})


def loader_throughput(shards: str, data_args: dict, mode: str, num_workers: int, batches: int,
                      warmup_batches: int = 1) -> dict:
    """Pairs per second out of ``PairDataModule.train_dataloader()`` in ``mode``: what the workers hand
    over (in ``device`` mode the jitter and float conversion are left to the training device).

    Timed in the steady state: the warm-up runs until the shuffle buffer is full, since until then
    webdataset reads two groups for every pair it hands out.
    """
    batch_size = data_args["batch_size"]
    warmup_batches = max(warmup_batches, -(-data_args.get("shuffle_buffer", 1000) // batch_size) + 1)
    datamodule = pairs_in_mode(mode, **{**data_args, "train_shards": shards, "val_shards": None,
                                        "num_workers": num_workers,
                                        "epoch_pairs": batch_size * (warmup_batches + batches)})
    loader = iter(datamodule.train_dataloader())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch on one thread; in-process loading does the same
    try:
        started = time.perf_counter()
        for _ in range(warmup_batches):
            next(loader)
        first = time.perf_counter()
        for _ in tqdm(range(batches), desc=f"data {data_args['image_size']}px {mode}", leave=False, file=sys.stderr):
            next(loader)
        elapsed = time.perf_counter() - first
    finally:
        torch.set_num_threads(threads)
        # The iterator sits in a reference cycle: only a collection stops its worker, which would
        # otherwise keep reading (resampled) shards on a core the following cases are timed on.
        del loader
        gc.collect()
    return {"pairs_per_s": batch_size * batches / elapsed, "batch_time_s": elapsed / batches,
            "warmup_batches": warmup_batches, "warmup_s": first - started}


class StageClock:
    """Accumulates wall time per named stage (``with clock("decode"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stage = ""

    def __call__(self, stage: str) -> "StageClock":
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._began


def _per_sample_stages(sample: dict, frames: tuple[dict, dict], sampler: PerSampleSampler, clock: StageClock) -> dict:
    with clock("jpeg decode"):
        images = [Image.open(io.BytesIO(sample[frame["name"]])).convert("RGB") for frame in frames]
    with clock("mask decode"):
        mask = tv_tensors.Mask(torch.from_numpy(person_mask(sample, frames[0], images[0].size)).bool())
    with clock("to tensor"):
        pixels = [tv_tensors.Image(v2.functional.pil_to_tensor(image)) for image in images]
    geometry, jitter, to_float = sampler.transform.transforms
    with clock("crop + resize"):
        (image1, mask), image2 = geometry(pixels[0], mask), geometry(pixels[1])
    with clock("colour jitter"):
        image1, image2 = jitter(image1), jitter(image2)
    with clock("float conversion"):
        image1, image2 = to_float(image1), to_float(image2)
    return {"image1": image1.as_subclass(Tensor), "image2": image2.as_subclass(Tensor),
            "person1": mask.as_subclass(Tensor)}


def _fast_stages(sample: dict, frames: tuple[dict, dict], sampler: PairSampler, clock: StageClock) -> dict:
    with clock("header + box draw"):
        sizes = [image_size(sample[frame["name"]]) for frame in frames]
        drawn = [sampler.draw(*size) for size in sizes]
    with clock("jpeg decode + crop"):
        crops, boxes = zip(*(decode_crop(sample[frame["name"]], box, sampler.image_size)
                             for frame, (box, _) in zip(frames, drawn)))
    with clock("mask decode + crop"):
        silhouette = person_mask(sample, frames[0], sizes[0])
        mask = resized_crop(silhouette, boxes[0], sampler.image_size, nearest=True)
    if not sampler.jitter_on_device:
        with clock("colour jitter"):
            crops = [jitter_pixels(crop, params) for crop, (_, params) in zip(crops, drawn)]
    with clock("to tensor"):
        out = {"image1": to_tensor(crops[0]), "image2": to_tensor(crops[1]), "person1": to_tensor(mask).bool()}
    if sampler.jitter_on_device:
        out |= {"image1_jitter": drawn[0][1], "image2_jitter": drawn[1][1]}
    return out


def stage_profile(shards: str, data_args: dict, pairs: int = 256, groups: int = 64) -> dict:
    """Milliseconds per pair in each stage of each mode, one core: ``pairs`` pairs drawn from the first
    ``groups`` groups (read once; "tar read" is their reading time per group).

    The stages call the pipeline's own functions in its order; the sum is within a few percent of
    ``loader_throughput``'s time per pair with no workers (this adds only the clock).
    """
    samples, clock = [], StageClock()
    stream = iter(wds.DataPipeline(wds.SimpleShardList(expand_shards(shards)), wds.tarfile_to_samples()))
    with clock("tar read"):
        for sample in stream:
            samples.append(sample)
            if len(samples) == groups:
                break
    tar_read_s = clock.seconds["tar read"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    profile = {}
    try:
        for mode in MODES:
            sampler = pairs_in_mode(mode, **{**data_args, "train_shards": shards})._sampler(train=True)
            stages = _per_sample_stages if mode == "per_sample" else _fast_stages
            clock = StageClock()
            torch.manual_seed(0)
            rng = random.Random(0)
            drawn = []
            for index in range(pairs):
                sample = samples[index % len(samples)]
                with clock("group.json + pair choice"):
                    group = read_group(sample)
                    i, j, _ = choose_pair(group["frames"], rng, sampler.cross_view_ratio, sampler.time_gap)
                drawn.append(stages(sample, (group["frames"][i], group["frames"][j]), sampler, clock))
            with clock("collate"):
                for start in range(0, pairs, data_args["batch_size"]):
                    default_collate(drawn[start:start + data_args["batch_size"]])
            per_pair = {"tar read": 1e3 * tar_read_s / len(samples),
                        **{stage: 1e3 * seconds / pairs for stage, seconds in clock.seconds.items()}}
            profile[mode] = {"ms_per_pair": per_pair, "total_ms_per_pair": sum(per_pair.values())}
    finally:
        torch.set_num_threads(threads)
    return {"pairs": pairs, "groups": len(samples), "torch_threads": 1, **profile}
