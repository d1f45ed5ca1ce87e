"""The benchmark's report: the tables, issue 8's goals P1–P5 judged from the numbers, the plot.

Everything here is pure: it reads measured cells (anything with the attributes of
:class:`Measured`) and returns text or writes a PNG, so ``tests/unit/test_bench.py`` checks the
verdicts on made-up numbers. The goals, as issue 8 states them (median of 3 runs, side by
side, equal ``WORKER_COUNT``):

- **P1** ``/score`` (``score`` path, small payload) ≥ 3× the seed stack at c=8 and c=32; at
  c=8 also ≥ 35 % of direct Triton and ≥ 80 % of the ``/v2`` forwarder;
- **P2** added p50 over direct Triton at c=1 ≤ 0.4 ms (the forwarder's beside it: the floor);
- **P3** image bytes → top-5 through ``/score`` ≥ 90 % of a hand-written client's req/s;
  3×224×224 FP32 as JSON ≤ 16 ms p50; as v2 binary ≤ 3 ms added p50 over direct Triton;
- **P4** mean Triton batch through the middleware ≥ 70 % of a direct client's;
- **P5** warm ``score serve`` ready ≤ 5 s; worker RSS ≤ 150 MB; a body that cannot be valid
  refused with 413; peak RSS for a valid large binary body ≤ 2× the body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Display names of the paths, per payload where the baseline differs.
PATH_LABELS = {
    "direct": "direct Triton",
    "seed": "azmlinfsrv + seed script",
    "floor": "floor (minimal Flask app)",
    "bare": "floor without Flask (bare WSGI)",
    "entry": "score serve --entry-script",
    "score": "/score default codec",
    "processor": "/score + processor",
    "forward": "/v2 forwarded by score serve",
}
#: For images the baseline is not Triton alone but a client doing the same decode.
IMAGE_DIRECT_LABEL = "hand-written client → Triton"

P1_SEED_FACTOR, P1_DIRECT_SHARE, P1_FORWARD_SHARE = 3.0, 0.35, 0.80
P2_ADDED_P50_MS = 0.4
P3_IMAGE_SHARE, P3_JSON_P50_MS, P3_BINARY_ADDED_MS = 0.90, 16.0, 3.0
P4_BATCH_SHARE = 0.70
P5_READY_S, P5_RSS_MB, P5_BINARY_PEAK_FACTOR = 5.0, 150.0, 2.0


class Measured(Protocol):
    """One cell's medians (``bench_score.Cell`` has these)."""

    @property
    def rps(self) -> float: ...
    @property
    def p50(self) -> float: ...
    @property
    def p99(self) -> float: ...
    @property
    def batch(self) -> float: ...
    @property
    def errors(self) -> int: ...
    @property
    def cpu_ms(self) -> float: ...


Cells = Mapping[tuple[str, str, int], Measured]  # (payload, path, concurrency)


@dataclass
class Startup:
    """P5's measurements (``bench_memory``); ``None``: not measured, see ``notes``."""

    ready_s: float | None = None
    worker_rss_mb: float | None = None  # largest VmRSS of a worker after the runs
    worker_hwm_mb: float | None = None  # largest VmHWM (peak) of a worker after the runs
    big_json_mb: float = 50.0
    big_json_status: int | None = None
    big_json_rss_mb: float | None = None  # largest worker VmHWM after the big body
    binary_body_mb: float | None = None
    binary_status: int | None = None
    binary_peak_growth_mb: float | None = None  # VmHWM growth the valid binary body caused
    notes: list[str] = field(default_factory=list)


def _ok(value: float | None) -> bool:
    return value is not None and value == value  # not None, not NaN


def fmt(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _ok(value) else "-"


def _ratio(value: float | None, base: float | None) -> float | None:
    if not (_ok(value) and _ok(base)) or not base:
        return None
    return value / base  # type: ignore[operator]


def _verdict(met: bool, text: str) -> str:
    return f"met ({text})" if met else f"gap: {text}"


def evaluate_goals(cells: Cells, startup: Startup | None) -> list[tuple[str, str]]:
    """``[(goal, verdict)]``: each verdict is ``met (...)``, ``gap: ...`` or ``not measured
    (...)``, computed from the cells; a cell with errors never meets a goal."""

    def cell(payload: str, path: str, concurrency: int) -> Measured | None:
        return cells.get((payload, path, concurrency))

    def clean(c: Measured | None) -> bool:
        return c is not None and not c.errors and _ok(c.rps) and c.rps > 0

    verdicts: list[tuple[str, str]] = []

    # P1 ------------------------------------------------------------------------------------
    parts, met, missing = [], True, []
    for conc in (8, 32):
        score, seed = cell("small", "score", conc), cell("small", "seed", conc)
        if not (clean(score) and clean(seed)):
            missing.append(f"score/seed c={conc}")
            continue
        r = _ratio(score.rps, seed.rps) or 0.0  # type: ignore[union-attr]
        met &= r >= P1_SEED_FACTOR
        parts.append(f"c={conc} {r:.2f}× seed (≥{P1_SEED_FACTOR:g}×)")
    score = cell("small", "score", 8)
    for base, share, name in (("direct", P1_DIRECT_SHARE, "direct"),
                              ("forward", P1_FORWARD_SHARE, "forward")):  # fmt: skip
        other = cell("small", base, 8)
        if not (clean(score) and clean(other)):
            missing.append(f"score/{base} c=8")
            continue
        r = _ratio(score.rps, other.rps) or 0.0  # type: ignore[union-attr]
        met &= r >= share
        parts.append(f"c=8 {r:.0%} of {name} (≥{share:.0%})")
    verdicts.append(("P1 throughput", _join(met, parts, missing)))

    # P2 ------------------------------------------------------------------------------------
    direct, score, forward = (cell("small", p, 1) for p in ("direct", "score", "forward"))
    if clean(direct) and clean(score):
        added = score.p50 - direct.p50  # type: ignore[union-attr]
        text = f"/score adds {added:.2f} ms p50 at c=1 (≤{P2_ADDED_P50_MS:g})"
        if clean(forward):
            text += f"; forwarder adds {forward.p50 - direct.p50:.2f} ms"  # type: ignore[union-attr]
        verdicts.append(("P2 latency", _verdict(added <= P2_ADDED_P50_MS, text)))
    else:
        verdicts.append(("P2 latency", "not measured (small: direct and score at c=1)"))

    # P3 ------------------------------------------------------------------------------------
    parts, met, missing = [], True, []
    concs = sorted({c for (p, path, c) in cells if p == "image" and path == "processor"})
    for conc in concs:
        proc, client = cell("image", "processor", conc), cell("image", "direct", conc)
        if not (clean(proc) and clean(client)):
            missing.append(f"image c={conc}")
            continue
        r = _ratio(proc.rps, client.rps) or 0.0  # type: ignore[union-attr]
        met &= r >= P3_IMAGE_SHARE
        parts.append(f"image c={conc} {r:.0%} of the hand-written client (≥{P3_IMAGE_SHARE:.0%})")
    if not concs:
        missing.append("image")
    js = cell("t224-json", "score", 1)
    if clean(js):
        met &= js.p50 <= P3_JSON_P50_MS  # type: ignore[union-attr]
        parts.append(f"t224 JSON p50 {js.p50:.1f} ms (≤{P3_JSON_P50_MS:g})")  # type: ignore[union-attr]
    else:
        missing.append("t224-json score c=1" + (" (errors)" if js is not None else ""))
    binary, direct = cell("t224-binary", "score", 1), cell("t224-binary", "direct", 1)
    if clean(binary) and clean(direct):
        added = binary.p50 - direct.p50  # type: ignore[union-attr]
        met &= added <= P3_BINARY_ADDED_MS
        parts.append(f"t224 binary adds {added:.2f} ms p50 (≤{P3_BINARY_ADDED_MS:g})")
    else:
        missing.append("t224-binary score c=1" + (" (errors)" if binary is not None else ""))
    verdicts.append(("P3 images", _join(met, parts, missing)))

    # P4 ------------------------------------------------------------------------------------
    parts, met, missing = [], True, []
    batched = sorted({c for (p, path, c) in cells if p == "small" and c > 1})
    if not batched:
        missing.append("small at a concurrency > 1")  # at c=1 there is nothing to merge
    for conc in batched:
        score, direct = cell("small", "score", conc), cell("small", "direct", conc)
        if not (clean(score) and clean(direct)) or not _ok(direct.batch):  # type: ignore[union-attr]
            missing.append(f"small c={conc}")
            continue
        r = _ratio(score.batch, direct.batch) or 0.0  # type: ignore[union-attr]
        met &= r >= P4_BATCH_SHARE
        parts.append(
            f"c={conc} batch {score.batch:.2f} vs direct {direct.batch:.2f} = {r:.0%}"  # type: ignore[union-attr]
            f" (≥{P4_BATCH_SHARE:.0%})"
        )
    verdicts.append(("P4 batching", _join(met, parts, missing)))

    # P5 ------------------------------------------------------------------------------------
    if startup is None:
        verdicts.append(("P5 start-up and memory", "not measured (--no-startup)"))
        return verdicts
    parts, met, missing = [], True, []
    if _ok(startup.ready_s):
        met &= startup.ready_s <= P5_READY_S  # type: ignore[operator]
        parts.append(f"ready in {startup.ready_s:.1f} s (≤{P5_READY_S:g})")
    else:
        missing.append("ready time")
    if _ok(startup.worker_rss_mb):
        met &= startup.worker_rss_mb <= P5_RSS_MB  # type: ignore[operator]
        parts.append(f"worker RSS {startup.worker_rss_mb:.0f} MB (≤{P5_RSS_MB:g})")
    else:
        missing.append("worker RSS")
    if startup.big_json_status is not None:
        met &= startup.big_json_status == 413
        after = fmt(startup.big_json_rss_mb, 0)
        parts.append(
            f"{startup.big_json_mb:g} MB JSON → HTTP {startup.big_json_status} (want 413), "
            f"worker peak {after} MB"
        )
    else:
        missing.append("big JSON body")
    if startup.binary_status == 200 and _ok(startup.binary_peak_growth_mb):
        limit = P5_BINARY_PEAK_FACTOR * (startup.binary_body_mb or 0.0)
        met &= startup.binary_peak_growth_mb <= limit  # type: ignore[operator]
        parts.append(
            f"{fmt(startup.binary_body_mb, 1)} MB binary body: peak +"
            f"{startup.binary_peak_growth_mb:.0f} MB (≤{limit:.0f})"
        )
    else:
        status = startup.binary_status
        missing.append("valid binary body" + (f" (HTTP {status})" if status else ""))
    verdicts.append(("P5 start-up and memory", _join(met, parts, missing)))
    return verdicts


def _join(met: bool, parts: list[str], missing: list[str]) -> str:
    """A goal is met only when every part of it was measured and met; a part that failed is
    a gap even if others are missing; otherwise what is missing is named."""
    text = "; ".join(parts)
    if not missing:
        return _verdict(met, text)
    absent = "not measured: " + ", ".join(missing)
    if parts and not met:
        return f"gap: {text}; {absent}"
    return absent + (f" (measured: {text})" if parts else "")


def payload_table(
    payload: str,
    cells: Cells,
    paths: Sequence[str],
    concurrency: Sequence[int],
) -> list[str]:
    """One markdown table: a row per path and concurrency, with ratios to direct and seed."""
    head = (
        "| path | conc | req/s | p50 ms | p99 ms | errors | req/s vs direct | p50 added "
        "over direct (ms) | req/s vs seed | mean Triton batch | batch vs direct "
        "| CPU ms/req | CPU vs floor | CPU vs bare floor | CPU vs seed |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for conc in concurrency:
        direct = cells.get((payload, "direct", conc))
        seed = cells.get((payload, "seed", conc))
        floor = cells.get((payload, "floor", conc))
        bare = cells.get((payload, "bare", conc))
        for path in paths:
            c = cells.get((payload, path, conc))
            if c is None:
                continue
            label = IMAGE_DIRECT_LABEL if (payload == "image" and path == "direct") else (
                PATH_LABELS.get(path, path)
            )  # fmt: skip
            # A cell without one successful request has no latency to compare.
            answered = direct is not None and path != "direct" and c.rps > 0
            added = c.p50 - direct.p50 if answered else None  # type: ignore[union-attr]
            mark = " ⚠" if c.errors else ""
            rows.append(
                f"| {label}{mark} | {conc} | {c.rps:.0f} | {fmt(c.p50)} | {fmt(c.p99)} "
                f"| {c.errors} | {fmt(_ratio(c.rps, direct.rps if direct else None))} "
                f"| {fmt(added)} | {fmt(_ratio(c.rps, seed.rps if seed else None))} "
                f"| {fmt(c.batch)} | {fmt(_ratio(c.batch, direct.batch if direct else None))} "
                f"| {fmt(c.cpu_ms, 3)} | {fmt(_ratio(c.cpu_ms, floor.cpu_ms if floor else None))} "
                f"| {fmt(_ratio(c.cpu_ms, bare.cpu_ms if bare else None))} "
                f"| {fmt(_ratio(c.cpu_ms, seed.cpu_ms if seed else None))} |"
            )
    return rows


# -- the plot --------------------------------------------------------------------------------

COLORS = {
    "direct": (76, 114, 176),
    "seed": (196, 78, 82),
    "floor": (140, 140, 140),
    "bare": (90, 90, 90),
    "entry": (221, 132, 82),
    "score": (85, 168, 104),
    "processor": (129, 114, 179),
    "forward": (147, 120, 96),
}


def plot(
    cells: Cells,
    payloads: Sequence[str],
    paths: Sequence[str],
    concurrency: Sequence[int],
    out: Path,
    title: str = "",
) -> Path:
    """Grouped bars of req/s: a panel per payload, a group per concurrency, a bar per path,
    each bar labelled with its value. Pillow only (no matplotlib in the dependencies)."""
    from PIL import Image, ImageDraw, ImageFont  # only when plotting

    font = ImageFont.load_default()
    panel_h, width, margin = 300, 1100, 60
    shown = [p for p in payloads if any(k[0] == p for k in cells)]
    image = Image.new("RGB", (width, 40 + panel_h * max(1, len(shown))), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 10), title or "req/s per path (median of runs)", fill="black", font=font)
    for index, payload in enumerate(shown):
        top = 40 + index * panel_h
        bottom = top + panel_h - 70
        present = [p for p in paths if any((payload, p, c) in cells for c in concurrency)]
        values = [
            cells[(payload, p, c)].rps
            for p in present
            for c in concurrency
            if (payload, p, c) in cells and _ok(cells[(payload, p, c)].rps)
        ]
        peak = max(values, default=0.0) or 1.0
        draw.text((margin, top), f"payload: {payload}", fill="black", font=font)
        draw.line((margin, bottom, width - margin, bottom), fill="black")
        group_w = (width - 2 * margin - 190) / max(1, len(concurrency))
        bar_w = max(4.0, (group_w - 20) / max(1, len(present)))
        for g, conc in enumerate(concurrency):
            x0 = margin + g * group_w + 10
            draw.text((x0 + group_w / 2 - 20, bottom + 5), f"c={conc}", fill="black", font=font)
            for b, path in enumerate(present):
                c = cells.get((payload, path, conc))
                if c is None or not _ok(c.rps):
                    continue
                height = (bottom - top - 30) * c.rps / peak
                x = x0 + b * bar_w
                draw.rectangle((x, bottom - height, x + bar_w - 3, bottom), fill=COLORS[path])
                value = f"{c.rps:.0f}" + (" (errors)" if c.errors else "")
                draw.text((x, bottom - height - 12), value, fill="black", font=font)
        for b, path in enumerate(present):  # legend, right of the panel
            y = top + 20 + b * 16
            label = IMAGE_DIRECT_LABEL if (payload == "image" and path == "direct") else (
                PATH_LABELS[path]
            )  # fmt: skip
            draw.rectangle((width - margin - 180, y, width - margin - 170, y + 10),
                           fill=COLORS[path])  # fmt: skip
            # The default bitmap font has no arrow; the legend has room for ~30 characters.
            text = label.replace("→", "->")[:30]
            draw.text((width - margin - 165, y), text, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    return out
