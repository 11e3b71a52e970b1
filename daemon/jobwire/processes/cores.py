"""How many daemon processes ``workers.processes: auto`` means: the cores this process may use."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

ROOT = Path("/")


def cgroup_cpu_limit(root: Path = ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores, the smallest along its path (a
    slice's ``CPUQuota=`` binds the services under it); None when there is none.

    cgroup v2: ``cpu.max`` of the cgroup ``/proc/self/cgroup`` names and its ancestors;
    v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under the ``cpu`` controller's mount.
    ``root`` stands for ``/`` (tests give a directory laid out the same way).

    A container limited to 1.5 CPUs still sees every core of the host in ``os.cpu_count()``;
    more processes than its quota only take turns.
    """
    limits = [limit for directory, v1 in _cgroup_dirs(root) if (limit := _limit(directory, v1))]
    return min(limits, default=None)


def available_cores(root: Path = ROOT) -> int:
    """Cores this process may run on (affinity), lowered to its cgroup quota, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def resolve_processes(setting: int | str, embedded: bool) -> int:
    """``workers.processes`` as a number: ``auto`` is the available cores, or 1 with the
    embedded database (one server under one data_dir, started by one process)."""
    if setting == "auto":
        return 1 if embedded else available_cores()
    return int(setting)


def _cgroup_dirs(root: Path) -> Iterator[tuple[Path, bool]]:
    """Each cgroup directory whose quota binds this process (True: a v1 ``cpu`` one)."""
    mounts = root / "sys" / "fs" / "cgroup"
    for line in (_read(root / "proc" / "self" / "cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if not path:
            continue
        if controllers == "":
            yield from _walk(mounts, path, v1=False)
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys((mounts / controllers, mounts / "cpu")):
                yield from _walk(mount, path, v1=True)


def _walk(mount: Path, path: str, v1: bool) -> Iterator[tuple[Path, bool]]:
    """The cgroup at ``path`` under ``mount`` and its ancestors, then the mount's root.

    The root comes last either way: in a container without a cgroup namespace the path is
    the host's (absent here) while the mount's root is the container's own cgroup.
    """
    relative = PurePosixPath(path).relative_to("/")
    for part in (relative, *relative.parents):
        if part != PurePosixPath("."):
            yield mount / part, v1
    yield mount, v1


def _limit(directory: Path, v1: bool) -> float | None:
    if v1:
        quota = _read(directory / "cpu.cfs_quota_us")
        return None if quota is None else _cores(quota, _read(directory / "cpu.cfs_period_us"))
    limit = _read(directory / "cpu.max")
    if limit is None:
        return None
    quota, _, period = limit.partition(" ")
    return _cores(quota, period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None


def _cores(quota: str, period: str | None) -> float | None:
    # v2 writes "max" and v1 writes -1 for no limit; both default the period to 100 ms.
    try:
        q, p = int(quota), int(period or "100000")
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p
