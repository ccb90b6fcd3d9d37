"""What every bench script does before it imports torch or the test support modules; import it first.

- The environment: one OpenMP thread (the machine's cores are shared), no busy-waiting OpenMP threads, no
  Hugging Face downloads. ``setdefault``: a value the caller exported wins.
- The support modules the bench shares with the tests (``comfy_host``, ``checkpoints``, ``harness``,
  ``vision_models``, ``server_client``, ``browser``, ``pure``, ``find_comfyui``): they live in ``tests/`` and
  import one another by bare name, so ``tests/`` goes on ``sys.path`` here, once, for every bench script.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
TEST_SUPPORT = ROOT / "tests"
if str(TEST_SUPPORT) not in sys.path:
    sys.path.insert(0, str(TEST_SUPPORT))


def command_line(script: str) -> str:
    """The command that ran ``script`` (its ``__file__``), for the report: the thread setting, the Python (relative
    when it lies below the working folder), the script and its arguments."""
    cwd = Path.cwd()
    python = os.path.relpath(sys.executable, cwd) if sys.executable.startswith(str(cwd)) else sys.executable
    words = [python, os.path.relpath(script, cwd), *sys.argv[1:]]
    return f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + " ".join(shlex.quote(w) for w in words)


def checkpoint_dir() -> Path:
    """Where the seeded checkpoints are cached: $PNP_TEST_CACHE/checkpoints (as the tests) or
    bench/.cache/checkpoints."""
    return Path(os.environ.get("PNP_TEST_CACHE", ROOT / "bench" / ".cache")) / "checkpoints"
