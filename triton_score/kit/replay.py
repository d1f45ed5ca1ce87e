"""``score replay``: send captured requests to another model version and compare the answers.

Before a new version of a model takes traffic, replay what the current one was sent
(:mod:`triton_score.telemetry.capture` recorded it) against the new one, through the same
processors, and see where they differ::

    score replay captures/ --model digits_onnx --version 2 --report replay.json

Each captured request is decoded again as the server decoded it, and scored by a
:class:`~triton_score.scoring.Scorer` built from the same settings as ``score serve`` (the
code directory's processors, ``SCORE_*``), with the model pinned at ``--version``. What
Triton answers is compared with what the capture recorded, output by output
(:class:`OutputComparison`):

- **top-1 agreement** where an output ranks classes: classification strings
  (``"score:index[:label]"``, what ``class_count`` asks for) compare their first class, and
  float tensors whose last dimension holds two values or more their argmax, row by row;
- **differences**: the largest absolute and relative difference of any element (for
  classification strings, of the scores in rank order), and the share of requests with an
  element beyond ``--atol`` + ``--rtol`` × |captured|.

A request *disagrees* when its replay fails, an output is missing or of another shape, or an
output's top-1 differs (``--compare values``: an element is beyond the tolerance, for every
output). ``score replay`` exits 1 when the share of disagreeing requests is above
``--max-disagreement``, so a release pipeline can stop there.

Latency is reported beside the captured one (p50, p99). The replay sends one request at a
time, so its latency is the model's own, without the production load the captured requests
met: compare them for an order of magnitude, not for a regression of a few percent.
"""

from __future__ import annotations

import base64
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from triton_score.codecs.response import Encoded, render
from triton_score.errors import ScoringError
from triton_score.scoring import Scorer
from triton_score.scoring.telemetry import RequestTelemetry
from triton_score.telemetry.capture import (
    RecordError,
    capture_files,
    is_redacted,
    read_records,
    record_request,
    record_tensor,
)

#: The ``format`` of the JSON report.
REPORT_FORMAT = "triton-score-replay/1"
#: Disagreeing requests named in the report (and the first few on the terminal).
EXAMPLES = 20
COMPARE_MODES = ("auto", "values")


# -- comparing one output ------------------------------------------------------------------
@dataclass(frozen=True)
class Ranked:
    """An output seen for comparison: its values, and each row's top class when it ranks
    classes (``None`` otherwise)."""

    values: np.ndarray
    top1: np.ndarray | None


def ranked(array: np.ndarray) -> Ranked:
    """``array`` (a record's or Triton's output) as values to compare and top-1 classes."""
    if array.dtype == object or array.dtype.kind in "SU":
        parsed = _classification(array)
        if parsed is None:  # other strings: compared for equality only
            return Ranked(array, None)
        scores, classes = parsed
        rows = classes.reshape(-1, classes.shape[-1]) if classes.ndim else classes.reshape(1, 1)
        return Ranked(scores, rows[:, 0])
    values = np.asarray(array, dtype=np.float64)
    if values.ndim >= 1 and values.shape[-1] >= 2:
        return Ranked(values, values.reshape(-1, values.shape[-1]).argmax(axis=1))
    return Ranked(values, None)


def _classification(array: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Scores and class indices of classification strings, ``None`` if these are not."""
    scores = np.empty(array.shape, dtype=np.float64)
    classes = np.empty(array.shape, dtype=np.int64)
    for position, item in np.ndenumerate(array):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        parts = text.split(":", 2)
        try:
            scores[position], classes[position] = float(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            return None
    return scores, classes


@dataclass
class OutputComparison:
    """What one output's replays showed, over every request that has it."""

    name: str
    compared: int = 0
    #: Requests where this output could not be compared: redacted in the capture.
    redacted: int = 0
    #: Requests whose replay lacked this output, or gave it another shape.
    mismatched: int = 0
    rows: int = 0
    top1_agreeing: int = 0
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    #: Requests with an element beyond the tolerance.
    beyond_tolerance: int = 0

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agreeing / self.rows if self.rows else None

    def add(
        self, captured: np.ndarray, replayed: np.ndarray | None, atol: float, rtol: float
    ) -> tuple[bool, bool]:
        """Compare one request's output; ``(top-1 differs, beyond tolerance)``, both true
        when the replay lacks the output or gives it another shape."""
        if replayed is None or np.shape(replayed) != np.shape(captured):
            self.mismatched += 1
            return True, True
        self.compared += 1
        was, now = ranked(captured), ranked(np.asarray(replayed))
        top1_differs = False
        if was.top1 is not None and now.top1 is not None and was.top1.shape == now.top1.shape:
            agreeing = int((was.top1 == now.top1).sum())
            self.rows += int(was.top1.size)
            self.top1_agreeing += agreeing
            top1_differs = agreeing < was.top1.size
        if was.values.dtype == object or now.values.dtype == object:
            beyond = bool(np.any(was.values != now.values))
        elif was.values.size:
            difference = np.abs(was.values - now.values)
            scale = np.abs(was.values)
            self.max_abs_diff = max(self.max_abs_diff, float(difference.max()))
            relative = difference / np.maximum(scale, np.finfo(np.float64).tiny)
            self.max_rel_diff = max(self.max_rel_diff, float(relative.max()))
            beyond = bool(np.any(difference > atol + rtol * scale))
        else:
            beyond = False
        self.beyond_tolerance += beyond
        return top1_differs, beyond

    def summary(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "redacted": self.redacted,
            "mismatched": self.mismatched,
            "top1_agreement": self.top1_agreement,
            "top1_rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "beyond_tolerance": self.beyond_tolerance / self.compared if self.compared else 0.0,
        }


# -- the whole replay ------------------------------------------------------------------------
@dataclass
class ReplayReport:
    """The outcome of a replay: counts, per-output comparisons, latencies, examples."""

    model: str
    version: str
    triton_url: str
    compare: str = "auto"
    atol: float = 1e-5
    rtol: float = 1e-3
    max_disagreement: float = 0.0
    #: Records of the model that were replayed (answered or failed).
    replayed: int = 0
    disagreeing: int = 0
    #: Replays Triton or a processor refused: status -> count.
    failed: dict[str, int] = field(default_factory=dict)
    #: Records of other models, left out.
    other_models: int = 0
    #: Lines that are not records this version reads, and the first of their reasons.
    unreadable: int = 0
    unreadable_example: str = ""
    #: Records whose payload holds a redacted field (replayed as captured: redacted).
    redacted_payloads: int = 0
    answers_identical: int = 0
    captured_versions: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, OutputComparison] = field(default_factory=dict)
    captured_ms: list[float] = field(default_factory=list, repr=False)
    replayed_ms: list[float] = field(default_factory=list, repr=False)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disagreement(self) -> float:
        return self.disagreeing / self.replayed if self.replayed else 0.0

    @property
    def passed(self) -> bool:
        return self.replayed > 0 and self.disagreement <= self.max_disagreement

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "model": self.model,
            "version": self.version,
            "triton_url": self.triton_url,
            "captured_versions": self.captured_versions,
            "compare": self.compare,
            "tolerance": {"atol": self.atol, "rtol": self.rtol},
            "replayed": self.replayed,
            "disagreeing": self.disagreeing,
            "disagreement": self.disagreement,
            "max_disagreement": self.max_disagreement,
            "passed": self.passed,
            "failed": self.failed,
            "other_models": self.other_models,
            "unreadable": self.unreadable,
            "redacted_payloads": self.redacted_payloads,
            "answers_identical": self.answers_identical / self.replayed if self.replayed else 0.0,
            "outputs": {name: c.summary() for name, c in self.outputs.items()},
            "latency_ms": {
                "captured": percentiles(self.captured_ms),
                "replayed": percentiles(self.replayed_ms),
            },
            "examples": self.examples,
        }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


def _answer_body(answer: Any) -> Any:
    """A comparable form of an answer: its JSON when it has one, else its bytes."""
    if isinstance(answer, Mapping):  # a record's answer
        return answer.get("json", answer.get("base64"))
    encoded = answer if isinstance(answer, Encoded) else render(answer)
    try:
        return orjson.loads(encoded.body)
    except orjson.JSONDecodeError:
        return base64.b64encode(encoded.body).decode("ascii")


def _same(captured: Any, replayed: Any) -> bool:
    # Through orjson both: a float written and read again compares equal to itself.
    return orjson.dumps(captured) == orjson.dumps(replayed)


class Replay:
    """Replays records into one scorer, one at a time, and keeps the report."""

    def __init__(self, scorer: Scorer, report: ReplayReport, captured_model: str = "") -> None:
        self.scorer = scorer
        self.report = report
        self.captured_model = captured_model or report.model
        self.plan = scorer.plan(report.model)

    def add(self, where: str, record: Mapping[str, Any] | RecordError) -> None:
        """Replay one line of the capture files (:func:`read_records`)."""
        report = self.report
        if isinstance(record, RecordError):
            report.unreadable += 1
            report.unreadable_example = report.unreadable_example or str(record)
            return
        if record.get("model") != self.captured_model:
            report.other_models += 1
            return
        request_id = str(record.get("request_id") or "")
        try:
            request = record_request(record, request_id=f"replay-{request_id}")
        except (RecordError, ScoringError) as exc:
            report.unreadable += 1
            report.unreadable_example = report.unreadable_example or f"{where}: {exc}"
            return
        report.replayed += 1
        version = str(record.get("version", ""))
        report.captured_versions[version] = report.captured_versions.get(version, 0) + 1
        payload = record.get("request") or {}
        if is_redacted(payload.get("json")):
            report.redacted_payloads += 1
        captured_ms = (record.get("timings_ms") or {}).get("total")
        if isinstance(captured_ms, (int, float)):
            report.captured_ms.append(float(captured_ms))

        telemetry = RequestTelemetry(None, self.scorer.tracing, request_id=request.id)
        try:
            result = self.scorer.recorded(self.plan, request, telemetry)
        except ScoringError as exc:
            status = str(exc.status_code)
            report.failed[status] = report.failed.get(status, 0) + 1
            self._disagrees(where, request_id, f"replay answered {status}: {exc.message}")
            return
        report.replayed_ms.append(result.total_s * 1000)
        if _same(_answer_body(record.get("answer") or {}), _answer_body(result.answer)):
            report.answers_identical += 1
        reasons = self._compare(record.get("outputs") or {}, result.outputs)
        if reasons:
            self._disagrees(where, request_id, "; ".join(reasons))

    def _compare(self, captured: Mapping[str, Any], replayed: Mapping[str, Any]) -> list[str]:
        report = self.report
        reasons = []
        for name, entry in captured.items():
            comparison = report.outputs.setdefault(name, OutputComparison(name))
            try:
                was = record_tensor(entry)
            except RecordError as exc:
                reasons.append(f"{name}: captured {exc}")
                continue
            if was is None:
                comparison.redacted += 1
                continue
            now = replayed.get(name)
            top1_differs, beyond = comparison.add(
                was, None if now is None else np.asarray(now), report.atol, report.rtol
            )
            if now is None or np.shape(now) != was.shape:
                shape = "missing" if now is None else f"shape {list(np.shape(now))}"
                reasons.append(f"{name}: {shape}, captured {list(was.shape)}")
            elif report.compare == "values" and beyond:
                reasons.append(f"{name}: beyond tolerance")
            elif report.compare == "auto" and top1_differs:
                reasons.append(f"{name}: top-1 differs")
            elif report.compare == "auto" and beyond and ranked(was).top1 is None:
                reasons.append(f"{name}: beyond tolerance")  # nothing ranked: values decide
        return reasons

    def _disagrees(self, where: str, request_id: str, reason: str) -> None:
        self.report.disagreeing += 1
        if len(self.report.examples) < EXAMPLES:
            self.report.examples.append({"at": where, "request_id": request_id, "why": reason})


# -- progress and the table ---------------------------------------------------------------
class Progress:
    """A progress bar on ``stream`` (by bytes of the capture files read): redrawn in place
    on a terminal, a line every 10 % elsewhere (a CI log)."""

    def __init__(self, total_bytes: int, stream: IO[str] = sys.stderr, width: int = 30) -> None:
        self.total = max(total_bytes, 1)
        self.stream = stream
        self.width = width
        self.done = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._shown = -1
        self._drawn = 0.0

    def advance(self, size: int, replayed: int) -> None:
        self.done += size
        share = min(self.done / self.total, 1.0)
        if self.tty:
            now = time.monotonic()
            if now - self._drawn < 0.1 and share < 1.0:
                return
            self._drawn = now
            filled = int(share * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\rreplaying [{bar}] {share:4.0%}  {replayed} requests")
            self.stream.flush()
            return
        step = int(share * 10)
        if step > self._shown:
            self._shown = step
            self.stream.write(f"replaying: {share:.0%} of the capture read, {replayed} requests\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_report(report: ReplayReport, out: Callable[[str], None] = print) -> None:
    """The report as the terminal shows it."""
    versions = ", ".join(f"v{v} x{n}" for v, n in sorted(report.captured_versions.items()))
    out(
        f"replayed {report.replayed} captured requests ({versions or 'none'}) against "
        f"{report.model} v{report.version} at {report.triton_url}"
    )
    skipped = []
    if report.other_models:
        skipped.append(f"{report.other_models} of other models")
    if report.unreadable:
        skipped.append(f"{report.unreadable} unreadable (first: {report.unreadable_example})")
    if report.redacted_payloads:
        skipped.append(f"{report.redacted_payloads} with redacted fields, replayed as captured")
    if skipped:
        out("records: " + "; ".join(skipped))
    rows: list[tuple[str, ...]] = [
        ("output", "compared", "top-1 agree", "max |diff|", "max rel diff", "beyond tol")
    ]
    for name, comparison in report.outputs.items():
        rows.append(
            (
                name,
                str(comparison.compared),
                _share(comparison.top1_agreement),
                _number(comparison.max_abs_diff),
                _number(comparison.max_rel_diff),
                _share(comparison.beyond_tolerance / comparison.compared)
                if comparison.compared
                else "-",
            )
        )
    _table(rows, out)
    captured, replayed = percentiles(report.captured_ms), percentiles(report.replayed_ms)
    _table(
        [
            ("latency ms", "p50", "p99"),
            ("captured", _number(captured["p50"]), _number(captured["p99"])),
            ("replayed", _number(replayed["p50"]), _number(replayed["p99"])),
        ],
        out,
    )
    if report.failed:
        out("failed: " + ", ".join(f"{n} x {s}" for s, n in sorted(report.failed.items())))
    if report.replayed:
        out(f"identical answers: {report.answers_identical / report.replayed:.1%}")
    for example in report.examples[:5]:
        out(f"  disagrees: {example['at']} (request {example['request_id']}): {example['why']}")
    verdict = "PASS" if report.passed else "FAIL"
    criterion = "top-1" if report.compare == "auto" else "values"
    out(
        f"disagreement {report.disagreement:.1%} ({report.disagreeing} of {report.replayed}, "
        f"by {criterion}) vs --max-disagreement {report.max_disagreement:.1%}: {verdict}"
    )


def _table(rows: Sequence[tuple[str, ...]], out: Callable[[str], None]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        out("  ".join(cells).rstrip())


def replay(
    scorer: Scorer,
    records: Iterable[tuple[str, int, Mapping[str, Any] | RecordError]],
    report: ReplayReport,
    *,
    captured_model: str = "",
    limit: int = 0,
    progress: Progress | None = None,
) -> ReplayReport:
    """Replay ``records`` (:func:`read_records`) into ``scorer``; ``limit``: at most that
    many requests (0: all)."""
    replaying = Replay(scorer, report, captured_model)
    for where, size, record in records:
        replaying.add(where, record)
        if progress is not None:
            progress.advance(size, report.replayed)
        if limit and report.replayed >= limit:
            break
    if progress is not None:
        progress.close()
    return report


def capture_size(directory: str | Path) -> int:
    """The bytes of every capture file under ``directory`` (the progress bar's total)."""
    return sum(path.stat().st_size for path in capture_files(directory))


__all__ = [
    "COMPARE_MODES",
    "OutputComparison",
    "Progress",
    "ReplayReport",
    "capture_size",
    "ranked",
    "read_records",
    "render_report",
    "replay",
]
