"""The CPUs this process may use, and the threads llama.cpp gets by default (stdlib only).

Counted from what the process may run on, not what the machine has: its affinity mask (taskset,
a cpuset), capped by its cgroup's CPU quota (`cpu.max`: a container's `--cpus`, systemd's
`CPUQuota=`). In a 2-CPU container on a 64-core host, a thread per host core would have dozens
of threads fight over two CPUs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

SYSTEM = Path("/")


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


def generation_threads(root: Path = SYSTEM) -> int:
    """Threads for token generation: every usable core but one, which is left to the server.

    Generating one token is a short burst of work on all its threads; on a machine with few
    cores, a thread on every core starves the event loop (measured on 2 cores: /health p50
    10 ms vs 4 ms, TTFT +4 ms) for no gain in tokens/s, since a small model's decode is bound
    by memory, not arithmetic. Prompt processing (n_threads_batch) still uses every core.
    """
    return max(1, usable_cores(root) - 1)


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
