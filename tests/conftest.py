"""Shared fixtures: one real Triton per test session, free ports, tiny model builders."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from score.local import LocalTriton

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "models" / "triton"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_triton(repository: Path, **kwargs: object) -> LocalTriton:
    triton = LocalTriton(
        repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        progress=print,
        **kwargs,  # type: ignore[arg-type]
    )
    return triton.start(timeout=120)


@pytest.fixture(scope="session")
def triton() -> Iterator[LocalTriton]:
    """The example model repository served by a real tritonserver for the whole session."""
    server = start_triton(EXAMPLES)
    try:
        yield server
    finally:
        server.stop()
