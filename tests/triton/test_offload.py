"""CPU-heavy processor stages in a thread pool (``SCORE_OFFLOAD``, ``offload = True``).

Units of :class:`~triton_score.scoring.offload.Offloader` (which stages go, the context goes along,
errors come back), then the real stack: one Gunicorn gevent worker in front of the session's
Triton, with a processor that burns CPU in pure Python. Offloaded, the worker still answers
its probes and other requests at once; with ``SCORE_OFFLOAD=off`` the same probe waits for
the burn, which shows the test can fail.
"""

from __future__ import annotations

import contextvars
import json
import statistics
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import ScoreServer
from helpers import held_out_digits

from triton_score.local import LocalTriton
from triton_score.processors import Processor as LoadedProcessor
from triton_score.processors import ProcessorDefinitionError, processor
from triton_score.scoring.offload import Offloader
from triton_score.settings import Settings


# -- units --------------------------------------------------------------------------------
class _Heavy:
    offload = True

    def preprocess(self, request, model):
        return {}

    def outputs(self, request, model):
        return None


class _Light:
    outputs = {"y": 0}

    def preprocess(self, request, model):
        return {}


def test_which_stages_are_offloaded() -> None:
    heavy, light, default = (
        LoadedProcessor(_Heavy()),
        LoadedProcessor(_Light()),
        LoadedProcessor(None),
    )
    auto = Offloader("auto", active=True)
    assert auto.wanted(heavy, "preprocess") and auto.wanted(heavy, "postprocess")
    assert auto.wanted(heavy, "outputs")  # a method: it may compute
    assert not auto.wanted(heavy, "predict")  # never: predict() calls Triton
    assert not auto.wanted(light, "preprocess") and not auto.wanted(default, "postprocess")
    on = Offloader("on", active=True)
    assert on.wanted(light, "preprocess") and on.wanted(default, "postprocess")
    assert not on.wanted(light, "outputs")  # a constant: nothing to compute
    assert not on.wanted(heavy, "predict")
    assert not Offloader("off", active=True).wanted(heavy, "preprocess")
    # Outside gevent (Flask in-process, azmlinfsrv's sync workers): inline, whatever is said.
    assert not Offloader("on").wanted(heavy, "preprocess")


def test_offload_must_be_a_bool_and_settings_read_it() -> None:
    with pytest.raises(ProcessorDefinitionError, match="offload must be True or False"):
        processor("m")(type("Bad", (), {"offload": "yes", "preprocess": lambda s, r, m: {}}))
    settings = Settings.from_env({"SCORE_OFFLOAD": " ON ", "SCORE_OFFLOAD_THREADS": "2"})
    assert (settings.offload, settings.offload_threads) == ("on", 2)
    assert (Settings().offload, Settings().offload_threads) == ("auto", 4)
    with pytest.raises(ValueError, match="SCORE_OFFLOAD="):
        Settings.from_env({"SCORE_OFFLOAD": "sometimes"})
    with pytest.raises(ValueError, match="SCORE_OFFLOAD_THREADS"):
        Settings.from_env({"SCORE_OFFLOAD_THREADS": "0"})


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def test_a_stage_runs_in_another_thread_with_the_callers_context() -> None:
    offloader = Offloader("on", threads=2, active=True)
    try:
        REQUEST_ID.set("req-7")
        seen = offloader.run(lambda x: (threading.get_ident(), REQUEST_ID.get(), x * 2), 21)
        assert seen[0] != threading.get_ident()
        assert seen[1:] == ("req-7", 42)

        def broken() -> None:
            raise KeyError("lost")

        with pytest.raises(KeyError, match="lost"):
            offloader.run(broken)
    finally:
        offloader.close()


# -- the real stack ---------------------------------------------------------------------
BURNING_PROCESSOR = '''
import logging
import time

import numpy as np

from triton_score import BadRequest, processor

log = logging.getLogger("triton_score.burner")


@processor("digits_onnx")
class Burner:
    """Burns CPU in pure Python for as long as the request says, in a thread when offloaded."""

    offload = True

    def preprocess(self, request, model):
        payload = request.json
        if payload.get("fail"):
            raise RuntimeError("the burner broke")
        if payload.get("bad"):
            raise BadRequest("the burner wants an image")
        log.warning("burning for %s s", payload.get("burn", 0))
        print("printed from the burner")
        deadline = time.perf_counter() + float(payload.get("burn", 0))
        spins = 0
        while time.perf_counter() < deadline:
            spins += 1
        return {"image": np.asarray(payload["image"], dtype=np.float32).reshape(1, 8, 8)}
'''
QUESTION = {"context": "It was completed in 1889.", "question": "When was it completed?"}


def _start(triton: LocalTriton, processors: Path, offload: str) -> ScoreServer:
    return ScoreServer(
        "--triton-url",
        triton.url,
        "--workers",
        "1",
        "--processors",
        str(processors),
        env={"SCORE_OFFLOAD": offload, "SCORE_LOG_FORMAT": "json"},
    )


@pytest.fixture(scope="module")
def servers(triton: LocalTriton, tmp_path_factory: pytest.TempPathFactory):
    """Two servers with the burner, one offloading (``auto``), one not (``off``)."""
    processors = tmp_path_factory.mktemp("offload") / "burning_processors.py"
    processors.write_text(BURNING_PROCESSOR)
    started = {mode: _start(triton, processors, mode) for mode in ("auto", "off")}
    try:
        yield {mode: server.wait_ready() for mode, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def _post(server: ScoreServer, path: str, body: dict, request_id: str = "") -> requests.Response:
    headers = {"content-type": "application/json"}
    if request_id:
        headers["x-request-id"] = request_id
    return requests.post(server.url + path, data=json.dumps(body), headers=headers, timeout=30)


def _burn(server: ScoreServer, seconds: float, request_id: str = "") -> requests.Response:
    body = {"image": held_out_digits()[0][0].tolist(), "burn": seconds}
    return _post(server, "/score/digits_onnx", body, request_id)


def _while_burning(
    server: ScoreServer,
    probe,
    times: int = 3,
) -> tuple[list[float], requests.Response]:
    """Seconds ``probe()`` took, ``times`` times, while a 1.5 s burn runs; and the burn's
    answer. (Under a pure-Python burn every hand-over of the GIL may wait its 5 ms switch
    interval, so a request with many of them takes tens of ms: the median tells.)"""
    assert _burn(server, 0).status_code == 200  # warm: pool, connections
    assert _post(server, "/score/qa_lexical", QUESTION).status_code == 200
    burnt: list[requests.Response] = []
    burner = threading.Thread(target=lambda: burnt.append(_burn(server, 1.5)))
    burner.start()
    time.sleep(0.3)  # the burn has begun
    took = []
    for _ in range(times):
        began = time.monotonic()
        probe()
        took.append(time.monotonic() - began)
    burner.join(timeout=30)
    return took, burnt[0]


def test_an_offloaded_burn_does_not_stall_probes(servers) -> None:
    server = servers["auto"]

    def live() -> None:
        assert requests.get(server.url + "/v2/health/live", timeout=10).status_code == 200

    took, burnt = _while_burning(server, live)
    assert burnt.status_code == 200, burnt.text
    assert statistics.median(took) < 0.3, took


def test_an_offloaded_burn_does_not_stall_other_models(servers) -> None:
    server = servers["auto"]

    def question() -> None:
        answer = _post(server, "/score/qa_lexical", QUESTION)
        assert answer.status_code == 200 and answer.json()["answer"] == "1889", answer.text

    took, burnt = _while_burning(server, question, times=5)
    assert burnt.status_code == 200, burnt.text
    # Inline, a question would wait out the burn (1.2 s of it left); offloaded, it answers
    # in tens to a few hundred ms: its own offloaded tokenizing takes turns on the GIL with
    # the burn, 5 ms a turn, and 0.3 s was seen on a busy CI machine.
    assert statistics.median(took) < 0.6, took


def test_inline_the_same_burn_stalls_the_probe(servers) -> None:
    server = servers["off"]
    began = time.monotonic()

    def live() -> None:
        requests.get(server.url + "/v2/health/live", timeout=10)

    took, burnt = _while_burning(server, live)
    assert burnt.status_code == 200, burnt.text
    assert took[0] >= 1.0, took  # waited for the burn (1.5 s, begun 0.3 s before)
    assert time.monotonic() - began >= 1.5


def _json_lines(server: ScoreServer) -> list[dict]:
    lines = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def test_log_lines_and_prints_of_an_offloaded_stage_carry_the_request_id(servers) -> None:
    server = servers["auto"]
    assert _burn(server, 0.01, request_id="burn-id-1").status_code == 200
    time.sleep(0.3)  # the log is written by the worker, flushed line by line
    mine = [line for line in _json_lines(server) if line.get("request_id") == "burn-id-1"]
    messages = {line["message"] for line in mine}
    assert "burning for 0.01 s" in messages, mine
    assert "printed from the burner" in messages, mine


def test_a_failing_offloaded_stage_is_a_clean_500_naming_the_processor(servers) -> None:
    server = servers["auto"]
    failed = _post(server, "/score/digits_onnx", {"fail": True}, request_id="burn-fail-1")
    assert failed.status_code == 500
    body = failed.json()
    assert body["code"] == "processor_error"
    assert "preprocess failed in processor Burner" in body["error"]
    assert body["request_id"] == "burn-fail-1"
    assert "the burner broke" not in failed.text and "Traceback" not in failed.text
    bad = _post(server, "/score/digits_onnx", {"bad": True})
    assert bad.status_code == 400 and bad.json()["error"] == "the burner wants an image"
    time.sleep(0.3)
    logged = [line for line in _json_lines(server) if line.get("request_id") == "burn-fail-1"]
    assert any("the burner broke" in line.get("exception", "") for line in logged), logged
    assert _burn(server, 0).status_code == 200  # and the worker goes on
