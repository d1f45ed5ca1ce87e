"""The azmlinfsrv drop-in's parts, in-process (no server started; the real servers are
compared in tests/compat/test_azmlinfsrv_parity.py): the legacy client modules, the Swagger 2.0
document, the version header and the health port's guard."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils as utils
from fake_triton import FakeTriton

from triton_score import __version__
from triton_score.azureml.legacy_clients import fixed_width, install_legacy_clients
from triton_score.http.app import create_app
from triton_score.http.swagger2 import to_swagger2
from triton_score.settings import Settings


# -- legacy client modules ---------------------------------------------------------------
def test_fixed_width_is_the_2020_form_of_a_bytes_tensor() -> None:
    objects = np.array([[b"0.9:0:red", b"ab\x00"]], dtype=np.object_)
    legacy = fixed_width(objects)
    assert legacy is not None
    assert legacy.dtype == np.dtype("S9") and legacy.shape == (1, 2)
    assert legacy[0, 1] == b"ab"  # numpy drops trailing NULs, as the 2020 client's arrays did
    assert "".join(chr(x) for x in legacy[0, 0]).split(":") == ["0.9", "0", "red"]
    floats = np.zeros(3, dtype=np.float32)
    assert fixed_width(floats) is floats and fixed_width(None) is None
    empty = fixed_width(np.empty((0, 2), dtype=np.object_))
    assert empty is not None and empty.shape == (0, 2)


def test_legacy_results_from_a_response_body() -> None:
    """``InferResult.from_response_body`` (what a script may call on bodies it fetched):
    binary BYTES as np.bytes_, JSON BYTES as str objects, other types unchanged."""
    install_legacy_clients()
    import tritonhttpclient

    serialized = utils.serialize_byte_tensor(np.array([b"cat", b"dog"], dtype=np.object_)).item()
    header = (
        '{"outputs":[{"name":"b","datatype":"BYTES","shape":[2],'
        f'"parameters":{{"binary_data_size":{len(serialized)}}}}},'
        '{"name":"j","datatype":"BYTES","shape":[1],"data":["text"]},'
        '{"name":"f","datatype":"FP32","shape":[2],"data":[1.5,2.5]}]}'
    ).encode()
    result = tritonhttpclient.InferResult.from_response_body(
        header + serialized, header_length=len(header)
    )
    assert isinstance(result, httpclient.InferResult)
    assert result.as_numpy("b").dtype == np.dtype("S3")
    assert result.as_numpy("j").dtype == np.object_ and result.as_numpy("j")[0] == "text"
    assert result.as_numpy("f").dtype == np.float32 and result.as_numpy("missing") is None
    today = httpclient.InferResult.from_response_body(
        header + serialized, header_length=len(header)
    )
    assert today.as_numpy("b").dtype == np.object_  # tritonclient.http is not changed


def test_legacy_names_are_ours_even_after_todays_re_exports_were_imported() -> None:
    """In a fresh process: today's ``tritonhttpclient`` first (it resets warning filters and
    warns), then installed: the next import is ours, and warns of nothing."""
    code = """
import warnings
import tritonhttpclient as before
from triton_score.azureml.legacy_clients import install_legacy_clients, LEGACY_MARK
install_legacy_clients()
install_legacy_clients()  # idempotent
filters = list(warnings.filters)
with warnings.catch_warnings(record=True) as caught:
    import tritonhttpclient, tritonclientutils, tritongrpcclient
    from tritongrpcclient import model_config_pb2
    import tritonclient.http
assert getattr(tritonhttpclient, LEGACY_MARK) and not hasattr(before, LEGACY_MARK)
assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], caught
assert list(warnings.filters) == filters
assert tritonclient.http.InferenceServerClient.__module__ == "tritonclient.http._client"
assert tritonhttpclient.InferenceServerClient.__mro__[1] is tritonclient.http.InferenceServerClient
from tritonclient.grpc import model_config_pb2 as todays
assert model_config_pb2.ModelConfig is todays.ModelConfig
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- the app: version header, health port, documents -------------------------------------
@pytest.fixture()
def fake_triton() -> Iterator[FakeTriton]:
    with FakeTriton() as fake:
        yield fake


def client_of(fake: FakeTriton, **settings: object):  # type: ignore[no-untyped-def]
    defaults: dict[str, object] = {
        "triton_url": fake.url,
        "processors": ("none",),
        "metadata_refresh_s": 0,
    }
    app = create_app(Settings(**{**defaults, **settings}), init=False)  # type: ignore[arg-type]
    return app.test_client()


def test_the_version_header_is_on_every_answer_unless_off(fake_triton: FakeTriton) -> None:
    on = client_of(fake_triton)
    for answer in (on.get("/"), on.get("/nowhere"), on.put("/score"), on.get("/swagger.json")):
        assert answer.headers["x-ms-server-version"] == f"triton-score/{__version__}"
    off = client_of(fake_triton, server_version_header=False)
    assert "x-ms-server-version" not in off.get("/").headers


def test_the_health_port_answers_the_probes_only(fake_triton: FakeTriton) -> None:
    client = client_of(fake_triton, separate_health_endpoint=True, health_port=5000)
    on_health = {"SERVER_PORT": "5000"}
    assert client.get("/", environ_overrides=on_health).text == "Healthy"
    assert client.get("/v2/health/live", environ_overrides=on_health).status_code == 200
    refused = client.get("/swagger.json", environ_overrides=on_health)
    assert refused.status_code == 404 and refused.json["code"] == "health_port_only"
    # The Host header does not choose the port: the listening socket's SERVER_PORT does.
    spoofed = client.get(
        "/swagger.json", headers={"Host": "x:5000"}, environ_overrides={"SERVER_PORT": "5001"}
    )
    assert spoofed.status_code == 200
    assert (
        client_of(fake_triton).get("/swagger.json", environ_overrides=on_health).status_code == 200
    )


def test_swagger2_conversion() -> None:
    document = {
        "openapi": "3.0.3",
        "info": {"title": "t", "version": "1"},
        "paths": {
            "/score": {
                "post": {
                    "operationId": "score",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": {"$ref": "#/components/schemas/In"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {"schema": {"type": "number", "nullable": True}}
                            },
                        }
                    },
                }
            }
        },
        "components": {
            "schemas": {
                "In": {
                    "type": "object",
                    "properties": {
                        "nullable": {"anyOf": [{"type": "string"}, {"type": "integer"}]}
                    },
                }
            },
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
    }
    two = to_swagger2(document)
    operation = two["paths"]["/score"]["post"]
    assert operation["consumes"] == ["image/png", "application/json"]
    assert operation["parameters"][0]["schema"] == {"$ref": "#/definitions/In"}  # JSON preferred
    assert operation["responses"]["200"]["schema"] == {"type": "number", "x-nullable": True}
    # A property named like a keyword stays a property; its alternatives become x-anyOf.
    assert two["definitions"]["In"]["properties"]["nullable"] == {
        "x-anyOf": [{"type": "string"}, {"type": "integer"}]
    }
    assert two["securityDefinitions"]["apiKey"]["in"] == "header" and two["security"] == [
        {"apiKey": []}
    ]
    assert two["swagger"] == "2.0" and "openapi" not in two
