"""The CPUs this process may use, and the threads llama.cpp gets by default (stdlib only).

Counted from what the process may run on, not what the machine has: its affinity mask (taskset,
a cpuset), capped by its cgroup's CPU quota (`cpu.max`: a container's `--cpus`, systemd's
`CPUQuota=`). In a 2-CPU container on a 64-core host, a thread per host core would have dozens
of threads fight over two CPUs.

llama.cpp gets a thread per usable core, for generating as for prompts: its threads stand behind
the event loop (`yield_to_the_server`), which answers first when it wakes. Measured on 2 cores,
a single stream ran at 124 tokens/s with 2 generation threads against 85 with 1 (a core left to
the server, as before the threads stood behind it), `/health` during it p50 2.5 against 3.3 ms,
p99 7.2 against 5.4 ms.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

SYSTEM = Path("/")

# How far a model's threads stand behind the event loop, in nice levels (19 is the lowest).
# llama.cpp's threads take every core while they decode, spinning at their barriers; at equal
# priority, a woken event loop queues behind them. Measured on 2 cores during 4 streams:
# /health p99 7.7-7.9 ms at +5 against 9.5-11.9 ms at 0, tokens/s the same within the noise
# (the loop takes 0.35 ms of CPU a token, llama.cpp 11).
MODEL_THREAD_NICENESS = 5


def usable_cpus(root: Path = SYSTEM) -> int:
    """Logical CPUs this process may use: its affinity mask, within its cgroup's quota."""
    return _within_quota(len(_affinity()), root)


def usable_cores(root: Path = SYSTEM) -> int:
    """Physical cores among the CPUs this process may use (llama.cpp runs slower on a core's
    second hyper-thread), within its cgroup's quota; the logical CPUs where the topology is unknown."""
    cores = set()
    for cpu in _affinity():
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            cores.add(
                ((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip())
            )
        except OSError:
            cores.add((f"cpu{cpu}", ""))
    return _within_quota(len(cores), root)


def yield_to_the_server() -> None:
    """Put the calling thread, and so the threads it starts (llama.cpp's OpenMP threads inherit
    it), MODEL_THREAD_NICENESS below the process's main thread (whichever thread started it): the
    event loop and the requests it answers come first. Linux only (elsewhere the call would renice
    the whole process)."""
    if sys.platform != "linux":
        return
    try:
        niceness = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's, on Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, niceness + MODEL_THREAD_NICENESS))
    except OSError as error:  # a sandbox that forbids it: the thread runs at the loop's priority
        logger.warning("could not lower a model thread's priority: %s", error)


def cgroup_quota(root: Path = SYSTEM) -> float | None:
    """CPUs the process's cgroup (v2 `cpu.max`, or v1's CFS quota) and its parents allow; None: no limit."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            quotas += _v2_quotas(root / "sys/fs/cgroup", path)
        elif "cpu" in controllers.split(","):
            quotas += _v1_quotas(root / "sys/fs/cgroup" / controllers, path)
    return min(quotas, default=None)


def _v2_quotas(mount: Path, path: str) -> list[float]:
    quotas = []
    for folder in [mount / path.lstrip("/"), *(mount / path.lstrip("/")).parents]:
        try:
            limit, period = (folder / "cpu.max").read_text().split()
        except (OSError, ValueError):
            pass
        else:
            if limit != "max":
                quotas.append(int(limit) / int(period))
        if folder == mount:
            break
    return quotas


def _v1_quotas(mount: Path, path: str) -> list[float]:
    for folder in (mount / path.lstrip("/"), mount):
        try:
            limit = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return [limit / period] if limit > 0 else []
    return []


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not on Linux
        return set(range(os.cpu_count() or 1))


def _within_quota(count: int, root: Path) -> int:
    quota = cgroup_quota(root)
    return max(1, min(count, math.ceil(quota)) if quota is not None else count)
