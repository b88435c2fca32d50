"""Set-up of the loader workers' forkserver, which alone imports this module (``datamodules.workers``
preloads it).

- The server dies with the process that started it. torch's DataLoader workers stop when their parent
  is gone, and a forkserver's workers are the server's children, while the server waits for every
  worker to end: a training process killed without clean-up (SIGKILL, the OOM killer, a lost node)
  would otherwise leave the server and its workers running, holding the job's output pipes, open
  shards and shared memory.
- A worker re-runs the main module as ``__mp_main__`` (as every forkserver or spawn worker does), which
  the server has already imported to make that cheap; runpy's warning about finding it imported is
  expected there, and would otherwise print once per worker per epoch.
"""

import ctypes
import signal
import sys
import warnings

PR_SET_PDEATHSIG = 1

if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
warnings.filterwarnings("ignore", message=r".* found in sys\.modules after import of package", category=RuntimeWarning)
