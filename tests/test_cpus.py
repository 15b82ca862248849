"""The default threads fit the CPUs this process may use: its affinity mask and its cgroup's quota
(v2 `cpu.max` up the hierarchy, v1's CFS quota), physical cores counted from the topology."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inference import cpus

PROJECT = Path(__file__).resolve().parent.parent


def fake_system(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("cgroup", "files", "quota"),
    [
        ("0::/app.slice/llamasite.service\n", {}, None),
        (
            "0::/app.slice/llamasite.service\n",
            {"sys/fs/cgroup/app.slice/llamasite.service/cpu.max": "max 100000"},
            None,
        ),
        (
            "0::/app.slice/llamasite.service\n",
            {"sys/fs/cgroup/app.slice/llamasite.service/cpu.max": "150000 100000"},
            1.5,
        ),
        (  # a parent's quota is tighter
            "0::/app.slice/llamasite.service\n",
            {
                "sys/fs/cgroup/app.slice/llamasite.service/cpu.max": "400000 100000",
                "sys/fs/cgroup/app.slice/cpu.max": "50000 100000",
            },
            0.5,
        ),
        ("4:cpu,cpuacct:/docker/abc\n", {"sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "-1"}, None),
        (
            "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
            {
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            2.0,
        ),
    ],
)
def test_the_cgroup_quota_is_read_from_v2_and_v1(
    tmp_path: Path, cgroup: str, files: dict[str, str], quota: float | None
) -> None:
    assert cpus.cgroup_quota(fake_system(tmp_path, cgroup, files)) == quota


def test_a_quota_caps_the_cpus_and_cores(tmp_path: Path) -> None:
    allowed = len(os.sched_getaffinity(0))
    root = fake_system(tmp_path, "0::/box\n", {"sys/fs/cgroup/box/cpu.max": "100000 100000"})
    assert cpus.usable_cpus(root) == cpus.usable_cores(root) == 1
    unlimited = fake_system(tmp_path / "free", "0::/box\n", {})
    assert cpus.usable_cpus(unlimited) == allowed


def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    topology = {}
    for cpu in os.sched_getaffinity(0):  # every CPU this process may use: one core's threads
        topology[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = "0"
        topology[f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"] = "0"
    assert cpus.usable_cores(fake_system(tmp_path, "0::/\n", topology)) == 1


def test_the_defaults_follow_a_restricted_affinity(tmp_path: Path) -> None:
    """A process pinned to one CPU (taskset) defaults to one thread, whatever the machine has."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_manager": {"models_directory": str(tmp_path)}}))
    script = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from inference.config import load_config; defaults = load_config().model_manager.defaults;"
        "print(defaults.n_threads, defaults.n_threads_batch)"
    )
    env = {**os.environ, "LLAMA_SERVER_CONFIG": str(config)}
    shown = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True)
    assert shown.stdout.split() == ["1", "1"], shown.stderr


def thread_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_model_thread_and_the_threads_it_starts_stand_behind_the_event_loop() -> None:
    """Run in a thread of its own: a thread's lowered priority cannot be raised back unprivileged."""
    seen: dict[str, int] = {}

    def model_thread() -> None:
        before = thread_niceness()
        cpus.yield_to_the_server()
        cpus.yield_to_the_server()  # once is enough: a model thread started from one stands no lower
        seen["model"] = thread_niceness() - before
        started = threading.Thread(target=lambda: seen.update(started=thread_niceness() - before))
        started.start()
        started.join()

    main = thread_niceness()
    thread = threading.Thread(target=model_thread)
    thread.start()
    thread.join()
    expected = min(cpus.MODEL_THREAD_NICENESS, 19 - main)
    assert seen == {"model": expected, "started": expected}  # as llama.cpp's OpenMP threads do
    assert thread_niceness() == main
