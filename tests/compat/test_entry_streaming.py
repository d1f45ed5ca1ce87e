"""An entry script whose ``AMLResponse`` body is a generator keeps streaming under ``score
serve --entry-script``: each part reaches the client when the script yields it, not when the
last one is done."""

from __future__ import annotations

import json
import time

import requests
from conftest import ROOT, ScoreServer

SCRIPT = ROOT / "tests" / "fixtures" / "streaming_score.py"


def test_an_entry_scripts_generator_answer_streams() -> None:
    server = ScoreServer("--entry-script", str(SCRIPT), "--triton-url", "localhost:9")
    try:
        server.wait_ready()
        response = requests.post(
            f"{server.url}/score?parts=6&pause_ms=200", data=b"{}", stream=True, timeout=30
        )
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        arrived = []
        for line in response.iter_lines():
            if line.startswith(b"data: "):
                sent = json.loads(line[6:])["at"]
                arrived.append(time.time() - sent)
        assert len(arrived) == 6
        # Each part arrives right after the script yields it: had the answer been buffered,
        # the first part would have waited ~1 s for the last.
        assert max(arrived) < 0.5, arrived
    finally:
        server.stop()
