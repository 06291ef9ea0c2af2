"""How many CPU threads torch uses, and how its OpenMP threads wait (docs/scaling.md, "CPU threads").

The count, first found of: ``--threads N`` (``RunConfig.threads``), ``$CONTINUAL_LM_THREADS``, ``$OMP_NUM_THREADS``,
else the cores this process may run on (``os.sched_getaffinity``) divided by the processes launched on this machine
(``$LOCAL_WORLD_SIZE``, set by ``accelerate launch`` / ``torchrun``), at least 1. torch's own default is the
machine's physical cores, whatever the affinity mask or the number of processes sharing them.

Waiting: torch's CPU kernels run on OpenMP (GNU libgomp), whose threads spin at the end of every parallel region
before they sleep. On a machine where another process is busy, a spinning thread holds a core that the thread it
waits for needs: a training step then takes many times longer (bench/threads.md). ``set_openmp_defaults`` asks for
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once) unless the user chose a policy (``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT``). OpenMP reads it once, when torch loads it, so it is set by the command-line entry before torch
is imported; a Python program that wants it sets the variable itself before importing torch.
"""
from __future__ import annotations

import os

from .errors import ContinualLMError

ENV = "CONTINUAL_LM_THREADS"
WAIT_POLICY = "PASSIVE"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; the machine's count where there is none)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """The cores this process may use, shared evenly by the processes launched on this machine."""
    processes = _positive_env("LOCAL_WORLD_SIZE") or 1
    return max(1, usable_cores() // processes)


def resolve_threads(given: int | None = None) -> tuple[int, str]:
    """(thread count, where it came from): ``given`` (--threads), $CONTINUAL_LM_THREADS, $OMP_NUM_THREADS, else
    ``default_threads()``."""
    if given is not None:
        if not isinstance(given, int) or isinstance(given, bool) or given < 1:
            raise ContinualLMError(f"--threads must be a positive integer, got {given!r}")
        return given, "--threads"
    for name in (ENV, "OMP_NUM_THREADS"):
        value = _positive_env(name)
        if value:
            return value, f"${name}"
    return default_threads(), "default"


def apply_threads(given: int | None = None) -> int:
    """Set torch's intra-op thread count by ``resolve_threads`` and return it."""
    import torch

    count, _ = resolve_threads(given)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def set_openmp_defaults(environ=os.environ) -> None:
    """Before torch is imported: OpenMP threads that sleep instead of spinning, unless the user chose."""
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["OMP_WAIT_POLICY"] = WAIT_POLICY


def _positive_env(name: str) -> int | None:
    """A positive integer environment variable, None when unset or empty; anything else is an error naming it."""
    text = os.environ.get(name, "").split(",")[0].strip()  # OMP_NUM_THREADS may list one count per nesting level
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ContinualLMError(f"${name} must be a positive integer, got {text!r}")
    return value
