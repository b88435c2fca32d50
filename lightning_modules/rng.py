"""Every random generator a training step draws from, saved with each checkpoint and restored on resume.

A step draws its masks and its dropout / drop-path from the process's global torch generators
(CPU and CUDA); Python's and NumPy's are saved too, for code that uses them. Loader workers are
not covered here: they seed themselves from (seed, epoch, rank, worker) (``datamodules.shards``).
The states are those right after the checkpoint's step, and the resumed run sets them right before
its first training step, so whatever runs in between (sanity validation, loader start-up) cannot
shift them. Evaluation draws its masks from generators of its own for the same reason.
"""

import random
import warnings

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> dict:
    """This process's generator states, as plain values and tensors (loadable with ``weights_only``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def every_rank_state() -> list[dict]:
    """Each rank's ``rng_state()``, in rank order (a collective: every rank calls it, as every rank
    builds the checkpoint it saves)."""
    state = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rank_state(states: list[dict], rank: int) -> bool:
    """Set this rank's saved state; a checkpoint from another number of ranks has none to give."""
    if len(states) != (dist.get_world_size() if dist.is_initialized() else 1):
        warnings.warn(f"the checkpoint holds random states for {len(states)} ranks: this run's draws (masks, "
                      f"dropout) continue from fresh generators, so it is not the uninterrupted run", stacklevel=2)
        return False
    set_rng_state(states[rank])
    return True
