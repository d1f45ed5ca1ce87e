"""NVIDIA ``perf_analyzer``, taken out of the ``tritonclient==2.41.0`` wheel, run and parsed.

Newer ``tritonclient`` wheels no longer ship the binary, and the venv's ``tritonclient`` must
stay what ``constraints.txt`` pins: so on first use the 2.41.0 wheel is *downloaded* (``pip
download --no-deps``, nothing installed) into ``benchmarks/.cache/`` (git-ignored) and only
``tritonclient-2.41.0.data/data/bin/perf_analyzer`` is extracted from it.

The binary links ``libcudart.so.12`` even when it measures a CPU-only server, and Debian's
``libb64`` (``apt-get install libb64-0d``). The CUDA runtime comes with the ``nvidia-pytriton``
wheel under a hashed name (``nvidia_pytriton.libs/libcudart-<hash>.so.12.*``): a directory
holding a symlink named ``libcudart.so.12`` to it, put on ``LD_LIBRARY_PATH``, is enough.

:func:`run` measures one model at one concurrency and returns a :class:`PerfRow`; when
anything is missing or fails the row's ``error`` says why in one line and the benchmark goes
on. :func:`parse_csv` and :func:`parse_stdout` are pure (``tests/unit/test_bench.py``).
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
WHEEL_VERSION = "2.41.0"
WHEEL_MEMBER = f"tritonclient-{WHEEL_VERSION}.data/data/bin/perf_analyzer"


@dataclass
class PerfRow:
    """What perf_analyzer measured against one server at one concurrency."""

    target: str  # "Triton" or "score serve /v2"
    model: str
    concurrency: int
    throughput: float = float("nan")  # inferences per second
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    avg_ms: float = float("nan")
    error: str = ""


class Unavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says why, in one line."""


def _one_line(text: str, limit: int = 200) -> str:
    """The line that says why: the last one naming a failure, else the last one."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    reasons = [ln for ln in lines if re.search(r"fail|error|unable|unstable|cannot", ln, re.I)]
    return ((reasons or lines)[-1] if lines else "no output")[:limit]


def cudart_dir(cache: Path = CACHE) -> Path:
    """A directory with ``libcudart.so.12`` -> the CUDA runtime of the nvidia-pytriton wheel."""
    libs = Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"
    found = sorted(libs.glob("libcudart-*.so.12*"))
    if not found:
        raise Unavailable(f"no libcudart-*.so.12* in {libs} (install the [local] extra)")
    folder = cache / "lib"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "libcudart.so.12"
    if link.is_symlink() and link.resolve() != found[0].resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(found[0])
    return folder


def binary(cache: Path = CACHE) -> Path:
    """The perf_analyzer binary, downloaded and extracted on first use."""
    target = cache / "bin" / "perf_analyzer"
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"tritonclient-{WHEEL_VERSION}-*.whl"
    if not list(wheels.glob(pattern)):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
            + ["--only-binary=:all:", f"tritonclient=={WHEEL_VERSION}", "-d", str(wheels)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise Unavailable(f"pip download tritonclient=={WHEEL_VERSION} failed: "
                              + _one_line(done.stderr or done.stdout))  # fmt: skip
    wheel = next(iter(sorted(wheels.glob(pattern))), None)
    if wheel is None:
        raise Unavailable(f"no tritonclient {WHEEL_VERSION} wheel in {wheels}")
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(WHEEL_MEMBER)
        except KeyError:
            raise Unavailable(f"{wheel.name} has no {WHEEL_MEMBER}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)  # atomic: a half-written binary is never "found"
    return target


def environment(cache: Path = CACHE) -> dict[str, str]:
    env = dict(os.environ)
    previous = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = str(cudart_dir(cache)) + (f":{previous}" if previous else "")
    return env


def parse_csv(text: str, target: str, model: str) -> list[PerfRow]:
    """Rows of perf_analyzer's ``-f`` CSV (latencies in microseconds)."""
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        try:
            rows.append(
                PerfRow(
                    target,
                    model,
                    int(record["Concurrency"]),
                    float(record["Inferences/Second"]),
                    float(record["p50 latency"]) / 1000,
                    float(record["p99 latency"]) / 1000,
                    float(record.get("Avg latency") or "nan") / 1000,
                )
            )
        except (KeyError, ValueError):
            continue  # a summary line or a column this version lacks
    return rows


_BLOCK = re.compile(r"Request concurrency:\s*(\d+)(.*?)(?=Request concurrency:|\Z)", re.S)
_FIELD = {
    "throughput": re.compile(r"Throughput:\s*([\d.]+)\s*infer/sec"),
    "p50_ms": re.compile(r"p50 latency:\s*([\d.]+)\s*usec"),
    "p99_ms": re.compile(r"p99 latency:\s*([\d.]+)\s*usec"),
    "avg_ms": re.compile(r"Avg latency:\s*([\d.]+)\s*usec"),
}


def parse_stdout(text: str, target: str, model: str) -> list[PerfRow]:
    """The per-concurrency blocks of perf_analyzer's console output: the fallback when no
    CSV was written (it writes none when the measurement did not stabilise, yet the last
    trial's numbers are printed, and worth a row)."""
    rows = []
    for concurrency, block in _BLOCK.findall(text):
        row = PerfRow(target, model, int(concurrency))
        for name, pattern in _FIELD.items():
            found = pattern.search(block)
            if found:
                value = float(found.group(1))
                setattr(row, name, value if name == "throughput" else value / 1000)
        if row.throughput == row.throughput:  # not NaN: the block had numbers
            rows.append(row)
    return rows


def run(
    target: str,
    url: str,
    model: str,
    shape: str,
    concurrency: int,
    scratch: Path,
    *,
    interval_ms: int = 2000,
    cache: Path = CACHE,
) -> PerfRow:
    """``perf_analyzer -m model -u url --shape shape --concurrency-range c`` over HTTP.

    ``shape`` is ``input:dims`` without the batch axis (``image:8,8``); batch size 1.
    """
    row = PerfRow(target, model, concurrency)
    try:
        exe, env = binary(cache), environment(cache)
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        row.error = f"perf_analyzer unavailable: {exc}"
        return row
    report = scratch / f"perf-{target.replace(' ', '_').replace('/', '')}-{concurrency}.csv"
    cmd = [str(exe), "-m", model, "-u", url, "-i", "http", "--shape", shape]
    cmd += ["--concurrency-range", str(concurrency), "-p", str(interval_ms)]
    # Few, short trials: the whole benchmark must fit ~15 min; stability within 25 % is what
    # a 2-core shared machine allows anyway.
    cmd += ["--max-trials", "10", "-s", "30", "-f", str(report)]
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        row.error = f"perf_analyzer did not finish: {type(exc).__name__}"
        return row
    text = report.read_text() if report.is_file() else ""
    rows = parse_csv(text, target, model) or parse_stdout(done.stdout, target, model)
    why = f"perf_analyzer exit {done.returncode}: " + _one_line(done.stderr + "\n" + done.stdout)
    if not rows:
        row.error = why
        return row
    if done.returncode != 0:  # numbers, but not stable ones: shown, flagged
        rows[0].error = why
    return rows[0]
