"""P5 of issue 8: how fast a warm ``score serve`` is ready, and what its workers' memory does.

- **Ready time**: ``score serve`` started from scratch (its own Triton, the example models
  already built, so ``--no-build``), from ``Popen`` to the first ``200`` of
  ``GET /v2/health/ready``, polled every 20 ms. That is what an orchestrator's readiness
  probe sees, Triton's start included.
- **Worker RSS**: ``VmRSS`` (now) and ``VmHWM`` (peak) of every Gunicorn worker, from
  ``/proc/<pid>/status`` — the workers are the processes whose parent is the Gunicorn master.
- **A 50 MB JSON body** to digits (a valid request is under 200 KB): the status (the goal is a
  413 before the body is parsed) and the workers' peak after it.
- **A valid large binary body**: the largest tensor a model accepts, in the v2 binary tensor
  extension, to ``/score/<m>``; the growth of the workers' peak is compared with the body.
  Measured *before* the big JSON body, whose peak would hide it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from triton_score.local.processes import descendants, process_table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def gunicorn_workers(root: int) -> list[int]:
    """The Gunicorn workers below ``root`` (a ``score serve`` process): children of a
    process running gunicorn that run gunicorn themselves (the master's forks)."""
    table = process_table()
    below = descendants(root, table)
    return sorted(
        pid
        for pid in below
        if pid != root
        and "gunicorn" in _cmdline(pid)
        and table[pid].ppid in below
        and "gunicorn" in _cmdline(table[pid].ppid)
    )


def memory_mb(pid: int) -> tuple[float, float]:
    """``(VmRSS, VmHWM)`` of ``pid`` in MB (NaN when it is gone)."""
    values = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024  # kB
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def workers_memory(root: int) -> tuple[float, float]:
    """The largest ``(VmRSS, VmHWM)`` over the workers of ``root``, in MB."""
    sizes = [memory_mb(pid) for pid in gunicorn_workers(root)]
    if not sizes:
        return float("nan"), float("nan")
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> int:
    """The HTTP status of ``POST url`` (0: no answer), sent as curl sends a large body: with
    ``Expect: 100-continue``, and the body only if no final answer follows the ``100`` at
    once. Gunicorn sends ``100 Continue`` by itself; a server that refuses the body before
    reading it (413) answers right behind it. A client that just writes the body is still
    writing when the server closes, and sees a reset instead of the 413.
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
        head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(body)}", "Expect: 100-continue", "Connection: close"]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        received = _receive(sock, until=b"\r\n\r\n", wait_s=timeout)
        if _status(received) != 100:
            return _status(received)
        rest = received.split(b"\r\n\r\n", 1)[1]
        rest += _receive(sock, until=b"\r\n", wait_s=0.3)  # a final answer right behind?
        if rest:
            return _status(rest)
        try:
            sock.sendall(body)
        except OSError:
            return 0
        return _status(_receive(sock, until=b"\r\n", wait_s=timeout))


def _receive(sock: socket.socket, until: bytes, wait_s: float) -> bytes:
    """Bytes from ``sock`` until ``until`` is among them, the peer closes, or ``wait_s``."""
    data = b""
    sock.settimeout(wait_s)
    try:
        while until not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # the wait is over (timeout), or a reset
        pass
    return data


def _status(response: bytes) -> int:
    fields = response.split(b"\r\n", 1)[0].split()
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


def wait_ready(url: str, alive: Callable[[], bool], timeout: float = 120) -> float | None:
    """Seconds until ``GET url`` answers 200, or ``None`` (gave up, or the process died)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if not alive():
            return None
        time.sleep(0.02)
    return None


def big_json_body(megabytes: float) -> bytes:
    """A syntactically valid default-codec body of about ``megabytes`` MB for digits
    (``{"inputs": {"image": [...]}}`` with far too many numbers to be a valid tensor)."""
    count = int(megabytes * 1024 * 1024 / 6)  # "1.25, " is 6 bytes
    return b'{"inputs": {"image": [' + b", ".join([b"1.25"] * count) + b"]}}"


def binary_tensor_body(
    name: str, array: np.ndarray, datatype: str, output: str
) -> tuple[bytes, dict[str, str]]:
    """The v2 binary tensor extension: a JSON header, then the raw tensor bytes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": array.nbytes},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + array.tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
