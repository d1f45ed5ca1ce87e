"""The one place the runtime talks to Triton: a ``tritonclient.http`` client per worker.

Why a wrapper: every Triton failure must reach the client with its meaning intact — Triton's
4xx stay 4xx, an unreachable server is a 503 the client may retry, a stalled one a 504 — and
tensors always travel with the binary tensor extension (JSON numbers are slow and cannot
carry FP16).

``tritonclient.http`` is built on gevent: one client serves many greenlets of one worker
process (its connection pool holds ``concurrency`` connections), but it must be created
after the worker forks and never shared across threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from triton_score.errors import ModelNotFound, ScoringTimeout, TritonError, TritonUnavailable
from triton_score.model.info import ModelInfo
from triton_score.triton.deadline import Abandoned
from triton_score.triton.hop import Hop, encode_request
from triton_score.triton.shm import SharedMemoryPool

log = logging.getLogger(__name__)

#: Output name -> ``class_count`` (0 asks for the raw tensor).
OutputRequest = Mapping[str, int]


def _pinned(model: ModelInfo) -> str:
    """The version an inference on ``model`` names: its own when pinned, else none."""
    return model.version if model.pinned else ""


def _is_timeout(exc: BaseException) -> bool:
    name = type(exc).__name__.lower()
    return isinstance(exc, TimeoutError) or "timeout" in name


@contextmanager
def translate_errors(what: str, request_id: str = "") -> Iterator[None]:
    """Turn tritonclient and socket failures into :mod:`triton_score.errors` exceptions.

    What a client may see: Triton's 4xx keep their status and message (they are about the
    request: a shape, a datatype Triton refused); 404 is ``model_not_found``; 503 and a
    server that cannot be reached are ``triton_unavailable`` (503, retry), a timeout 504.
    Any other failure (a 5xx: the model raised, the backend failed) is the deployment's, and
    its message may hold paths and internals: the client gets a 500 naming the model and the
    request id, and the log gets Triton's message under that id.
    """
    try:
        yield
    except InferenceServerException as exc:
        status = exc.status()
        message = exc.message() or str(exc)
        try:
            code = int(status) if status is not None else 0
        except ValueError:
            code = 0
        if code == 0:
            # tritonclient raises without an HTTP status for transport-level problems.
            if _is_timeout(exc) or "timed out" in message.lower():
                raise ScoringTimeout(f"Triton did not answer {what} in time") from exc
            raise TritonUnavailable(f"Triton is unreachable ({what})") from exc
        if code == 404:
            raise ModelNotFound(message) from exc
        if code == 503:
            raise TritonUnavailable(message) from exc
        if 400 <= code < 500:
            raise TritonError(message, status_code=code) from exc
        log.error("Triton failed %s (HTTP %d, request %s): %s", what, code, request_id, message)
        raise TritonError(
            f"Triton failed {what}; the server log has its message"
            + (f" under request id {request_id}" if request_id else ""),
            status_code=500,
        ) from exc
    except Exception as exc:
        # Socket errors, connection refused/reset, gevent timeouts: the server is not there.
        if _is_timeout(exc):
            raise ScoringTimeout(f"Triton did not answer {what} in time") from exc
        if isinstance(exc, OSError) or "connection" in type(exc).__name__.lower():
            raise TritonUnavailable(
                f"Triton is unreachable ({what}): {type(exc).__name__}"
            ) from exc
        raise


class TritonGateway:
    """Model metadata, health and inference against one Triton server.

    :param url: ``host:port`` of Triton's HTTP endpoint.
    :param concurrency: connections kept open to Triton (requests in flight per worker).
    :param timeout_s: network timeout for inference calls.
    :param shm_bytes: size of this gateway's system shared memory region for large inputs
        (:mod:`triton_score.triton.shm`); 0 sends every tensor in the HTTP body.
    :param shm_min_bytes: inputs smaller than this stay in the HTTP body.
    :param on_shm_tensor: told, per large input, whether it went by shared memory.
    :param abandoned: counts the calls a request deadline left running.
    """

    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 64,
        timeout_s: float = 60.0,
        shm_bytes: int = 0,
        shm_min_bytes: int = 64 * 1024,
        on_shm_tensor: Callable[[str], None] | None = None,
        abandoned: Abandoned | None = None,
    ) -> None:
        self.url = url
        #: Calls that request deadlines left running (:mod:`triton_score.triton.deadline`); the
        #: ``/v2`` forwarder counts its own here too.
        self.abandoned = abandoned or Abandoned()
        self.timeout_s = timeout_s
        self._timeout_us = max(1, int(timeout_s * 1_000_000))
        self._hop = Hop(url, concurrency=concurrency, timeout_s=timeout_s, abandoned=self.abandoned)
        self._client = httpclient.InferenceServerClient(
            url,
            concurrency=concurrency,
            connection_timeout=min(timeout_s, 10.0),
            network_timeout=timeout_s,
        )
        # Health checks must answer fast even while inference calls wait for a busy server.
        self._health = httpclient.InferenceServerClient(
            url, concurrency=2, connection_timeout=1.0, network_timeout=2.0
        )
        self._shm: SharedMemoryPool | None = None
        if shm_bytes > 0:
            self._shm = SharedMemoryPool(
                shm_bytes,
                shm_min_bytes,
                register=self._client.register_system_shared_memory,
                unregister=self._client.unregister_system_shared_memory,
                on_tensor=on_shm_tensor,
            )

    def free_connections(self) -> int | None:
        """Connections of the scoring pool (the lean hop's) no call holds now."""
        return self._hop.free_connections()

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
        self._hop.close()
        self._client.close()
        self._health.close()

    # -- health and metadata -----------------------------------------------------------------
    def is_ready(self) -> bool:
        """Is Triton up and ready? Never raises; answers within ~2 s."""
        try:
            return bool(self._health.is_server_ready())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def wait_ready(self, timeout_s: float) -> bool:
        """Poll readiness for up to ``timeout_s`` seconds, logging while waiting."""
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            if self.is_ready():
                return True
            if time.monotonic() >= deadline:
                return False
            if not announced:
                log.info("waiting up to %.0f s for Triton at %s to be ready", timeout_s, self.url)
                announced = True
            time.sleep(0.5)

    def ready_model_names(self) -> list[str]:
        with translate_errors("the repository index"):
            index = self._health.get_model_repository_index()
        return sorted({m["name"] for m in index if m.get("state") == "READY"})

    def model_info(self, name: str, version: str = "") -> ModelInfo:
        """Metadata and config of model ``name`` (at ``version``; default: Triton's choice)."""
        with translate_errors(f"metadata of model {name!r}"):
            metadata = self._client.get_model_metadata(name, model_version=version)
            config = self._client.get_model_config(name, model_version=version)
        return ModelInfo.from_triton(metadata, config)

    def load_models(self, names: Sequence[str] = ()) -> dict[str, ModelInfo]:
        """Metadata and config of ``names`` (default: every model Triton has ready)."""
        wanted = list(names) or self.ready_model_names()
        return {name: self.model_info(name) for name in wanted}

    # -- inference -------------------------------------------------------------------------
    def infer(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: OutputRequest | None = None,
        *,
        request_id: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one inference; inputs must already be validated against ``model``.

        :param outputs: which outputs to return and their ``class_count``; ``None`` = all, raw.
        :param headers: HTTP headers for Triton, e.g. the ``traceparent`` that puts Triton's
            spans in the caller's trace (:meth:`triton_score.telemetry.tracing.Tracing.headers`).
        :return: output name -> numpy array (BYTES outputs are object arrays of ``bytes``).
        """
        if self._shm is not None and self._shm.wants(inputs):
            answer = self._infer_shared_memory(model, inputs, outputs, request_id, headers)
            if answer is not None:
                return answer
        wanted = dict(outputs) if outputs is not None else {o.name: 0 for o in model.outputs}
        body, header_length = encode_request(
            model, inputs, wanted, request_id=request_id, timeout_us=self._timeout_us
        )
        with translate_errors(f"inference on model {model.name!r}", request_id):
            return self._hop.infer(
                model.name, body, header_length, headers, wanted, version=_pinned(model)
            )

    def _infer_shared_memory(
        self,
        model: ModelInfo,
        inputs: Mapping[str, np.ndarray],
        outputs: OutputRequest | None,
        request_id: str,
        headers: Mapping[str, str] | None,
    ) -> dict[str, np.ndarray] | None:
        """:meth:`infer` with the large inputs in this worker's shared memory region.

        ``None`` when no input could go there (region full, unusable, or Triton forgot it
        after a restart): the caller then sends everything in the HTTP body.
        """
        assert self._shm is not None
        with self._shm.lease(inputs) as placed:
            if not placed:
                return None
            wanted = dict(outputs) if outputs is not None else {o.name: 0 for o in model.outputs}
            body, header_length = encode_request(
                model,
                inputs,
                wanted,
                request_id=request_id,
                timeout_us=self._timeout_us,
                shared={
                    name: (where.region, where.offset, where.byte_size)
                    for name, where in placed.items()
                },
            )
            try:
                with translate_errors(f"inference on model {model.name!r}", request_id):
                    return self._hop.infer(
                        model.name, body, header_length, headers, wanted, version=_pinned(model)
                    )
            except (TritonError, ModelNotFound) as exc:
                # Triton restarted and lost the registration (it answers 404 "Unable to find
                # shared memory region"): register it again next time, and let this request
                # go by HTTP rather than fail.
                if "unable to find shared memory region" in exc.message.lower():
                    log.warning("Triton lost our shared memory region: registering it again")
                    self._shm.forget_registration()
                    return None
                raise
