"""Which code produced a result file: the commit, marked when the working tree differs from it."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD, with " + uncommitted changes" when tracked files differ from it (read-only git calls).

    A copy of a tree whose git metadata is older than its files (a remote machine's copy, say)
    shows up as changed, so a result is never credited to a commit that did not produce it.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")
