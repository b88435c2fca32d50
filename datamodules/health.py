"""Counting what a data pipeline had to skip, so that bad data is visible instead of lost silently.

A truncated tar, a corrupt JPEG or a sample without a key must not stop a week-long job, but
every skip is logged with its reason and counted; the counts travel from each loader worker to
the training process inside the batches (``SKIPPED_KEY``), and are logged as metrics.
"""

import logging
from collections import Counter

import torch
from PIL import UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

SKIP_KINDS = ("unreadable_shard", "corrupt_image", "missing_key", "bad_sample")
SKIPPED_KEY = "__skipped__"


class SkipCounter:
    """Webdataset error handlers that count and warn, plus a per-batch hand-off of the counts.

    Each loader worker holds its own copy; ``attach`` hands over the skips since the last batch, so
    the training process can simply add up what arrives. A stream that skips ``max_in_a_row``
    times without producing one batch is broken, not noisy (every shard unreadable, a wrong label
    key): a resampled stream would loop over it forever, so that is an error.
    """

    def __init__(self, warn_first: int = 5, max_in_a_row: int = 1000) -> None:
        self.warn_first = warn_first
        self.max_in_a_row = max_in_a_row
        self.since_last_batch: Counter = Counter()
        self.total: Counter = Counter()

    def _skip(self, kind: str, error: BaseException) -> bool:
        self.since_last_batch[kind] += 1
        self.total[kind] += 1
        if sum(self.since_last_batch.values()) >= self.max_in_a_row:
            raise RuntimeError(f"{self.max_in_a_row} skips in a row without one good batch "
                               f"({dict(self.since_last_batch)}); the data is unusable, last error: "
                               f"{type(error).__name__}: {error}. Check the shard paths and that the samples "
                               f"hold the keys the task reads (crocoman-data writes valid shards)") from error
        if self.total[kind] <= self.warn_first or self.total[kind] % 100 == 0:
            log.warning("skipped (%s, %d so far in this worker): %s: %s", kind, self.total[kind],
                        type(error).__name__, error)
        return True  # tells webdataset to continue

    def shard_error(self, error: BaseException) -> bool:
        """Handler for reading shards.

        A broken member inside a tar (truncation, bad header) stops that tar only: nothing after it
        can be trusted, and reading on would report the same break again. Any other error (a URL
        that does not open) skips that shard too.
        """
        self._skip("unreadable_shard", error)
        caught_in = error.__traceback__.tb_frame.f_code.co_name if error.__traceback__ else ""
        return caught_in != "tar_file_iterator"  # False makes webdataset end this tar, not the stream

    def sample_error(self, error: BaseException) -> bool:
        """Handler for turning a sample into tensors."""
        if isinstance(error, (UnidentifiedImageError, OSError, SyntaxError)):
            return self._skip("corrupt_image", error)
        if isinstance(error, KeyError):
            return self._skip("missing_key", error)
        return self._skip("bad_sample", error)

    def attach(self, batch: dict) -> dict:
        """Add the skips since the previous batch of this worker to ``batch``."""
        batch[SKIPPED_KEY] = torch.tensor([self.since_last_batch[k] for k in SKIP_KINDS])
        self.since_last_batch.clear()
        return batch


def pop_skips(batch: dict, totals: Tensor) -> Tensor:
    """Remove the skip counts from a batch and add them to ``totals`` (returned)."""
    skipped = batch.pop(SKIPPED_KEY, None)
    return totals if skipped is None else totals + skipped
