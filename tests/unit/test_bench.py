"""The benchmark's pure parts: wrk's and perf_analyzer's outputs, the goals P1–P5, the plot.

The benchmark itself (benchmarks/bench_score.py) runs real servers for minutes; it is not
part of the suite. What it computes from its measurements is, on made-up numbers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_report
from bench_report import Startup, evaluate_goals, payload_table, plot
from bench_score import estimate_seconds, parse_wrk_output
from perf_analyzer import parse_csv, parse_stdout

PERF_STDOUT = """\
*** Measurement Settings ***
  Batch size: 1
  Service Kind: Triton

Request concurrency: 8
  Client:
    Request count: 21472
    Throughput: 2925.31 infer/sec
    Avg latency: 2730 usec (standard deviation 1606 usec)
    p50 latency: 2457 usec
    p90 latency: 3806 usec
    p95 latency: 4558 usec
    p99 latency: 8039 usec
  Server:
    Inference count: 21474

Inferences/Second vs. Client Average Batch Latency
Concurrency: 8, throughput: 2925.31 infer/sec, latency 2730 usec
"""

PERF_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,\
Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,\
p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
1,2101.5,20,300,10,5,100,5,3,470,520,560,700,480,0,0
"""


def test_perf_analyzer_stdout_and_csv() -> None:
    (row,) = parse_stdout(PERF_STDOUT, "Triton", "digits_onnx")
    assert (row.concurrency, row.throughput) == (8, 2925.31)
    assert row.p50_ms == pytest.approx(2.457) and row.p99_ms == pytest.approx(8.039)
    assert row.avg_ms == pytest.approx(2.730) and not row.error
    (row,) = parse_csv(PERF_CSV, "score serve /v2", "digits_onnx")
    assert (row.target, row.concurrency, row.throughput) == ("score serve /v2", 1, 2101.5)
    assert row.p50_ms == pytest.approx(0.47) and row.p99_ms == pytest.approx(0.7)
    assert parse_stdout("error: failed to get model metadata", "Triton", "m") == []
    assert parse_csv("", "Triton", "m") == []


def test_wrk_output() -> None:
    load = parse_wrk_output("Running 2s test\nBENCH 1000 10 12 2000000 450.5 2100.0\n")
    assert load is not None
    assert (load.requests, load.errors, load.elapsed_s) == (990, 12, 2.0)
    assert (load.p50_ms, load.p99_ms) == (pytest.approx(0.4505), pytest.approx(2.1))
    assert "12 wrk errors" in load.first_error
    assert parse_wrk_output("unable to connect to 127.0.0.1:1") is None


@dataclass
class FakeCell:
    rps: float
    p50: float = 1.0
    p99: float = 2.0
    batch: float = 1.0
    errors: int = 0
    cpu_ms: float = 1.0


def goal_cells(**override: FakeCell) -> dict:
    """Numbers that meet every goal; ``override`` replaces ``payload__path__conc`` cells."""
    cells = {}
    for conc in (1, 8, 32):
        cells[("small", "direct", conc)] = FakeCell(8000, p50=0.40, batch=2.0)
        cells[("small", "seed", conc)] = FakeCell(900, p50=1.6)
        cells[("small", "score", conc)] = FakeCell(3500, p50=0.70, batch=1.8)
        cells[("small", "forward", conc)] = FakeCell(4000, p50=0.60)
        cells[("image", "direct", conc)] = FakeCell(40)
        cells[("image", "processor", conc)] = FakeCell(38)
        cells[("t224-json", "score", conc)] = FakeCell(60, p50=15.0)
        cells[("t224-binary", "direct", conc)] = FakeCell(70, p50=10.0)
        cells[("t224-binary", "score", conc)] = FakeCell(65, p50=12.0)
    for key, cell in override.items():
        payload, path, conc = key.split("__")
        cells[(payload.replace("_", "-"), path, int(conc))] = cell
    return cells


GOOD_STARTUP = Startup(
    ready_s=4.0,
    worker_rss_mb=120,
    big_json_status=413,
    big_json_rss_mb=130,
    binary_body_mb=4.6,
    binary_status=200,
    binary_peak_growth_mb=8,
)


def test_goals_all_met() -> None:
    verdicts = dict(evaluate_goals(goal_cells(), GOOD_STARTUP))
    assert list(verdicts) == [
        "P1 throughput",
        "P2 latency",
        "P3 images",
        "P4 batching",
        "P5 start-up and memory",
    ]
    assert all(v.startswith("met (") for v in verdicts.values()), verdicts
    assert "3.89× seed" in verdicts["P1 throughput"]  # 3500 / 900
    assert (
        "adds 0.30 ms" in verdicts["P2 latency"] and "forwarder adds 0.20" in verdicts["P2 latency"]
    )


def test_goals_gaps_are_computed_from_the_numbers() -> None:
    cells = goal_cells(
        small__score__32=FakeCell(2000, batch=0.9),  # 2.2x seed; batch 45 % of direct's
        image__processor__8=FakeCell(30),  # 75 % of the client
        small__score__1=FakeCell(3500, p50=1.2),  # adds 0.8 ms
    )
    slow = Startup(**{**GOOD_STARTUP.__dict__, "ready_s": 7.5, "big_json_status": 200})
    verdicts = dict(evaluate_goals(cells, slow))
    assert (
        verdicts["P1 throughput"].startswith("gap: ")
        and "c=32 2.22× seed" in verdicts["P1 throughput"]
    )
    assert verdicts["P2 latency"].startswith("gap: ") and "adds 0.80 ms" in verdicts["P2 latency"]
    assert verdicts["P3 images"].startswith("gap: ") and "c=8 75%" in verdicts["P3 images"]
    assert verdicts["P4 batching"].startswith("gap: ") and "= 45%" in verdicts["P4 batching"]
    p5 = verdicts["P5 start-up and memory"]
    assert p5.startswith("gap: ") and "7.5 s" in p5 and "HTTP 200 (want 413)" in p5


def test_a_cell_with_errors_or_missing_never_meets() -> None:
    # t224-binary at /score answers 4xx until binary input lands: every request an error.
    cells = goal_cells(t224_binary__score__1=FakeCell(5000, p50=0.1, errors=9000))
    del cells[("small", "seed", 8)]
    verdicts = dict(evaluate_goals(cells, None))
    assert "t224-binary score c=1 (errors)" in verdicts["P3 images"]
    assert not verdicts["P3 images"].startswith("met")
    assert verdicts["P1 throughput"].startswith("not measured: score/seed c=8")
    assert verdicts["P5 start-up and memory"].startswith("not measured")
    only_c1 = {k: v for k, v in goal_cells().items() if k[2] == 1}
    assert dict(evaluate_goals(only_c1, None))["P4 batching"].startswith("not measured")


def test_table_ratios_and_plot(tmp_path) -> None:  # fixture
    cells = goal_cells()
    rows = payload_table("small", cells, ["direct", "seed", "score"], [8])
    score_row = next(r for r in rows if r.startswith("| /score default codec |"))
    cols = [c.strip() for c in score_row.strip("|").split("|")]
    assert cols[2] == "3500" and cols[6] == "0.44" and cols[8] == "3.89"  # vs direct, vs seed
    assert cols[9] == "1.80" and cols[10] == "0.90"  # batch and batch vs direct
    image_rows = payload_table("image", cells, ["direct", "processor"], [8])
    assert any(bench_report.IMAGE_DIRECT_LABEL in r for r in image_rows)

    from PIL import Image

    out = plot(cells, ["small", "image"], list(bench_report.PATH_LABELS), [1, 8, 32],
               tmp_path / "plot.png")  # fmt: skip
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[1] > 300  # two panels
        colours = {c for _, c in image.getcolors(1_000_000) or []}
    assert bench_report.COLORS["score"] in colours and bench_report.COLORS["seed"] in colours


def test_estimate_fits_the_budget() -> None:
    import bench_score

    args = bench_score.build_parser().parse_args([])
    assert estimate_seconds(args, 2 * len(bench_score.PERF_RUNS)) <= 15 * 60
    small = bench_score.build_parser().parse_args(
        ["--payloads", "small", "--paths", "direct", "--runs", "1", "--no-startup"]
    )
    assert estimate_seconds(small, 0) < estimate_seconds(args, 0)
