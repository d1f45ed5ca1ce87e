"""API keys without Gunicorn: settings, the key store, the check, and what reaches Triton.

What reaches Triton is observed by a real HTTP server standing in for it (``fake_triton``),
so the headers are the ones that really crossed the socket.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_triton import INFER_BODY, FakeTriton

from triton_score.http import auth
from triton_score.http.app import create_app
from triton_score.http.auth import KeyStore, route_group
from triton_score.http.forward import TritonForwarder
from triton_score.settings import AUTH_GROUPS, Settings, insecure_bind_warning, settings_error

KEY = "k-7b1e0c4a9f2d4e3b8a6c"
OTHER = "k-0a9b8c7d6e5f4a3b2c1d"
ORIGIN = "https://app.example.com"


# -- settings ------------------------------------------------------------------------------
def test_settings_read_keys_exemptions_and_log_options() -> None:
    settings = Settings.from_env(
        {
            "TRITON_URL": "triton.internal:9000",
            "SCORE_API_KEYS": f" {KEY} , {OTHER},",
            "SCORE_API_KEYS_FILE": "/run/secrets/keys",
            "SCORE_AUTH_EXEMPT": "metrics, Docs",
            "SCORE_LOG_FORMAT": "JSON",
            "SCORE_LOG_LEVEL": "warning",
        }
    )
    assert settings.api_keys == (KEY, OTHER)
    assert settings.api_keys_file == "/run/secrets/keys"
    assert settings.auth_exempt == ("metrics", "docs")
    assert (settings.log_format, settings.log_level) == ("json", "WARNING")
    assert settings.auth_enabled
    # Triton's metrics: TRITON_URL's host on port 8002 unless told otherwise.
    assert settings.triton_metrics_endpoint() == "http://triton.internal:8002/metrics"
    told = Settings.from_env({"SCORE_TRITON_METRICS_URL": "127.0.0.1:9102"})
    assert told.triton_metrics_endpoint() == "http://127.0.0.1:9102/metrics"
    url = Settings(triton_metrics_url="http://t:1/custom").triton_metrics_endpoint()
    assert url == "http://t:1/custom"
    plain = Settings.from_env({})
    assert not plain.auth_enabled and plain.log_format == "text" and plain.log_level == "INFO"
    assert Settings.from_env({"SCORE_API_KEYS_FILE": "keys.txt"}).auth_enabled


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SCORE_AUTH_EXEMPT", "metrics,score"),
        ("SCORE_LOG_FORMAT", "yaml"),
        ("SCORE_LOG_LEVEL", "LOUD"),
    ],
)
def test_settings_refuse_what_they_cannot_honour(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: value})


def test_route_groups() -> None:
    assert {route_group(p) for p in ("/", "/v2/health/live", "/v2/health/ready")} == {"open"}
    assert route_group("/metrics") == route_group("/metrics/triton") == "metrics"
    assert route_group("/swagger.json") == "docs"
    assert route_group("/v2") == route_group("/v2/models/m/infer") == "v2"
    assert route_group("/v2/health/ready/") == "v2"  # only the exact probe paths are open
    assert route_group("/score") == route_group("/score/m") == "score"
    assert route_group("/nowhere") == route_group("/metricsx") == "other"


# -- the key store -------------------------------------------------------------------------
def test_every_key_is_compared_every_time(monkeypatch) -> None:
    calls: list[int] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    store = KeyStore([KEY, OTHER, "k-third-key-long-enough"])
    for presented, expected in ((KEY, True), ("k-third-key-long-enough", True), ("nope", False)):
        calls.clear()
        assert store.verify(presented) is expected
        assert len(calls) == 3  # no early exit on a match, none on a miss


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_the_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated monthly\n{KEY}\n\n")
    clock = Clock()
    store = KeyStore([], path, clock=clock)
    assert store.verify(KEY) and not store.verify(OTHER) and not store.verify("# rotated monthly")
    write_atomically(path, f"{KEY}\n{OTHER}\n")
    assert not store.verify(OTHER)  # not looked at again before the interval
    clock.now += auth.CHECK_INTERVAL_S
    assert store.verify(KEY) and store.verify(OTHER)  # during a rotation both are valid
    path.write_text(f"{OTHER}\n")  # rewritten in place
    clock.now += auth.CHECK_INTERVAL_S
    assert not store.verify(KEY) and store.verify(OTHER)
    path.write_text("")  # an empty file refuses every key
    clock.now += auth.CHECK_INTERVAL_S
    assert not store.verify(OTHER) and store.count == 0
    path.write_text(f"{OTHER}\n")
    clock.now += auth.CHECK_INTERVAL_S
    assert store.verify(OTHER)
    path.unlink()  # a file that disappears revokes its keys: fail closed
    clock.now += auth.CHECK_INTERVAL_S
    assert not store.verify(OTHER) and store.count == 0
    path.write_text(f"{OTHER}\n")  # and one that comes back is read again
    clock.now += auth.CHECK_INTERVAL_S
    assert store.verify(OTHER)


def test_a_fifo_in_place_of_the_key_file_never_stalls_and_revokes(tmp_path: Path) -> None:
    """A request must never wait on the key file: a FIFO (nobody writing) would block an
    open() for good. It is refused without being opened, and its keys are revoked."""
    import threading

    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n")
    clock = Clock()
    store = KeyStore([], path, clock=clock)
    assert store.verify(KEY)
    path.unlink()
    os.mkfifo(path)
    clock.now += auth.CHECK_INTERVAL_S
    answered: list[bool] = []
    worker = threading.Thread(target=lambda: answered.append(store.verify(KEY)), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert answered == [False], "verify() stalled on the FIFO, or still accepted the key"


def test_a_bom_and_unusable_lines_in_the_key_file(tmp_path: Path, caplog) -> None:
    path = tmp_path / "keys"
    path.write_bytes(
        ("\ufeff" + KEY + "\nkey with spaces inside\nk\u00e9-not-ascii-at-all\n").encode()
    )
    with caplog.at_level("WARNING", logger="triton_score.http.auth"):
        store = KeyStore([], path)
    assert store.verify(KEY)  # the BOM is not part of the first key
    assert store.count == 1
    assert "2 line(s) skipped" in caplog.text and KEY not in caplog.text


def test_a_huge_key_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(KEY + "\n" + "#" * (auth.MAX_KEY_FILE_BYTES + 1))
    assert not KeyStore([], path).verify(KEY)


def test_listed_keys_stay_valid_beside_the_file_and_a_missing_file_adds_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys"
    clock = Clock()
    store = KeyStore([KEY], path, clock=clock)
    assert store.verify(KEY) and not store.verify(OTHER)
    path.write_text(OTHER)
    clock.now += auth.CHECK_INTERVAL_S
    assert store.verify(KEY) and store.verify(OTHER)


def test_the_file_is_only_stat_ed_between_changes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "keys"
    path.write_text(KEY)
    clock = Clock()
    store = KeyStore([], path, clock=clock)
    reads: list[Path] = []
    real = Path.read_text

    def counting(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counting)
    for _ in range(5):
        clock.now += auth.CHECK_INTERVAL_S
        assert store.verify(KEY)
    assert reads == []


# -- the check, in the app -----------------------------------------------------------------
@pytest.fixture()
def fake_triton():
    with FakeTriton() as fake:
        yield fake


def make_app(fake: FakeTriton, **settings: object):
    defaults: dict[str, object] = {
        "triton_url": fake.url,
        "processors": ("none",),
        "metadata_refresh_s": 0,
        "triton_metrics_url": fake.url,
    }
    app = create_app(Settings(**{**defaults, **settings}), init=False)  # type: ignore[arg-type]
    return app


@pytest.mark.parametrize(
    "authorization, error",
    [
        (None, None),
        ("Bearer k-wrong-key-0000000000", "invalid_token"),
        ("Basic " + KEY, "invalid_request"),
        ("Bearer", "invalid_request"),
        (f"Bearer {KEY} {KEY}", "invalid_request"),
        (KEY, "invalid_request"),
    ],
    ids=["missing", "wrong", "basic", "no key", "two words", "no scheme"],
)
@pytest.mark.parametrize("path", ["/score/m", "/v2/models/m", "/metrics", "/swagger.json", "/x"])
def test_without_a_valid_key_every_route_is_a_401(
    fake_triton: FakeTriton, path: str, authorization: str | None, error: str | None
) -> None:
    app = make_app(fake_triton, api_keys=(KEY,))
    headers = {"x-request-id": "r-1"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = app.test_client().open(
        path, method="POST" if "score" in path else "GET", headers=headers
    )
    assert response.status_code == 401
    body = response.json
    assert body["code"] == "unauthorized" and body["request_id"] == "r-1"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    assert KEY not in response.get_data(as_text=True) and "wrong-key" not in str(response.headers)
    assert fake_triton.seen == []  # nothing reached Triton


def test_probes_preflights_and_exempt_groups_need_no_key(fake_triton: FakeTriton) -> None:
    app = make_app(fake_triton, api_keys=(KEY,), auth_exempt=("metrics",), cors_origins=(ORIGIN,))
    client = app.test_client()
    assert client.get("/").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503  # open (and Triton is a fake)
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics/triton").status_code == 200
    assert client.get("/swagger.json").status_code == 401
    preflight = client.options(
        "/score/m",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    # An OPTIONS that is not a preflight is no way around the key.
    assert client.options("/score/m").status_code == 401
    # A refusal still carries the CORS headers, so a browser app can read the 401.
    refused = client.post("/score/m", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_exempting_v2_and_docs(fake_triton: FakeTriton) -> None:
    app = make_app(fake_triton, api_keys=(KEY,), auth_exempt=("v2", "docs"))
    client = app.test_client()
    assert client.get("/v2/models/m").status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.post("/score/m", json={}).status_code == 401


@pytest.mark.parametrize("keys", [(KEY,), ()], ids=["our keys", "no keys (AzureML's key)"])
def test_authorization_is_never_forwarded_to_triton(fake_triton: FakeTriton, keys) -> None:
    app = make_app(fake_triton, api_keys=keys)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {KEY}", "x-custom": "kept", "Cookie": "session=1"}
    # (infer first: it reads the model's metadata itself, as a request of its own)
    infer = client.post("/v2/models/m/infer", data=INFER_BODY, headers=headers)
    assert infer.status_code == 200
    meta = client.get("/v2/models/m", headers=headers)
    assert meta.status_code == 200 and meta.json["name"] == "m"
    for path in ("/v2/models/m", "/v2/models/m/infer"):
        seen = fake_triton.headers_of(path)
        assert seen.get("x-custom") == "kept"  # headers do pass...
        assert "authorization" not in seen and "cookie" not in seen  # ...credentials do not
        assert KEY not in str(seen)


def test_the_forwarder_drops_authorization(fake_triton: FakeTriton) -> None:
    forwarder = TritonForwarder(fake_triton.url)
    try:
        status, _, _ = forwarder.forward(
            "GET", "/v2/models/m", b"", {"Authorization": f"Bearer {KEY}", "Accept": "*/*"}
        )
    finally:
        forwarder.close()
    assert status == 200
    seen = fake_triton.headers_of("/v2/models/m")
    assert "authorization" not in seen and seen["accept"] == "*/*"


def test_triton_metrics_are_proxied(fake_triton: FakeTriton) -> None:
    app = make_app(fake_triton)
    response = app.test_client().get("/metrics/triton")
    assert response.status_code == 200
    assert 'nv_inference_count{model="m",version="1"} 3' in response.get_data(as_text=True)
    assert response.headers["content-type"].startswith("text/plain")
    gone = make_app(fake_triton, triton_metrics_url="127.0.0.1:9").test_client()
    unreachable = gone.get("/metrics/triton")
    assert unreachable.status_code == 503 and unreachable.json["code"] == "triton_unavailable"


def test_the_settings_and_pages_are_documented() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    security = (root / "docs" / "security.md").read_text()
    monitoring = (root / "docs" / "monitoring.md").read_text()
    for variable in ("SCORE_API_KEYS", "SCORE_API_KEYS_FILE", "SCORE_AUTH_EXEMPT"):
        assert f"`{variable}`" in readme and f"`{variable}`" in security, variable
    for variable in (
        "SCORE_LOG_FORMAT",
        "SCORE_LOG_LEVEL",
        "SCORE_ACCESS_LOG",
        "SCORE_TRITON_METRICS_URL",
    ):
        assert f"`{variable}`" in readme and f"`{variable}`" in monitoring, variable
    for group in AUTH_GROUPS:
        assert f"| `{group}` |" in security, group
    assert "(docs/security.md)" in readme and "(docs/monitoring.md)" in readme


def test_the_openapi_document_declares_the_bearer_key(fake_triton: FakeTriton) -> None:
    client = make_app(fake_triton, api_keys=(KEY,)).test_client()
    doc = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key",
    }
    assert doc["security"] == [{"apiKey": []}]
    assert doc["paths"]["/v2/health/ready"]["get"]["security"] == []
    plain = make_app(fake_triton).test_client().get("/openapi.json").json
    assert "security" not in plain and "securitySchemes" not in plain["components"]


@pytest.mark.parametrize(
    "environ",
    [
        {"SCORE_API_KEYS": ""},
        {"SCORE_API_KEYS": " , "},
        {"SCORE_API_KEYS": ","},
        {"SCORE_API_KEYS_FILE": ""},
        {"SCORE_API_KEYS_FILE": " "},
    ],
)
def test_a_key_setting_that_is_set_but_empty_is_an_error(environ: dict[str, str]) -> None:
    (variable,) = environ
    with pytest.raises(ValueError, match=f"^{variable} is set but"):
        Settings.from_env(environ)
    assert variable in settings_error(environ)


def test_keys_no_client_could_send_are_refused_at_start() -> None:
    for bad in ("caf\u00e9-key-0123456789", "tab\tkey-0123456789"):
        with pytest.raises(ValueError, match="printable ASCII"):
            Settings.from_env({"SCORE_API_KEYS": f"{KEY},{bad}"})
    assert Settings.from_env({"SCORE_API_KEYS": f" {KEY} , {OTHER} "}).api_keys == (KEY, OTHER)


def test_no_keys_on_a_public_bind_is_warned_about() -> None:
    assert "no API keys" in insecure_bind_warning(Settings(), "0.0.0.0")
    assert insecure_bind_warning(Settings(), "127.0.0.1") == ""
    assert insecure_bind_warning(Settings(api_keys=(KEY,)), "0.0.0.0") == ""


def test_tritonserver_never_inherits_our_keys() -> None:
    from triton_score.local.server import triton_environment

    env = triton_environment({"SCORE_API_KEYS": KEY, "SCORE_API_KEYS_FILE": "/k", "PATH": "/b"})
    assert env == {"PATH": "/b"}
