"""tiny_lm: a word-level bigram "language model" -- a TOY, not a neural model.

A Triton python-backend stand-in for a model served by Triton's vLLM backend, with exactly its
interface, so that a real vLLM model can replace it without changing clients or processors:

    inputs   text_input BYTES [1]                the prompt
             stream BOOL [1] (optional)          one response per word, else one response
             sampling_parameters BYTES [1] (opt.) JSON: max_tokens (16), temperature (1.0),
                                                 top_p (1.0), seed (0), stop (string or list)
             exclude_input_in_output BOOL [1] (opt.)  not streaming: answer without the prompt
    output   text_output BYTES [-1]

The model is *decoupled* (``model_transaction_policy { decoupled: true }``): ``execute``
queues each request and returns at once; one scheduler thread advances every generation in
flight by a word per step, as vLLM's engine steps its running batch, and sends each one's
responses through its request's response sender, the last one flagged final. So one model
instance serves many streams at a time. One thread, not one per request: the python
backend's calls (``send``, ``is_cancelled``, metrics) made from many threads at once
crashed Triton's backend process under 16 concurrent streams.

What it knows: which word follows which in the English text of the Python standard library's
``pydoc_data.topics`` (the help pages, ~65,000 words), read when the model loads (nothing is
downloaded or built). Words are what ``\\w+|[^\\w\\s]+`` matches, the pre-tokenization of the
word-level tokenizer ``models/build_tiny_lm.py`` writes beside this folder, so each generated
word is one token of that tokenizer. Each word is sent as ``" " + word``.

Generation: start from the prompt's last word (or ``the``), then repeatedly pick a successor
of the previous word. ``temperature`` 0 takes the most frequent one; otherwise counts are
raised to ``1 / temperature``, cut to the ``top_p`` nucleus, and drawn with
``random.Random(seed)``: the same prompt and parameters give the same text. It stops after
``max_tokens`` words, or when the text contains a ``stop`` string (which is not sent; text
that might begin a stop string is held back until it cannot), or when the request is
cancelled (Triton's gRPC endpoint cancels a request whose client went away).

Each step sleeps ``step_delay_ms`` (the config's parameter) first, once for all the
generations in flight, so a stream is slow enough to watch. Steps and cancellations are
counted in Triton's own metrics endpoint, as ``tiny_lm_steps_total`` and
``tiny_lm_cancelled_total``: a test sees a cancelled stream stop.
"""

from __future__ import annotations

import bisect
import json
import queue
import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

try:  # only available inside the Triton python backend stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # plain-Python tests import this file for TinyLM and Sampling
    pb_utils = None

WORD_RE = re.compile(r"\w+|[^\w\s]+")
START_WORD = "the"
#: Limits a client cannot exceed (the request is answered with an error).
MAX_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS = 8


class SamplingError(ValueError):
    """The sampling parameters cannot be used; the message says which one and why."""


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters this model honours (a subset of vLLM's)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, text: str) -> Sampling:
        """Read vLLM-style ``sampling_parameters`` JSON; unknown keys are ignored, as vLLM's
        backend passes them on to an engine that may know them."""
        if not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise SamplingError(f"sampling_parameters is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SamplingError("sampling_parameters must be a JSON object")
        values: dict[str, object] = {}
        # vLLM's backend sends numbers as JSON numbers or as strings: accept both.
        for name, kind in (("max_tokens", int), ("temperature", float), ("top_p", float)):
            if raw.get(name) is not None:
                try:
                    values[name] = kind(raw[name])
                except (TypeError, ValueError):
                    raise SamplingError(f"{name} must be a number") from None
        if raw.get("seed") is not None:
            try:
                values["seed"] = int(raw["seed"])
            except (TypeError, ValueError):
                raise SamplingError("seed must be an integer") from None
        stop = raw.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None:
            if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
                raise SamplingError("stop must be a non-empty string or a list of them")
            if len(stop) > MAX_STOP_STRINGS:
                raise SamplingError(f"stop takes at most {MAX_STOP_STRINGS} strings")
            values["stop"] = tuple(stop)
        sampling = cls(**values)  # type: ignore[arg-type]
        if not 1 <= sampling.max_tokens <= MAX_TOKENS_LIMIT:
            raise SamplingError(f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}")
        if not 0.0 <= sampling.temperature <= 10.0:
            raise SamplingError("temperature must be between 0 and 10")
        if not 0.0 < sampling.top_p <= 1.0:
            raise SamplingError("top_p must be above 0 and at most 1")
        return sampling


@dataclass
class _Successors:
    """The words seen after one word, most frequent first, with their counts."""

    words: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


class TinyLM:
    """The bigram table and its sampler (pure Python: the tests use it without Triton)."""

    def __init__(self, text: str) -> None:
        words = WORD_RE.findall(text)
        pairs: dict[str, Counter[str]] = defaultdict(Counter)
        for before, after in zip(words, words[1:]):
            pairs[before][after] += 1
        self._table: dict[str, _Successors] = {}
        for word, counter in pairs.items():
            # Most frequent first; ties in first-seen order (Counter keeps insertion order).
            ranked = sorted(counter.items(), key=lambda item: -item[1])
            self._table[word] = _Successors([w for w, _ in ranked], [c for _, c in ranked])

    @classmethod
    def from_stdlib(cls) -> TinyLM:
        from pydoc_data.topics import topics

        return cls("\n".join(topics[key] for key in sorted(topics)))

    def start(self, prompt: str) -> str:
        words = WORD_RE.findall(prompt)
        return words[-1] if words and words[-1] in self._table else START_WORD

    def next_word(self, previous: str, sampling: Sampling, rng: random.Random) -> str:
        successors = self._table.get(previous) or self._table[START_WORD]
        if sampling.temperature == 0.0:
            return successors.words[0]
        weights = [count ** (1.0 / sampling.temperature) for count in successors.counts]
        total = sum(weights)
        kept, mass = 0, 0.0
        for weight in weights:  # the nucleus: the most likely words holding top_p of the mass
            kept += 1
            mass += weight
            if mass >= sampling.top_p * total:
                break
        cumulative: list[float] = []
        running = 0.0
        for weight in weights[:kept]:
            running += weight
            cumulative.append(running)
        return successors.words[bisect.bisect_left(cumulative, rng.random() * running)]

    def words(self, prompt: str, sampling: Sampling):
        """Every word the model would generate, without limit (the caller stops it)."""
        rng = random.Random(sampling.seed)
        word = self.start(prompt)
        while True:
            word = self.next_word(word, sampling, rng)
            yield word


class StopWatch:
    """Text as it may be sent, given stop strings: what could still begin one is held back."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = stop
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, piece: str) -> str:
        """Add generated text; return what may be sent now ("" once a stop string matched)."""
        if self.stopped:
            return ""
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.text = self.text[:cut]
            return self.flush()
        hold = 0
        for stop in self._stop:  # the longest tail of the text that begins a stop string
            for length in range(min(len(stop) - 1, len(self.text)), hold, -1):
                if self.text.endswith(stop[:length]):
                    hold = length
                    break
        ready = self.text[self.sent : len(self.text) - hold]
        self.sent += len(ready)
        return ready

    def flush(self) -> str:
        rest = self.text[self.sent :]
        self.sent = len(self.text)
        return rest


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    return values[0] if values.size else None


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        delay = config.get("parameters", {}).get("step_delay_ms", {}).get("string_value", "20")
        self.step_delay_s = float(delay) / 1000.0
        self.lm = TinyLM.from_stdlib()
        self.closing = threading.Event()
        self.arrived: queue.SimpleQueue = queue.SimpleQueue()
        self.steps = self.cancelled = None
        if hasattr(pb_utils, "MetricFamily"):  # custom metrics: Triton 23.05 and later
            steps = pb_utils.MetricFamily(
                name="tiny_lm_steps_total",
                description="Words tiny_lm generated (one per step)",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            cancelled = pb_utils.MetricFamily(
                name="tiny_lm_cancelled_total",
                description="tiny_lm requests stopped because they were cancelled",
                kind=pb_utils.MetricFamily.COUNTER,
            )
            labels = {"model": args["model_name"]}
            self.families = (steps, cancelled)
            self.steps = steps.Metric(labels=labels)
            self.cancelled = cancelled.Metric(labels=labels)
        self.scheduler = threading.Thread(target=self._schedule, name="tiny_lm", daemon=True)
        self.scheduler.start()

    def execute(self, requests):
        for request in requests:
            self.arrived.put(request)
        return None  # decoupled: the responses go through each request's sender

    def _schedule(self):
        """The one thread that talks to the backend: take the requests that arrived, then
        advance every generation in flight by one step, until the model is unloaded."""
        running = []
        while not self.closing.is_set():
            try:  # idle: wait for a request; busy: only take what is there
                request = self.arrived.get(timeout=0.1 if not running else 0)
            except queue.Empty:
                request = None
            while request is not None:
                generation = self._generate(request)
                if next(generation, StopIteration) is not StopIteration:
                    running.append(generation)
                try:
                    request = self.arrived.get_nowait()
                except queue.Empty:
                    request = None
            if not running:
                continue
            time.sleep(self.step_delay_s)
            running = [g for g in running if next(g, StopIteration) is not StopIteration]
        for generation in running:  # unloading: each one ends (cancelled) at its next step
            next(generation, None)

    def _generate(self, request):
        """One request's generation, a step per ``next()``: it yields after reading the
        request and after each word, and returns when its final response is sent."""
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            prompt = _text(_scalar(request, "text_input"))
            stream = bool(_scalar(request, "stream") or False)
            exclude = bool(_scalar(request, "exclude_input_in_output") or False)
            try:
                sampling = Sampling.from_json(_text(_scalar(request, "sampling_parameters")))
            except SamplingError as exc:
                error = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                sender.send(error, flags=final)
                return
            watch = StopWatch(sampling.stop)
            answer = []
            for step, word in enumerate(self.lm.words(prompt, sampling)):
                if step >= sampling.max_tokens or watch.stopped:
                    break
                yield  # the scheduler's step delay
                if self.closing.is_set() or request.is_cancelled():
                    if self.cancelled is not None:
                        self.cancelled.increment(1)
                    sender.send(flags=final)
                    return
                if self.steps is not None:
                    self.steps.increment(1)
                ready = watch.add(" " + word)
                if stream and ready:
                    sender.send(self._response(ready))
                elif ready:
                    answer.append(ready)
            rest = watch.flush()
            if stream:
                if rest:
                    sender.send(self._response(rest))
                sender.send(flags=final)
            else:
                text = "".join(answer) + rest
                sender.send(self._response(text if exclude else prompt + text), flags=final)
        except Exception as exc:  # noqa: BLE001 -- an answer, never a stream left open
            error = pb_utils.InferenceResponse(error=pb_utils.TritonError(repr(exc)))
            sender.send(error, flags=final)

    @staticmethod
    def _response(text: str):
        output = pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))
        return pb_utils.InferenceResponse(output_tensors=[output])

    def finalize(self):
        self.closing.set()
        self.scheduler.join(timeout=5)
