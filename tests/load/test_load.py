"""Under load and faults, through the real stack (``score serve``, Gunicorn, Triton), with
``benchmarks/loadgen.py`` keeping 16 requests in flight: a soak, SIGTERM, Triton killed, a
worker killed.

These are short versions (a few seconds each). The full versions are the same tests with
bigger numbers, and they print their figures (``-s``)::

    LOAD_SOAK_REQUESTS=50000 .venv/bin/python -m pytest tests/load/test_load.py -s -k soak
    LOAD_FAULT_SECONDS=20 .venv/bin/python -m pytest tests/load/test_load.py -s -k 'not soak'
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import ROOT, ScoreServer, start_triton
from prometheus_client.parser import text_string_to_metric_families
from test_resilience import sleepy_repository

from triton_score.local import LocalTriton
from triton_score.local.processes import (
    descendants,
    free_port,
    process_environ,
    process_info,
    process_table,
)

sys.path.insert(0, str(ROOT / "benchmarks"))
from loadgen import LoadGenerator, Results

pytestmark = [pytest.mark.integration, pytest.mark.load]

CONCURRENCY = 16
SOAK_REQUESTS = int(os.environ.get("LOAD_SOAK_REQUESTS", "2000"))
#: How long the fault tests keep the load on after the fault (full runs: longer).
FAULT_SECONDS = float(os.environ.get("LOAD_FAULT_SECONDS", "2"))

DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0]]
DIGIT += [[0, 4, 12, 0, 0, 8, 8, 0], [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0]]
DIGIT += [[0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]
DIGIT_BODY = json.dumps({"image": DIGIT}).encode()
SLEEPY_BODY = json.dumps({"inputs": {"seconds": [0.0]}}).encode()


def report(title: str, figures: dict[str, object]) -> None:
    print(f"\n== {title}\n{json.dumps(figures, indent=2, default=str)}")


def workers_of(server: ScoreServer) -> tuple[int, list[int]]:
    """Gunicorn's master and its workers, below ``score serve``."""
    table = process_table()
    below = descendants(server.process.pid, table)
    masters = [pid for pid in below if table[pid].ppid == server.process.pid]
    for master in masters:
        workers = sorted(pid for pid in below if table[pid].ppid == master)
        if workers:
            return master, workers
    raise AssertionError(f"no gunicorn workers below {server.process.pid}: {below}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def shm_bytes(triton: LocalTriton) -> tuple[int, int]:
    """Files and bytes of ``/dev/shm`` this Triton's python backend holds."""
    regions = triton.shm_regions()
    return len(regions), sum(p.stat().st_size for p in regions if p.exists())


def requests_total(server: ScoreServer) -> tuple[float, float]:
    """``score_requests_total`` summed over models, codes and workers; the in-flight gauge."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    total = in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "score_requests_total":
                total += sample.value
            elif sample.name == "score_requests_in_flight":
                in_flight += sample.value
    return total, in_flight


def distribution(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 1)

    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "over_1s": sum(s > 1.0 for s in ordered),
    }


def in_background(generator: LoadGenerator, **run: float) -> tuple[threading.Thread, list[Results]]:
    out: list[Results] = []
    thread = threading.Thread(target=lambda: out.append(generator.run(**run)), daemon=True)
    thread.start()
    return thread, out


# -- soak --------------------------------------------------------------------------------
def test_soak_no_errors_and_no_growth(triton: LocalTriton) -> None:
    total = SOAK_REQUESTS
    warm = max(total // 10, 300)
    marks = sorted({warm, *range(0, total, max(total // 10, 1)), total - 1})
    server = ScoreServer("--triton-url", triton.url, "--workers", "2")
    samples: dict[int, dict[str, object]] = {}
    lock = threading.Lock()
    try:
        server.wait_ready()
        _, workers = workers_of(server)

        def sample(index: int) -> None:
            if index not in marks:
                return
            with lock:
                samples[index] = {
                    "rss_kb": {pid: rss_kb(pid) for pid in workers},
                    "fds": {pid: fd_count(pid) for pid in workers},
                    "shm": shm_bytes(triton),
                }

        generator = LoadGenerator(
            f"{server.url}/score/digits_onnx",
            body=DIGIT_BODY,
            concurrency=CONCURRENCY,
            timeout=60,
            before=sample,
        )
        results = generator.run(requests=total)
        sample_end = {
            "rss_kb": {pid: rss_kb(pid) for pid in workers},
            "fds": {pid: fd_count(pid) for pid in workers},
            "shm": shm_bytes(triton),
        }
        _, workers_after = workers_of(server)
        served, _ = requests_total(server)
    finally:
        server.stop()

    start = samples[warm]
    report(
        f"soak: {total} requests at c={CONCURRENCY}",
        {
            "summary": results.summary(),
            f"at request {warm}": start,
            "at the end": sample_end,
            "samples": samples,
        },
    )
    assert results.errors() == {}, results.errors()
    assert results.statuses() == {200: total}
    assert served == total
    assert workers_after == workers, "a worker was restarted"
    growth = 1.10 if total >= 50_000 else 1.20
    for pid in workers:
        assert sample_end["rss_kb"][pid] <= start["rss_kb"][pid] * growth, (pid, start, sample_end)  # type: ignore[index]
        assert sample_end["fds"][pid] <= start["fds"][pid] + 4, (pid, start, sample_end)  # type: ignore[index]
    assert sample_end["shm"] == start["shm"], (start, sample_end)


# -- SIGTERM -----------------------------------------------------------------------------
class Watch:
    """Polls readiness (new connection each time) and two pids' exits, with timestamps."""

    def __init__(self, url: str, pids: dict[str, int]) -> None:
        self.url = url
        self.pids = {name: (pid, process_info(pid)) for name, pid in pids.items()}
        self.ready: list[tuple[float, int | str]] = []
        self.exited: dict[str, float] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                status: int | str = requests.get(self.url, timeout=2).status_code
            except requests.ConnectionError:
                status = "refused"
            except requests.RequestException as exc:
                status = type(exc).__name__
            self.ready.append((now, status))
            for name, (pid, info) in self.pids.items():
                current = process_info(pid)
                gone = current is None or current.state == "Z" or current.start != info.start  # type: ignore[union-attr]
                if name not in self.exited and gone:
                    self.exited[name] = time.time()
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def timeline(self, origin: float) -> list[tuple[float, int | str]]:
        """Readiness changes, seconds after ``origin``."""
        changes: list[tuple[float, int | str]] = []
        for at, status in self.ready:
            if not changes or changes[-1][1] != status:
                changes.append((round(at - origin, 3), status))
        return changes


def test_sigterm_under_load_readiness_first_answers_all_then_refuses_triton_last(
    tmp_path: Path,
) -> None:
    drain_s = 1.5
    repo = sleepy_repository(tmp_path)

    server = ScoreServer(
        "--models",
        str(repo),
        "--processors",
        "none",
        "--workers",
        "2",
        "--triton-grpc-port",
        str(free_port()),
        "--triton-metrics-port",
        str(free_port()),
        "--triton-url",
        f"127.0.0.1:{free_port()}",
        env={"SCORE_DRAIN_S": str(drain_s), "SCORE_GRACEFUL_TIMEOUT": "20"},
    )
    try:
        server.wait_ready()
        match = re.search(r"tritonserver \(pid (\d+)\)", server.output())
        assert match, server.output()
        master, _ = workers_of(server)
        watch = Watch(
            server.url + "/v2/health/ready", {"gunicorn": master, "triton": int(match[1])}
        )
        generator = LoadGenerator(
            f"{server.url}/score/sleepy",
            body=SLEEPY_BODY,
            concurrency=CONCURRENCY,
            timeout=30,
            backoff=0.01,
        )
        thread, out = in_background(generator, duration=60)
        time.sleep(1.0)
        sigterm = time.time()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        time.sleep(0.3)  # new connections are refused now: see a few
        generator.stop()
        thread.join(timeout=60)
        watch.stop()
    finally:
        server.stop()
    results = out[0]
    records = results.records
    after = [r for r in records if r.ended >= sigterm]
    refused = [r for r in records if r.error == "refused"]
    first_refused = min((r.started for r in refused), default=float("inf"))
    ready_503 = [at for at, status in watch.ready if status == 503 and at >= sigterm]
    report(
        "SIGTERM under load",
        {
            "summary": results.summary(),
            "after SIGTERM": {
                "200": sum(r.status == 200 for r in after),
                "errors": dict(results.errors()),
                "first refused (s after SIGTERM)": round(first_refused - sigterm, 3),
                "resets (s after SIGTERM, exception)": [
                    (round(r.started - sigterm, 3), r.detail) for r in records if r.error == "reset"
                ],
            },
            "readiness timeline (s after SIGTERM)": watch.timeline(sigterm),
            "exits (s after SIGTERM)": {k: round(v - sigterm, 3) for k, v in watch.exited.items()},
            "exit code": code,
        },
    )
    assert code == 0
    # Readiness is 503 first, while scoring goes on for SCORE_DRAIN_S.
    assert ready_503, watch.timeline(sigterm)
    assert ready_503[0] < first_refused
    assert any(r.status == 200 and r.started > ready_503[0] for r in records)
    # Every request answered is a 200; none broke in mid-answer or hung.
    assert set(results.statuses()) == {200}, results.statuses()
    assert {"truncated", "timeout", "other"}.isdisjoint(results.errors()), results.errors()
    # A reset before any answer can only be a connection the kernel had queued as the
    # listener closed: the workers shrink that queue to its minimum on SIGTERM.
    assert results.errors().get("reset", 0) <= 2, results.errors()
    assert refused, "new connections were not refused"
    assert first_refused >= sigterm + drain_s - 0.2
    # Triton stops last.
    assert watch.exited["gunicorn"] <= watch.exited["triton"], watch.exited


# -- Triton killed -----------------------------------------------------------------------
@pytest.fixture()
def external_triton(tmp_path: Path) -> Iterator[list[LocalTriton]]:
    """A Triton of its own (the test kills it): the list gets the one started again."""
    tritons = [start_triton(sleepy_repository(tmp_path))]
    try:
        yield tritons
    finally:
        for triton in tritons:
            triton.stop()


def test_triton_killed_under_load_is_prompt_503s_then_resumes(
    external_triton: list[LocalTriton],
) -> None:
    triton = external_triton[0]
    server = ScoreServer("--triton-url", triton.url, "--processors", "none")
    try:
        server.wait_ready()
        _, workers = workers_of(server)
        generator = LoadGenerator(
            f"{server.url}/score/sleepy", body=SLEEPY_BODY, concurrency=CONCURRENCY, timeout=30
        )
        thread, out = in_background(generator, duration=600)
        time.sleep(1.0)
        killed = time.time()
        assert triton.pid is not None
        os.kill(triton.pid, signal.SIGKILL)
        time.sleep(FAULT_SECONDS)
        back = LocalTriton(
            triton.model_repository,
            http_port=triton.http_port,
            grpc_port=triton.grpc_port,
            metrics_port=triton.metrics_port,
        )
        external_triton.append(back)
        restarting = time.time()
        ready_at = [0.0]

        def poll_ready() -> None:
            while time.time() < restarting + 120:
                try:
                    url = f"http://{triton.url}/v2/health/ready"
                    if requests.get(url, timeout=1).status_code == 200:
                        ready_at[0] = time.time()
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.01)

        poller = threading.Thread(target=poll_ready, daemon=True)
        poller.start()
        back.start(timeout=120)
        poller.join(timeout=130)
        time.sleep(max(2.0, FAULT_SECONDS / 2))
        generator.stop()
        thread.join(timeout=60)
        _, workers_after = workers_of(server)
    finally:
        server.stop()
    records = out[0].records
    back_at = ready_at[0]
    assert back_at, "Triton did not come back"
    down = [r for r in records if r.ended >= killed and r.started < back_at]
    statuses = {r.status for r in down}
    first_200 = min((r.ended for r in records if r.status == 200 and r.ended >= back_at), default=0)
    report(
        "Triton killed under load",
        {
            "summary": out[0].summary(),
            "while down (ended after the kill, started before Triton was ready again)": {
                "statuses": dict(sorted((s, sum(r.status == s for r in down)) for s in statuses)),
                "answer times": distribution([r.latency for r in down]),
            },
            "Triton ready again (s after the kill)": round(back_at - killed, 3),
            "first 200 after Triton ready (s)": round(first_200 - back_at, 3),
            "non-200 after ready + 1 s": sum(
                r.status != 200 for r in records if r.started >= back_at + 1
            ),
        },
    )
    # Every request is answered: a 200 or a 503 with Retry-After, nothing hangs.
    assert out[0].errors() == {}, out[0].errors()
    assert statuses <= {200, 503}, statuses
    assert all(r.retry_after.isdigit() for r in records if r.status == 503)
    assert sum(r.status == 503 for r in down) > 0
    answer_times = [r.latency for r in down]
    assert statistics.median(answer_times) <= 1.0
    assert max(answer_times) <= 5.0, distribution(answer_times)
    # Scoring resumes within 1 s of Triton being ready, without a worker restart.
    assert first_200 and first_200 - back_at <= 1.0, first_200 - back_at
    assert all(r.status == 200 for r in records if r.started >= back_at + 1.0)
    assert workers_after == workers


# -- a worker killed ---------------------------------------------------------------------
def test_worker_killed_under_load_only_its_requests_fail(triton: LocalTriton) -> None:
    server = ScoreServer("--triton-url", triton.url, "--workers", "2")
    totals: list[tuple[float, float, float]] = []  # (time, requests_total, in flight)
    try:
        server.wait_ready()
        master, workers = workers_of(server)
        generator = LoadGenerator(
            f"{server.url}/score/digits_onnx",
            body=DIGIT_BODY,
            concurrency=CONCURRENCY,
            timeout=30,
        )
        thread, out = in_background(generator, duration=600)
        scraping = threading.Event()

        def scrape() -> None:
            while not scraping.is_set():
                with_time = (time.time(), *requests_total(server))
                totals.append(with_time)
                time.sleep(0.2)

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
        time.sleep(1.5)
        # The kernel may give every keep-alive connection to one worker: kill one that holds
        # some (it has counted /score requests: a counter_<pid>.db in the metrics directory).
        metrics_dir = Path(process_environ(master)["PROMETHEUS_MULTIPROC_DIR"])
        serving = [w for w in workers if (metrics_dir / f"counter_{w}.db").exists()]
        assert serving, "no worker has served a request"
        victim = serving[0]
        before_kill, _ = requests_total(server)
        killed = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        replaced: list[int] = []
        while time.monotonic() < deadline:
            _, now = workers_of(server)
            if len(now) == 2 and victim not in now:
                replaced = now
                break
            time.sleep(0.05)
        replaced_at = time.time()
        time.sleep(FAULT_SECONDS)
        generator.stop()
        thread.join(timeout=60)
        scraping.set()
        scraper.join(timeout=30)
        after_total, after_in_flight = requests_total(server)
    finally:
        server.stop()
    records = out[0].records
    failed = [r for r in records if r.error or r.status != 200]
    answered = [r for r in records if not r.error]
    sums = [t for _, t, _ in totals]
    report(
        "a worker killed under load",
        {
            "summary": out[0].summary(),
            "failed": [(round(r.started - killed, 3), r.error, r.status) for r in failed],
            "replaced after (s)": round(replaced_at - killed, 3),
            "score_requests_total": {
                "before the kill": before_kill,
                "after": after_total,
                "answered by the client's count": len(answered),
                "ever went down": any(b < a for a, b in zip(sums, sums[1:], strict=False)),
            },
            "in flight after the load": after_in_flight,
        },
    )
    assert replaced, "gunicorn did not replace the killed worker"
    # Only the killed worker's requests fail: at most one per client connection, at the kill.
    assert 0 < len(failed) <= CONCURRENCY, len(failed)
    assert all(r.error in ("reset", "truncated") for r in failed), failed
    assert all(abs(r.ended - killed) < 2.0 for r in failed), failed
    assert all(r.status == 200 for r in records if r.started > killed + 2.0)
    # Counters never go down, and keep the dead worker's counts.
    assert all(b >= a for a, b in zip(sums, sums[1:], strict=False)), sums
    assert after_total >= before_kill
    # Every answer was counted; a request the dead worker had counted but not yet sent back
    # is one the client saw fail.
    assert len(answered) <= after_total <= len(answered) + len(failed)
    assert after_in_flight == 0
