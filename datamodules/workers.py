"""How loader workers start: from a forkserver, not by forking the training process.

A rank's process has threads (gloo's and torch's own among them), and on CPython before 3.11.8 / 3.12.1 a
fork while another thread holds the interpreter's thread-list lock (taken whenever a thread starts or
ends its Python state) leaves the child waiting on that lock forever: CPython gh-112275, seen here as a
two-rank run hanging at an epoch start. A forkserver is a single-threaded process, so its forks cannot
inherit a held lock. It imports the DataModules and the main module once, so that a worker costs a fork,
not those imports (a worker re-runs the main module, cheaply once its imports are loaded), and it dies
with the process that started it (``datamodules.worker_server``).
"""

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import sys


def worker_context(num_workers: int) -> multiprocessing.context.BaseContext | None:
    """The ``multiprocessing_context`` of a DataLoader with ``num_workers`` workers."""
    if num_workers == 0:
        return None
    context = multiprocessing.get_context("forkserver")
    main = getattr(sys.modules["__main__"].__spec__, "name", None)
    # A package's __main__ is not imported by name: as in multiprocessing's own spawn, its body need not be guarded.
    by_name = [main] if main and not main.endswith(".__main__") else []
    context.set_forkserver_preload(["datamodules.worker_server", "__main__", "datamodules", *by_name])
    return context


def start_worker_server(num_workers: int) -> None:
    """Start the forkserver now, so that its imports overlap the trainer's set-up, not the first batch."""
    if worker_context(num_workers) is not None:
        multiprocessing.forkserver.ensure_running()
