"""Production data capture: a sample of the requests a worker scores, written as JSON lines.

``SCORE_CAPTURE=digits_onnx=0.1,*=0.01`` records one request in ten to ``digits_onnx`` and
one in a hundred to any other model, each as one JSON line (:func:`encode_record`) holding
what a model monitor or a replay needs: the client's payload, the tensors sent to Triton,
Triton's outputs, the answer, the request id, the trace id, the model's name and version,
and the stage timings. ``score replay`` (:mod:`triton_score.kit.replay`) sends them again;
:func:`read_records`, :func:`record_request` and :func:`record_tensor` read them back.

How it stays off the request's way:

- **Off is free.** Without ``SCORE_CAPTURE`` the scorer holds no :class:`Capture`, and a
  request pays one attribute check (:meth:`triton_score.scoring.Scorer.handle`).
- **On, a request only hands over references.** A sampled request puts a :class:`Captured`
  (the arrays and the answer it already has, nothing copied or encoded) into a bounded
  queue with ``put_nowait``. A full queue drops the capture and counts it
  (``score_capture_dropped_total``): a request never waits for the disk.
- **A background writer encodes and writes.** Under Gunicorn's gevent workers it is a
  greenlet (the worker's one OS thread; it yields between records); elsewhere a daemon
  thread. It starts on the first capture, in the process that captures (after Gunicorn's
  fork), and drains the queue in batches.
- **Bounded on disk.** Each worker process writes its own file set,
  ``capture-<pid>-<n>.jsonl`` under ``SCORE_CAPTURE_DIR`` (so several workers never share a
  file), begins file ``n + 1`` once ``SCORE_CAPTURE_MAX_BYTES`` is reached and keeps its
  newest ``SCORE_CAPTURE_MAX_FILES``.
- **Redaction** (``SCORE_CAPTURE_REDACT=field,...``): JSON keys of those names, at any
  depth of the payload and of the answer, query parameters and tensors of those names are
  written as :data:`REDACTED`, never in the clear.

Only answered requests are captured (an error has no outputs to compare); request headers
are never written (they carry credentials).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from triton_score.codecs.binary import HEADER_LENGTH
from triton_score.codecs.request import Request, decode_request, header, is_json_media_type
from triton_score.codecs.response import Encoded, render
from triton_score.codecs.v2 import DATATYPES
from triton_score.serve.worker import gevent_patched
from triton_score.settings import CAPTURE_ANY_MODEL, Settings

log = logging.getLogger(__name__)

#: The ``format`` of every record: a reader checks it before trusting the fields.
FORMAT = "triton-score-capture/1"
#: What a redacted value is written as.
REDACTED = "[redacted]"
#: A capture file's name: ``capture-<pid>-<n>.jsonl``.
FILE_PREFIX = "capture-"
FILE_SUFFIX = ".jsonl"
#: Records the writer takes from the queue at once before it writes and flushes.
BATCH = 64
_DUMPS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True)
class Captured:
    """One scored request, as the scorer saw it: references only, encoded by the writer.

    :param answer: what the client got (an :class:`~triton_score.codecs.response.Encoded`),
        or the postprocessor's value when the caller encodes it itself (AzureML's ``run()``).
    :param timings: seconds per metered stage (the access line's).
    :param total_s: the request's time inside the server up to its answer.
    """

    model: str
    version: str
    request: Request
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    answer: Any
    trace_id: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    total_s: float = 0.0
    time: float = 0.0


class Sampler:
    """Whether a request to a model is captured, from ``SCORE_CAPTURE``'s rates."""

    def __init__(self, rates: Iterable[tuple[str, float]]) -> None:
        self.rates = dict(rates)
        self.default = self.rates.pop(CAPTURE_ANY_MODEL, 0.0)

    def rate(self, model: str) -> float:
        return self.rates.get(model, self.default)

    def __call__(self, model: str) -> bool:
        rate = self.rates.get(model, self.default)
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    @property
    def captures_anything(self) -> bool:
        return self.default > 0 or any(rate > 0 for rate in self.rates.values())


# -- encoding (in the writer) -------------------------------------------------------------
def _redacted(value: Any, names: frozenset[str]) -> Any:
    """``value`` (parsed JSON) with every key in ``names`` at any depth replaced."""
    if isinstance(value, dict):
        return {
            key: REDACTED if key in names else _redacted(item, names) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted(item, names) for item in value]
    return value


def _tensor(name: str, value: Any, redact: frozenset[str]) -> dict[str, Any]:
    """A tensor as ``{"datatype", "shape", "data"}``; BYTES elements as UTF-8 strings, or
    base64 (``"encoding": "base64"``) when one of them is not UTF-8."""
    array = np.asarray(value)
    shape = list(array.shape)
    if array.dtype.kind in "OSU":
        entry: dict[str, Any] = {"datatype": "BYTES", "shape": shape}
        if name in redact:
            entry["data"] = REDACTED
            return entry
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel().tolist()]
        try:
            entry["data"] = [v.decode("utf-8") for v in flat]
        except UnicodeDecodeError:
            entry["data"] = [base64.b64encode(v).decode("ascii") for v in flat]
            entry["encoding"] = "base64"
        return entry
    wire = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    datatype = DATATYPES.get(wire.str) or ("BOOL" if array.dtype == np.bool_ else str(array.dtype))
    entry = {"datatype": datatype, "shape": shape}
    if name in redact:
        entry["data"] = REDACTED
    elif array.dtype.kind in "biuf" and array.dtype.itemsize <= 8 and array.dtype != np.float16:
        entry["data"] = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    else:  # BF16 stand-ins, float16 and the like: as Python numbers
        entry["data"] = array.astype(np.float64).tolist()
    return entry


def _names_tensor(v2_header: Any, names: frozenset[str]) -> bool:
    """Whether a v2 request header lists an input or output of one of ``names``."""
    if not isinstance(v2_header, dict):
        return False
    tensors = [*(v2_header.get("inputs") or []), *(v2_header.get("outputs") or [])]
    return any(isinstance(t, dict) and t.get("name") in names for t in tensors)


def _body(body: bytes, content_type: str, redact: frozenset[str]) -> dict[str, Any]:
    """A body as ``{"content_type", "json"}`` when it is JSON, else ``{..., "base64"}``."""
    media = content_type.split(";", 1)[0].strip().lower()
    if is_json_media_type(media) or not media:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return {"content_type": content_type, "json": _redacted(parsed, redact)}
    return {"content_type": content_type, "base64": base64.b64encode(body).decode("ascii")}


def encode_record(entry: Captured, redact: frozenset[str] = frozenset()) -> bytes:
    """One capture as a JSON line (with its newline).

    Fields: ``format`` (:data:`FORMAT`), ``time`` (UTC, ISO 8601), ``request_id``,
    ``trace_id``, ``model``, ``version``, ``request`` (``content_type``, ``query``, the
    body as ``json`` or ``base64``, and ``header_length`` for a v2 binary-extension body),
    ``inputs`` and ``outputs`` (name -> ``datatype``, ``shape``, ``data``), ``answer``
    (``status``, ``content_type``, ``json`` or ``base64``), ``timings_ms`` (``preprocess``,
    ``infer``, ``postprocess``, ``total``).
    """
    request = entry.request
    answer = entry.answer if isinstance(entry.answer, Encoded) else render(entry.answer)
    # A v2 binary-extension body is its JSON header then tensor bytes: kept whole, with the
    # header's length, or it could not be read again.
    binary_header = header(request.headers, HEADER_LENGTH)
    if request.json is not None and not binary_header:
        payload: dict[str, Any] = {
            "content_type": request.content_type,
            "json": _redacted(request.json, redact),
        }
    else:
        payload = _body(request.body, request.content_type, frozenset())
        if redact and "json" in payload:
            payload["json"] = _redacted(payload["json"], redact)
    payload["query"] = {k: REDACTED if k in redact else v for k, v in request.query.items()}
    if binary_header:
        payload["header_length"] = binary_header
        if redact and _names_tensor(request.json, redact):  # its bytes hold that tensor
            payload["base64"] = REDACTED
    answered = {"status": answer.status, **_body(answer.body, answer.content_type, redact)}
    timings = {stage: round(seconds * 1000, 3) for stage, seconds in entry.timings.items()}
    timings["total"] = round(entry.total_s * 1000, 3)
    record = {
        "format": FORMAT,
        "time": datetime.fromtimestamp(entry.time or time.time(), timezone.utc).isoformat(),
        "request_id": request.id,
        "trace_id": entry.trace_id,
        "model": entry.model,
        "version": entry.version,
        "request": payload,
        "inputs": {name: _tensor(name, v, redact) for name, v in entry.inputs.items()},
        "outputs": {name: _tensor(name, v, redact) for name, v in entry.outputs.items()},
        "answer": answered,
        "timings_ms": timings,
    }
    return orjson.dumps(record, option=_DUMPS)


# -- reading records back (score replay) -------------------------------------------------------
class RecordError(ValueError):
    """A capture line that is not a record this version can read."""


def read_records(
    directory: str | Path,
) -> Iterator[tuple[str, int, dict[str, Any] | RecordError]]:
    """Every line of the capture files under ``directory``, oldest file first, as
    ``(where, size, record)``; a line that is not a readable record comes as a
    :class:`RecordError` instead (the caller counts and names it; one bad line, a file cut
    short by a crash, never hides the rest). ``where`` is ``file:line``, ``size`` the line's
    bytes (for progress over :func:`capture_files`' total size)."""
    for path in capture_files(directory):
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                where = f"{path.name}:{number}"
                size = len(line)
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield where, size, RecordError(f"{where}: not JSON ({exc})")
                    continue
                if not isinstance(record, dict) or record.get("format") != FORMAT:
                    found = record.get("format") if isinstance(record, dict) else None
                    yield where, size, RecordError(f"{where}: format {found!r} is not {FORMAT!r}")
                    continue
                yield where, size, record


def is_redacted(value: Any) -> bool:
    """Whether ``value`` (parsed JSON) holds a redacted field anywhere."""
    if value == REDACTED:
        return True
    if isinstance(value, dict):
        return any(is_redacted(item) for item in value.values())
    if isinstance(value, list):
        return any(is_redacted(item) for item in value)
    return False


def record_request(record: Mapping[str, Any], request_id: str = "") -> Request:
    """The client's request of ``record``, decoded again as the server decoded it.

    Headers were never captured (they carry credentials): the request gets its content
    type, and a binary-extension body its ``Inference-Header-Content-Length``.

    :raises RecordError: the record holds no body.
    """
    payload = record.get("request")
    if not isinstance(payload, Mapping):
        raise RecordError("the record has no request")
    content_type = str(payload.get("content_type") or "")
    if "json" in payload:
        body = orjson.dumps(payload["json"])
    elif payload.get("base64") == REDACTED:
        raise RecordError("the record's body was redacted (SCORE_CAPTURE_REDACT)")
    elif "base64" in payload:
        body = base64.b64decode(payload["base64"])
    else:
        raise RecordError("the record's request has no body")
    headers = {"content-type": content_type} if content_type else {}
    if payload.get("header_length"):
        headers[HEADER_LENGTH] = str(payload["header_length"])
    query = {str(k): str(v) for k, v in (payload.get("query") or {}).items()}
    return decode_request(body, content_type, headers, request_id, query=query)


def record_tensor(entry: Mapping[str, Any]) -> np.ndarray | None:
    """A tensor of a record as an array (BYTES: an object array of ``bytes``); ``None`` when
    it was redacted.

    :raises RecordError: the entry is not a tensor (no shape, data of another size).
    """
    data: Any = entry.get("data")
    if data == REDACTED:
        return None
    if not isinstance(data, list):
        raise RecordError("not a tensor: its data is not a list")
    try:
        shape = tuple(int(d) for d in entry["shape"])
        if entry.get("datatype") == "BYTES":
            if entry.get("encoding") == "base64":
                items = [base64.b64decode(v) for v in data]
            else:
                items = [str(v).encode("utf-8") for v in data]
            flat = np.empty(len(items), dtype=object)
            flat[:] = items
            return flat.reshape(shape)
        return np.asarray(data, dtype=np.float64).reshape(shape)
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"not a tensor: {exc}") from None


# -- files --------------------------------------------------------------------------------
def capture_files(directory: str | Path) -> list[Path]:
    """Every capture file under ``directory``, oldest first (by time, then name)."""
    found = Path(directory).glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


class CaptureFiles:
    """One process's rotated capture files: ``capture-<pid>-<n>.jsonl``, at most
    ``max_files`` of them, each closed at the first record that would take it past
    ``max_bytes`` (a single larger record gets a file of its own)."""

    def __init__(self, directory: str | Path, *, max_bytes: int, max_files: int, pid: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.pid = pid
        self.directory.mkdir(parents=True, exist_ok=True)
        ours = self._ours()
        # A pid can come back (a restarted container): carry on after its last file.
        self._number = ours[-1][0] if ours else 0
        self._file: Any = None
        self._size = 0

    def _ours(self) -> list[tuple[int, Path]]:
        prefix = f"{FILE_PREFIX}{self.pid}-"
        numbered = []
        for path in self.directory.glob(f"{prefix}*{FILE_SUFFIX}"):
            number = path.name[len(prefix) : -len(FILE_SUFFIX)]
            if number.isdigit():
                numbered.append((int(number), path))
        return sorted(numbered)

    @property
    def path(self) -> Path | None:
        """The file being written, if one is open."""
        return Path(self._file.name) if self._file is not None else None

    def write(self, data: bytes) -> None:
        if self._file is None or (self._size and self._size + len(data) > self.max_bytes):
            self._next_file()
        self._file.write(data)
        self._size += len(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def _next_file(self) -> None:
        self.close()
        self._number += 1
        path = self.directory / f"{FILE_PREFIX}{self.pid}-{self._number:06d}{FILE_SUFFIX}"
        self._file = open(path, "ab")  # noqa: SIM115 - kept open across writes
        self._size = self._file.tell()
        for _, old in self._ours()[: -self.max_files]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# -- the worker's capture -------------------------------------------------------------------
class Capture:
    """One worker's capture: the sampler on the request path, the queue, the writer.

    :param on_written: called with the model of each record written (a metric).
    :param on_dropped: called with the model of each capture dropped (a full queue, or a
        record that could not be encoded or written).
    :param background: ``"greenlet"``, ``"thread"``, or ``None`` (default): a greenlet
        under gevent's monkey-patching, else a thread.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_written: Callable[[str], None] | None = None,
        on_dropped: Callable[[str], None] | None = None,
        background: str | None = None,
    ) -> None:
        self.sampled = Sampler(settings.capture)
        self.directory = Path(settings.capture_dir)
        self.max_bytes = settings.capture_max_bytes
        self.max_files = settings.capture_max_files
        self.redact = frozenset(settings.capture_redact)
        self.on_written = on_written or (lambda model: None)
        self.on_dropped = on_dropped or (lambda model: None)
        self.queue_size = settings.capture_queue
        self.background = background or ("greenlet" if gevent_patched() else "thread")
        self._queue: Any = None
        self._files: CaptureFiles | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Capture | None:
        """A capture when ``SCORE_CAPTURE`` captures anything, else ``None`` (free)."""
        capture = cls(settings, **kwargs)
        return capture if capture.sampled.captures_anything else None

    def submit(self, entry: Captured) -> bool:
        """Hand ``entry`` to the writer without waiting; ``False``: dropped (queue full)."""
        if self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            self.on_dropped(entry.model)
            return False
        return True

    def _start(self) -> None:
        """The queue and writer of this process (first capture, or first after a fork)."""
        self._pid = os.getpid()
        self._files = CaptureFiles(
            self.directory, max_bytes=self.max_bytes, max_files=self.max_files, pid=self._pid
        )
        if self.background == "greenlet":
            import gevent
            import gevent.queue

            self._queue = gevent.queue.Queue(self.queue_size)
            gevent.spawn(self._drain, self._queue)
        else:
            self._queue = queue.Queue(self.queue_size)
            threading.Thread(
                target=self._drain, args=(self._queue,), name="score-capture", daemon=True
            ).start()
        log.info(
            "capturing requests into %s (SCORE_CAPTURE: %s)",
            self._files.directory,
            ", ".join(f"{m}={r:g}" for m, r in self.sampled.rates.items())
            + (f", *={self.sampled.default:g}" if self.sampled.default else ""),
        )

    def _drain(self, pending: Any) -> None:
        """The writer: wait for a capture, take what else is queued (up to :data:`BATCH`),
        write, flush; again. A ``None`` ends it."""
        while True:
            first = pending.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(pending.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            self._write([entry for entry in batch if entry is not None])
            if stop:
                return
            if self.background == "greenlet":
                import gevent

                gevent.sleep(0)  # let the requests waiting behind this batch run

    def _write(self, batch: list[Captured]) -> None:
        with self._lock:
            files = self._files
            assert files is not None
            for entry in batch:
                try:
                    files.write(encode_record(entry, self.redact))
                except Exception:  # a capture must never end the writer
                    log.exception("capture of request %s not written", entry.request.id)
                    self.dropped += 1
                    self.on_dropped(entry.model)
                    continue
                self.written += 1
                self.on_written(entry.model)
            try:
                files.flush()
            except OSError:
                log.exception("capture files in %s cannot be written", files.directory)

    def close(self) -> None:
        """Write what is still queued, then close the file (a worker's exit)."""
        if self._queue is None or self._pid != os.getpid():
            return
        rest = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                rest.append(entry)
        if rest:
            self._write(rest)
        with contextlib.suppress(queue.Full):  # just drained, but a request may have won
            self._queue.put_nowait(None)
        with self._lock:
            if self._files is not None:
                self._files.close()
