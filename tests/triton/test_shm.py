"""Large inputs through Triton's system shared memory (triton_score.triton.shm).

First the pieces that need no server (the slot allocator, when shared memory is used, the
settings), then the gateway against a real tritonserver serving ``shm_scale`` (y = x * scale,
tests/fixtures/shm_repo): answers through the region equal the HTTP path's exactly, the region
is registered and removed, a full region and a region Triton forgot fall back to HTTP. Last a
real ``score serve`` (Gunicorn, gevent worker): a request registers the worker's region, and
when the worker is killed with SIGKILL the master unlinks and unregisters it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import numpy as np
import pytest
import requests
from conftest import ScoreServer
from helpers import ROOT, load_file

from triton_score.codecs.request import decode_request
from triton_score.local import LocalTriton
from triton_score.processors import ProcessorRegistry
from triton_score.runtime import build_runtime
from triton_score.settings import Settings
from triton_score.testing import TritonServers
from triton_score.triton.gateway import TritonGateway
from triton_score.triton.shm import (
    ALIGNMENT,
    OUTCOME_FULL,
    OUTCOME_SHM,
    OUTCOME_UNAVAILABLE,
    PREFIX,
    SHM_DIR,
    Allocator,
    SharedMemoryPool,
    cleanup_dead_worker,
    region_name,
    regions_of,
    registered_regions,
    shm_disabled_reason,
)

REPOSITORY = Path(__file__).parent.parent / "fixtures" / "shm_repo"
MODEL = "shm_scale"
IMAGE = 3 * 224 * 224  # floats in one 3x224x224 FP32 image: 602,112 bytes


def image_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, IMAGE), dtype=np.float32)


def scales(rows: int, value: float = 2.5) -> np.ndarray:
    return np.full((rows, 1), value, dtype=np.float32)


# -- no server -------------------------------------------------------------------------------
def test_allocator_first_fit_aligned_and_merged() -> None:
    allocator = Allocator(1024, alignment=64)
    a = allocator.allocate(100)  # 128 bytes
    b = allocator.allocate(64)
    c = allocator.allocate(1)  # one aligned block all the same
    assert (a, b, c) == (0, 128, 192)
    assert allocator.bytes_in_use == 256
    allocator.free(b)
    # First fit: the hole b left is reused by what fits in it, a larger slot goes after c.
    assert allocator.allocate(300) == 256
    assert allocator.allocate(64) == 128
    assert allocator.allocate(1024) is None  # no room: the caller sends it by HTTP
    for offset in (a, 128, c, 256):
        allocator.free(offset)
    assert allocator.bytes_in_use == 0
    # Every hole merged back: the whole region is one block again.
    assert allocator.allocate(1024) == 0


def test_allocator_offsets_stay_aligned_and_disjoint() -> None:
    rng = np.random.default_rng(0)
    allocator = Allocator(1 << 16)
    held: dict[int, int] = {}
    for _ in range(2000):
        if held and rng.random() < 0.5:
            offset = list(held)[rng.integers(len(held))]
            allocator.free(offset)
            del held[offset]
        else:
            size = int(rng.integers(1, 4096))
            offset = allocator.allocate(size)
            if offset is not None:
                assert offset % ALIGNMENT == 0 and offset + size <= 1 << 16
                held[offset] = size
        spans = sorted(held.items())
        assert all(o1 + s1 <= o2 for (o1, s1), (o2, _) in zip(spans, spans[1:], strict=False))


def test_shared_memory_only_for_a_triton_on_this_host() -> None:
    assert shm_disabled_reason("auto", "localhost:8000") == ""
    assert shm_disabled_reason("auto", "127.0.0.1:8000") == ""
    assert shm_disabled_reason("auto", "http://[::1]:8000") == ""
    assert "not this machine" in shm_disabled_reason("auto", "triton.internal:8000")
    assert shm_disabled_reason("on", "triton.internal:8000") == ""
    assert shm_disabled_reason("off", "localhost:8000") == "SCORE_SHM=off"


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {"SCORE_SHM": " OFF ", "SCORE_SHM_BYTES": "1048576", "SCORE_SHM_MIN_BYTES": "4096"}
    )
    assert (settings.shm, settings.shm_bytes, settings.shm_min_bytes) == ("off", 1 << 20, 4096)
    defaults = Settings.from_env({})
    assert (defaults.shm, defaults.shm_bytes, defaults.shm_min_bytes) == (
        "auto",
        16 << 20,
        64 << 10,
    )
    with pytest.raises(ValueError, match="SCORE_SHM='sometimes'"):
        Settings.from_env({"SCORE_SHM": "sometimes"})
    with pytest.raises(ValueError, match="SCORE_SHM_BYTES"):
        Settings.from_env({"SCORE_SHM_BYTES": "16M"})


class Refused(Exception):
    """What tritonclient raises when Triton answers with an error: it has a status."""

    def status(self) -> str:
        return "400"


def test_a_refused_registration_falls_back_and_leaves_no_file() -> None:
    outcomes: list[str] = []

    def refuse(name: str, key: str, byte_size: int) -> None:
        raise Refused("failed to open shared memory region")

    pool = SharedMemoryPool(
        1 << 20, 1024, register=refuse, unregister=lambda name: None, on_tensor=outcomes.append
    )
    inputs = {"x": np.ones((1, 1024), np.float32), "scale": scales(1)}
    with pool.lease(inputs) as placed:
        assert placed == {}
    assert outcomes == [OUTCOME_UNAVAILABLE]
    # Triton will refuse again: no more tries, and the region file is gone.
    assert "failed to open" in pool.broken and not pool.wants(inputs)
    assert regions_of(os.getpid()) == []


def test_an_unreachable_triton_is_asked_again_later() -> None:
    calls: list[str] = []

    def register(name: str, key: str, byte_size: int) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ConnectionRefusedError(111, "Connection refused")

    outcomes: list[str] = []
    pool = SharedMemoryPool(
        1 << 20, 1024, register=register, unregister=lambda name: None, on_tensor=outcomes.append
    )
    inputs = {"x": np.ones((1, 1024), np.float32)}
    try:
        for _ in range(2):
            with pool.lease(inputs):
                pass
        assert outcomes == [OUTCOME_UNAVAILABLE, OUTCOME_SHM]
        assert calls == ["/" + pool.name] * 2 and not pool.broken
        assert pool.name in regions_of(os.getpid())
    finally:
        pool.close()
    assert pool.name == "" and regions_of(os.getpid()) == []


def _pool() -> SharedMemoryPool:
    return SharedMemoryPool(1 << 20, 1024, register=lambda *a: None, unregister=lambda n: None)


def test_region_names_carry_a_random_token_of_this_server(monkeypatch) -> None:
    """Triton looks region names up among every registered region: a name a client could
    guess (the old ``triton_score_shm_<pid>``) lets it read others' tensors, and a pid alone
    repeats across containers sharing /dev/shm. Two servers: two tokens, two names."""
    from triton_score.triton import shm

    ours = region_name(1234)
    assert ours.startswith(f"{PREFIX}1234_") and ours != f"{PREFIX}1234"
    token = ours.removeprefix(f"{PREFIX}1234_")
    assert len(token) == 16 and int(token, 16) >= 0 and str(1234) not in token
    assert region_name(1234) == ours  # the same server: the same name
    monkeypatch.setattr(shm, "_token", "")  # another server (another master's token)
    assert region_name(1234) != ours


def test_a_pool_never_removes_a_file_it_did_not_create(monkeypatch) -> None:
    """Another server's region under the name we would take (its token equal to ours, as
    unlikely as it is): the pool does not unlink it, it goes by HTTP."""
    from triton_score.triton import shm

    pool = _pool()
    name = region_name(os.getpid(), shm._regions_created.get(os.getpid(), 0))
    theirs = SHM_DIR / name
    theirs.write_bytes(b"another server's tensors")
    outcomes: list[str] = []
    pool._on_tensor = outcomes.append  # type: ignore[attr-defined]
    try:
        with pool.lease({"x": np.ones((1, 1024), np.float32)}) as placed:
            assert placed == {}
        assert theirs.read_bytes() == b"another server's tensors"
        assert pool.broken
    finally:
        pool.close()
        theirs.unlink(missing_ok=True)


def test_a_freed_slot_is_zeroed() -> None:
    pool = _pool()
    try:
        with pool.lease({"x": np.full((1, 1024), 7.0, np.float32)}) as placed:
            where = placed["x"]
            assert pool._map is not None  # type: ignore[attr-defined]
            region = np.frombuffer(pool._map, np.float32, 1024, where.offset)  # type: ignore[attr-defined]
            assert (region == 7.0).all()
            del region
        left = np.frombuffer(pool._map, np.uint8, where.byte_size, where.offset)  # type: ignore[attr-defined]
        assert not left.any(), "the tensor is still in the region after its request"
        del left
    finally:
        pool.close()


# -- the gateway against a real Triton --------------------------------------------------------
@pytest.fixture(scope="module")
def shm_triton(triton_score_servers: TritonServers) -> LocalTriton:
    return triton_score_servers.get(REPOSITORY)


@pytest.fixture
def gateway_factory(shm_triton: LocalTriton) -> Callable[..., TritonGateway]:
    made: list[TritonGateway] = []

    def make(**kwargs: object) -> TritonGateway:
        gateway = TritonGateway(shm_triton.url, timeout_s=30, **kwargs)  # type: ignore[arg-type]
        made.append(gateway)
        return gateway

    yield make  # type: ignore[misc]
    for gateway in made:
        gateway.close()


@pytest.mark.parametrize("rows", [1, 8])
def test_shared_memory_answers_equal_http(
    shm_triton: LocalTriton, gateway_factory: Callable[..., TritonGateway], rows: int
) -> None:
    outcomes: list[str] = []
    shm = gateway_factory(shm_bytes=16 << 20, on_shm_tensor=outcomes.append)
    http = gateway_factory()
    model = http.model_info(MODEL)
    x, scale = image_rows(rows, seed=rows), scales(rows)

    through_shm = shm.infer(model, {"x": x, "scale": scale})
    # The large input went by the region, the one-float scale in the body.
    assert outcomes == [OUTCOME_SHM]
    name = shm._shm.name  # type: ignore[union-attr]
    assert name.startswith(region_name()) and (SHM_DIR / name).exists()
    assert name in registered_regions(shm_triton.url)

    through_http = http.infer(model, {"x": x, "scale": scale})
    np.testing.assert_array_equal(through_shm["y"], through_http["y"])
    np.testing.assert_array_equal(through_shm["y"], x * np.float32(2.5))
    assert shm._shm.bytes_in_use == 0  # type: ignore[union-attr]

    shm.close()
    assert not (SHM_DIR / name).exists()
    assert name not in registered_regions(shm_triton.url)


def test_requests_in_flight_share_the_region_and_overflow_to_http(
    gateway_factory: Callable[..., TritonGateway],
) -> None:
    """Sixteen greenlets at once, room for three images: every answer is its own request's."""
    outcomes: list[str] = []
    gateway = gateway_factory(shm_bytes=3 * IMAGE * 4, on_shm_tensor=outcomes.append)
    model = gateway.model_info(MODEL)
    xs = [image_rows(1, seed=100 + i) for i in range(16)]
    gateway.infer(model, {"x": xs[0], "scale": scales(1)})  # creates and registers the region
    assert outcomes == [OUTCOME_SHM]
    outcomes.clear()

    def one(i: int) -> np.ndarray:
        return gateway.infer(model, {"x": xs[i], "scale": scales(1, float(i))})["y"]

    jobs = [gevent.spawn(one, i) for i in range(16)]
    gevent.joinall(jobs, raise_error=True)
    for i, job in enumerate(jobs):
        np.testing.assert_array_equal(job.value, xs[i] * np.float32(i))
    # How many found room depends on how the greenlets interleave; each went one way.
    assert len(outcomes) == 16 and set(outcomes) <= {OUTCOME_SHM, OUTCOME_FULL}
    assert OUTCOME_SHM in outcomes
    assert gateway._shm.bytes_in_use == 0  # type: ignore[union-attr]

    # While other requests hold all the room, a request goes by HTTP, and answers the same.
    outcomes.clear()
    pool = gateway._shm
    assert pool is not None
    with pool.lease({f"held{i}": xs[i] for i in range(3)}) as held:
        assert len(held) == 3 and outcomes == [OUTCOME_SHM] * 3
        answer = one(5)
        assert outcomes[3:] == [OUTCOME_FULL]
    np.testing.assert_array_equal(answer, xs[5] * np.float32(5))
    assert pool.bytes_in_use == 0


def test_tiny_region_from_settings_falls_back_to_http(shm_triton: LocalTriton) -> None:
    settings = Settings.from_env(
        {"TRITON_URL": shm_triton.url, "SCORE_SHM_BYTES": "4096", "SCORE_SHM_MIN_BYTES": "1024"}
    )
    runtime = build_runtime(settings, registry=ProcessorRegistry())
    try:
        model = runtime.gateway.model_info(MODEL)
        x = image_rows(2, seed=7)
        answer = runtime.gateway.infer(model, {"x": x, "scale": scales(2)})
        np.testing.assert_array_equal(answer["y"], x * np.float32(2.5))
        small = np.arange(512, dtype=np.float32).reshape(1, 512)  # 2 KiB: fits
        answer = runtime.gateway.infer(model, {"x": small, "scale": scales(1)})
        np.testing.assert_array_equal(answer["y"], small * np.float32(2.5))
        text = runtime.metrics.render()[0].decode()
        assert 'score_shm_tensors_total{outcome="full"} 1.0' in text
        assert 'score_shm_tensors_total{outcome="shm"} 1.0' in text
    finally:
        runtime.close()


def test_remote_triton_gets_no_region(
    shm_triton: LocalTriton, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Triton on another host cannot map our /dev/shm: no region, inference by HTTP."""
    monkeypatch.setattr("triton_score.triton.shm.is_local_address", lambda host: False)
    before = set(regions_of(os.getpid()))
    runtime = build_runtime(Settings(triton_url=shm_triton.url), registry=ProcessorRegistry())
    try:
        assert runtime.gateway._shm is None
        model = runtime.gateway.model_info(MODEL)
        x = image_rows(1, seed=3)
        answer = runtime.gateway.infer(model, {"x": x, "scale": scales(1)})
        np.testing.assert_array_equal(answer["y"], x * np.float32(2.5))
        assert set(regions_of(os.getpid())) == before
        assert "score_shm_tensors_total{" not in runtime.metrics.render()[0].decode()
    finally:
        runtime.close()


def test_a_region_triton_forgot_is_registered_again(
    shm_triton: LocalTriton, gateway_factory: Callable[..., TritonGateway]
) -> None:
    """Triton restarted (here: unregistered behind our back): that request goes by HTTP, the
    next one registers the region again."""
    outcomes: list[str] = []
    gateway = gateway_factory(shm_bytes=4 << 20, on_shm_tensor=outcomes.append)
    model = gateway.model_info(MODEL)
    x = image_rows(1, seed=11)
    gateway.infer(model, {"x": x, "scale": scales(1)})
    name = gateway._shm.name  # type: ignore[union-attr]
    requests.post(
        f"http://{shm_triton.url}/v2/systemsharedmemory/region/{name}/unregister", timeout=5
    ).raise_for_status()
    assert name not in registered_regions(shm_triton.url)

    answer = gateway.infer(model, {"x": x, "scale": scales(1, 3.0)})
    np.testing.assert_array_equal(answer["y"], x * np.float32(3.0))
    answer = gateway.infer(model, {"x": x, "scale": scales(1, 4.0)})
    np.testing.assert_array_equal(answer["y"], x * np.float32(4.0))
    assert name in registered_regions(shm_triton.url)
    assert outcomes == [OUTCOME_SHM] * 3


# -- a real score serve ----------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def our_regions(triton_url: str) -> set[str]:
    return {n for n in registered_regions(triton_url) if n.startswith(PREFIX)}


def test_score_serve_registers_and_the_master_cleans_a_killed_worker(
    shm_triton: LocalTriton,
) -> None:
    server = ScoreServer(
        "--triton-url",
        shm_triton.url,
        "--processors",
        "none",
        "--workers",
        "1",
        "--models",
        str(REPOSITORY),
        env={"SCORE_SHM_MIN_BYTES": "16384"},
    ).wait_ready()
    before = our_regions(shm_triton.url)
    x = (np.arange(8192) % 251 * 0.5).astype(np.float32).reshape(1, 8192)  # 32 KiB

    def score(value: float) -> None:
        body = {"inputs": {"x": x.tolist(), "scale": [[value]]}}
        answer = requests.post(f"{server.url}/score/{MODEL}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(np.array(answer.json()["outputs"]["y"]), x * value)

    try:
        score(2.0)
        new = our_regions(shm_triton.url) - before
        assert len(new) == 1, new
        (name,) = new
        worker = int(name.removeprefix(PREFIX).split("_")[0])
        assert worker != server.process.pid and (SHM_DIR / name).exists()
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
        assert 'score_shm_tensors_total{outcome="shm"} 1.0' in metrics

        os.kill(worker, signal.SIGKILL)
        assert wait_for(lambda: not (SHM_DIR / name).exists()), "the region file is left"
        assert wait_for(lambda: name not in registered_regions(shm_triton.url))

        # The worker Gunicorn starts in its place registers a region of its own.
        server.wait_ready()
        score(3.0)
        replacement = our_regions(shm_triton.url) - before
        assert len(replacement) == 1 and name not in replacement, replacement
        (name,) = replacement
    finally:
        server.stop()
    # A worker that stops cleanly removes its own region.
    assert not (SHM_DIR / name).exists()
    assert name not in registered_regions(shm_triton.url)


def test_the_master_removes_a_dead_workers_region_even_without_triton() -> None:
    """child_exit's cleanup: the dead worker's region files go, a local Triton's own
    python-backend files (``triton_score_<pid>_<hex>_...``) stay, nothing raises when Triton
    does not answer."""
    pid = 2**22 + 12345  # above any pid_max this machine hands out: no live process has it
    mine = [SHM_DIR / region_name(pid), SHM_DIR / region_name(pid, 2)]
    not_mine = [
        SHM_DIR / f"triton_score_{pid}_0a1b2c3d_region",  # a local Triton's own
        SHM_DIR / f"{PREFIX}{pid}9",
        SHM_DIR / f"{PREFIX}{pid}_0123456789abcdef",  # another server's worker, the same pid
        SHM_DIR / f"{PREFIX}{pid}",  # the old pid-only form: never ours now
    ]
    for path in mine + not_mine:
        path.write_bytes(b"x")
    try:
        removed = cleanup_dead_worker(pid, "127.0.0.1:9", timeout_s=0.5)
        assert removed == sorted(p.name for p in mine)
        assert not any(p.exists() for p in mine) and all(p.exists() for p in not_mine)
    finally:
        for path in mine + not_mine:
            path.unlink(missing_ok=True)


def test_imagenet_photo_through_shared_memory_answers_as_http(
    triton: LocalTriton, score_server: ScoreServer
) -> None:
    """The session's score serve (SCORE_SHM=auto, a local Triton) sends the processor's
    3x224x224 FP32 tensor through its worker's region, and answers what the HTTP path does."""
    pytest.importorskip("PIL.Image", reason="needs the [imagenet] extra (Pillow)")
    imagenet = load_file(ROOT / "score" / "imagenet_processor.py", "imagenet_processor")
    flower = (
        Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images" / "flower.jpg"
    ).read_bytes()

    def sent_by_shm() -> float:
        text = requests.get(f"{score_server.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith('score_shm_tensors_total{outcome="shm"}'):
                return float(line.split()[-1])
        return 0.0

    before = sent_by_shm()
    answer = requests.post(
        f"{score_server.url}/score/imagenet_lite0",
        data=flower,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert sent_by_shm() == before + 1
    workers = [n for n in registered_regions(triton.url) if n.startswith(PREFIX)]
    assert any(int(n.removeprefix(PREFIX).split("_")[0]) != os.getpid() for n in workers)

    # The same photo, preprocessed and postprocessed by the same processor, sent by HTTP.
    processor = imagenet.ImageNetClassifier()
    request = decode_request(flower, "image/jpeg")
    gateway = TritonGateway(triton.url)
    try:
        model = gateway.model_info("imagenet_lite0")
        inputs = processor.preprocess(request, model)
        assert inputs["image"].nbytes == 3 * 224 * 224 * 4
        raw = gateway.infer(model, inputs, processor.outputs(request, model))
    finally:
        gateway.close()
    expected = processor.postprocess(raw, request, model)
    got = answer.json()
    assert [(e["label"], e["index"]) for e in got] == [(e["label"], e["index"]) for e in expected]
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in expected], rtol=1e-5)
