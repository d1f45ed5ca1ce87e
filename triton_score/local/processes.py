"""Process bookkeeping for servers we start: free ports, process trees, clean stops.

Used by ``score serve``'s tests and the benchmarks alike, so each is written once. Linux
only (``/proc``), like the local Triton itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ProcessInfo:
    """One line of ``/proc/<pid>/stat``, the fields we use."""

    pid: int
    ppid: int
    state: str
    #: Clock ticks after boot: with the pid, it names a process even after pid reuse.
    start: int
    #: User + system CPU time, in clock ticks.
    cpu_ticks: int


def process_info(pid: int) -> ProcessInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
    return ProcessInfo(
        pid=pid,
        ppid=int(fields[1]),
        state=fields[0].decode(),
        start=int(fields[19]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def process_table() -> dict[int, ProcessInfo]:
    """Every process we can read, by pid."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = process_info(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def descendants(root: int, table: dict[int, ProcessInfo] | None = None) -> dict[int, int]:
    """pid -> start time of ``root`` and every live process below it.

    Collect them *before* stopping a server: once a parent has exited, its orphans are
    re-parented and no longer found below it.
    """
    table = table if table is not None else process_table()
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[pid] = table[pid].start
            todo.extend(children.get(pid, ()))
    return found


def still_running(processes: dict[int, int]) -> list[int]:
    """Those of ``processes`` (pid -> start time) that still run: same start, not a zombie."""
    alive = []
    for pid, start in processes.items():
        info = process_info(pid)
        if info is not None and info.start == start and info.state != "Z":
            alive.append(pid)
    return alive


def process_environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with (empty if it is gone or not ours)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    return dict(pairs)


def stop_process_group(process: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM a server started with ``start_new_session`` (it drains), SIGKILL it after
    ``grace`` seconds, then SIGKILL whatever of its process group is left (workers).

    :return: the server's exit code.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # nothing of the group may survive
    return process.returncode
