"""Large input tensors through Triton's system shared memory instead of the HTTP body.

When the middleware and Triton share a host (the same container in AzureML, ``score serve``
locally), a 3×224×224 FP32 image (602 KB) need not be copied into an HTTP body and parsed
out of it again: the worker writes it into a POSIX shared memory object that Triton has
mapped too, and the request carries only where it is::

    {"name": "x", "shape": [1, 3, 224, 224], "datatype": "FP32",
     "parameters": {"shared_memory_region": "triton_score_shm_4242_5f0c9a31d2e84b76",
                    "shared_memory_offset": 0, "shared_memory_byte_size": 602112}}

How a worker uses it:

- **one region per gateway** (so one per worker process), created lazily on first use,
  after Gunicorn forked: ``/dev/shm/triton_score_shm_<pid>_<token>`` (:func:`region_name`),
  of ``SCORE_SHM_BYTES``. The token is random and this server's own (:func:`server_token`):
  Triton finds a region by its name among *all* regions registered with it, so a name a
  client could guess would be a way into another client's tensors, and a pid alone repeats
  across containers that share ``/dev/shm`` and one Triton. Its pages are reserved at
  creation (``posix_fallocate``): on a full ``/dev/shm`` (Docker gives 64 MB by default)
  creation fails cleanly, where a sparse file would kill the worker with ``SIGBUS`` on
  first write;
- registered with Triton once (``POST /v2/systemsharedmemory/region/<name>/register``);
- shared by the many requests a gevent worker has in flight through a first-fit
  :class:`Allocator`: a request leases slots for its large inputs, and gives them back when
  Triton has answered or the call failed, zeroed, so no client's tensor lies in the region
  once its request is over;
- anything that does not fit, and every tensor under ``SCORE_SHM_MIN_BYTES`` (the JSON
  header and a second write cost more than the copy they save), goes in the HTTP body as
  before. So does everything when Triton is remote (:func:`shm_disabled_reason`) or the
  region cannot be created or registered (logged once, with why);
- unregistered and unlinked when the worker exits (Gunicorn's ``worker_exit`` and
  ``atexit``); the master's ``child_exit`` does it for a worker that was killed
  (:func:`cleanup_dead_worker`), so ``/dev/shm`` does not fill up with orphans. It removes
  only the regions of *this* server (its token), never another scorer's of the same pid.

Outputs still come back in the HTTP body: putting them in shared memory needs their size
before the call, which ``class_count`` and variable output shapes make unknown.

BYTES tensors always travel in the body: their serialized form must be built anyway.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import mmap
import os
import secrets
import threading
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triton_score.repository.locations import is_local_address, split_address

log = logging.getLogger(__name__)

#: Every region this package creates is named ``<PREFIX><pid>_<token>[_<n>]``: the master can
#: find a dead worker's, and a test session can check none is left. Not just ``triton_score_``:
#: a local Triton's python backend names its own files ``triton_score_<pid>_<hex>_...``
#: (:mod:`triton_score.local.server`), and those must never look like a worker's.
PREFIX = "triton_score_shm_"
#: Where Linux keeps POSIX shared memory objects.
SHM_DIR = Path("/dev/shm")
#: Slots start on cache-line boundaries: numpy and Triton's backends read aligned data faster,
#: and 64 covers every tensor element size.
ALIGNMENT = 64
#: What an outcome is counted as (:attr:`triton_score.telemetry.metrics.Metrics.shm_tensors`).
OUTCOME_SHM = "shm"
OUTCOME_FULL = "full"
OUTCOME_UNAVAILABLE = "unavailable"

#: This server's token (see :func:`server_token`); empty until first asked.
_token = ""


def server_token() -> str:
    """The random part of this server's region names (16 hex digits, 64 bits).

    Made once, in the first process that asks: Gunicorn's master asks before it forks
    (``on_starting``), so its workers inherit it and the master can tell its dead workers'
    regions from anyone else's; any other process (a test, azmlinfsrv's worker) makes its own.
    Never put in the environment: ``tritonserver`` and the models' stubs inherit that.
    """
    global _token
    if not _token:
        _token = secrets.token_hex(8)
    return _token


def region_name(pid: int | None = None, sequence: int = 0) -> str:
    """The region (and ``/dev/shm`` file) name of a process's ``sequence``-th gateway."""
    pid = os.getpid() if pid is None else pid
    base = f"{PREFIX}{pid}_{server_token()}"
    return base if sequence == 0 else f"{base}_{sequence}"


def regions_of(pid: int) -> list[str]:
    """The region files in ``/dev/shm`` that process ``pid`` of this server created."""
    base = region_name(pid)
    try:
        names = [p.name for p in SHM_DIR.iterdir()]
    except OSError:
        return []
    return sorted(
        n for n in names if n == base or (n.startswith(base + "_") and n[len(base) + 1 :].isdigit())
    )


def shm_disabled_reason(mode: str, triton_url: str) -> str:
    """Why shared memory is not used with ``SCORE_SHM=mode`` and ``TRITON_URL=triton_url``;
    ``""`` when it is.

    ``auto`` uses it only when Triton's host is this machine (:func:`is_local_address`): a
    remote Triton cannot map our ``/dev/shm``. ``on`` skips that check, for a Triton that
    shares ``/dev/shm`` under another name (a pod whose containers mount one
    ``emptyDir: {medium: Memory}`` there); a failed registration still falls back to HTTP.
    """
    if mode == "off":
        return "SCORE_SHM=off"
    host = split_address(triton_url)[0]
    if mode == "auto" and not is_local_address(host):
        return f"Triton's host {host!r} is not this machine (SCORE_SHM=auto)"
    return ""


class Allocator:
    """First-fit allocation of aligned slots in a region of ``size`` bytes.

    The free list is kept sorted by offset and merged with its neighbours on free, so a
    region that empties is one block again. Requests in flight in a gevent worker are a few
    dozen at most: a linear scan is faster than anything cleverer at that size. Not
    thread-safe by itself: :class:`SharedMemoryPool` holds a lock around it.
    """

    def __init__(self, size: int, alignment: int = ALIGNMENT) -> None:
        self.size = size
        self.alignment = alignment
        #: ``(offset, length)`` of free blocks, sorted by offset.
        self._free: list[tuple[int, int]] = [(0, size)] if size > 0 else []
        #: offset -> length of each slot handed out.
        self._used: dict[int, int] = {}

    @property
    def bytes_in_use(self) -> int:
        return sum(self._used.values())

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a free slot of at least ``nbytes``; ``None`` when none is left."""
        length = max(self.alignment, -(-nbytes // self.alignment) * self.alignment)
        for index, (offset, free) in enumerate(self._free):
            if free >= length:
                if free == length:
                    del self._free[index]
                else:
                    self._free[index] = (offset + length, free - length)
                self._used[offset] = length
                return offset
        return None

    def free(self, offset: int) -> None:
        """Give back the slot at ``offset`` (from :meth:`allocate`)."""
        length = self._used.pop(offset)
        blocks = self._free
        # Insert in offset order, then merge with the block before and the one after.
        index = 0
        while index < len(blocks) and blocks[index][0] < offset:
            index += 1
        blocks.insert(index, (offset, length))
        if index + 1 < len(blocks) and offset + length == blocks[index + 1][0]:
            blocks[index] = (offset, length + blocks[index + 1][1])
            del blocks[index + 1]
        if index > 0 and blocks[index - 1][0] + blocks[index - 1][1] == offset:
            previous = blocks[index - 1]
            blocks[index - 1] = (previous[0], previous[1] + blocks[index][1])
            del blocks[index]


@dataclass(frozen=True)
class Placement:
    """Where one input tensor lies in the region."""

    region: str
    offset: int
    byte_size: int


class SharedMemoryPool:
    """One worker's region: created and registered on first use, leased per request.

    :param byte_size: the region's size (``SCORE_SHM_BYTES``).
    :param min_bytes: smaller tensors stay in the HTTP body (``SCORE_SHM_MIN_BYTES``).
    :param register: ``(name, key, byte_size)``: ask Triton to map the region (raises on
        failure); the gateway passes its client's ``register_system_shared_memory``.
    :param unregister: ``(name)``: ask Triton to forget it.
    :param on_tensor: called with :data:`OUTCOME_SHM`, :data:`OUTCOME_FULL` or
        :data:`OUTCOME_UNAVAILABLE` for each large tensor (the metric).
    """

    def __init__(
        self,
        byte_size: int,
        min_bytes: int,
        *,
        register: Callable[[str, str, int], object],
        unregister: Callable[[str], object],
        on_tensor: Callable[[str], None] | None = None,
    ) -> None:
        self.byte_size = byte_size
        self.min_bytes = max(1, min_bytes)
        self._register = register
        self._unregister = unregister
        self._on_tensor = on_tensor or (lambda outcome: None)
        self._lock = threading.Lock()
        self._pid = 0
        self.name = ""
        self._map: mmap.mmap | None = None
        self._allocator: Allocator | None = None
        self._registered = False
        self._setting_up = False
        #: Why the region cannot be used (then everything goes by HTTP); logged once.
        self.broken = ""
        _live_pools.add(self)

    # -- what the gateway asks ------------------------------------------------------------------
    def wants(self, inputs: Mapping[str, np.ndarray]) -> bool:
        """Whether any input is large enough (and of a fixed-size type) to go by the region."""
        if self.broken:
            return False
        return any(self._large(array) for array in inputs.values())

    @contextlib.contextmanager
    def lease(self, inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, Placement]]:
        """Copy the large ``inputs`` into free slots; yield where each went.

        Inputs not in the answer (small, BYTES, or no room left) go in the HTTP body. The
        slots are freed when the block ends, whether the call succeeded or not: after a
        timeout Triton may still read a freed slot that another request has reused, but
        only the request that timed out (and was answered 504) could see its data mixed.
        """
        placed: dict[str, Placement] = {}
        offsets: list[tuple[int, int]] = []  # (offset, length) of each slot taken
        try:
            if self._ensure_ready():
                assert self._map is not None and self._allocator is not None
                for name, array in inputs.items():
                    if not self._large(array):
                        continue
                    with self._lock:
                        offset = self._allocator.allocate(array.nbytes)
                    if offset is None:
                        self._on_tensor(OUTCOME_FULL)
                        continue
                    offsets.append((offset, array.nbytes))
                    view: np.ndarray = np.ndarray(array.shape, array.dtype, self._map, offset)
                    view[...] = array
                    placed[name] = Placement(self.name, offset, array.nbytes)
                    self._on_tensor(OUTCOME_SHM)
            else:
                for array in inputs.values():
                    if self._large(array):
                        self._on_tensor(OUTCOME_UNAVAILABLE)
            yield placed
        finally:
            allocator, region = self._allocator, self._map
            if offsets and allocator is not None and region is not None:  # None: closed
                for offset, length in offsets:
                    # Zeroed before anyone can lease it again: the tensor is gone with its
                    # request (6 us for a 3x224x224 FP32 image).
                    np.ndarray((length,), np.uint8, region, offset).fill(0)
                with self._lock:
                    for offset, _ in offsets:
                        allocator.free(offset)

    @property
    def bytes_in_use(self) -> int:
        return self._allocator.bytes_in_use if self._allocator is not None else 0

    def forget_registration(self) -> None:
        """Triton no longer knows the region (it restarted): register it again on next use."""
        self._registered = False

    def close(self) -> None:
        """Unregister the region from Triton and unlink it. Idempotent; never raises."""
        _live_pools.discard(self)
        self.broken = self.broken or "closed"
        if not self.name or self._pid != os.getpid():
            # Nothing created, or a forked child holding its parent's pool: not ours to remove.
            return
        if self._registered:
            self._registered = False
            try:
                self._unregister(self.name)
            except Exception as exc:  # noqa: BLE001 - Triton may be gone already
                log.debug("could not unregister shared memory %s: %s", self.name, exc)
        if self._map is not None:
            with contextlib.suppress(BufferError):
                # A numpy view still alive keeps the map open; the unlink below still
                # frees the file once the process exits.
                self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.unlink(SHM_DIR / self.name)
        self._allocator = None
        self.name = ""

    # -- inside ---------------------------------------------------------------------------------
    def _large(self, array: np.ndarray) -> bool:
        return array.dtype != np.object_ and array.nbytes >= self.min_bytes

    def _ensure_ready(self) -> bool:
        """Create (in this process) and register the region if not done; False if it cannot.

        Registering is an HTTP call: other greenlets run meanwhile. They do not wait for it
        (a lock held across a greenlet switch would need gevent's, and threads may call too):
        their tensors go by HTTP until the region is ready.
        """
        if self.broken or self._setting_up:
            return False
        if self._pid == os.getpid() and self._registered:
            return True
        self._setting_up = True
        try:
            return self._set_up()
        finally:
            self._setting_up = False

    def _set_up(self) -> bool:
        if self._pid != os.getpid():
            # A fork copied the parent's pool: its region is the parent's. Make our own.
            self._map, self._allocator, self._registered, self.name = None, None, False, ""
            try:
                self._create()
            except OSError as exc:
                self._give_up(f"cannot create /dev/shm/{self.name} ({self.byte_size} B): {exc}")
                return False
        if not self._registered:
            key = "/" + self.name
            try:
                # A region of this name left by an earlier process of the same pid (or this
                # pool before Triton restarted) would make the registration fail.
                with contextlib.suppress(Exception):
                    self._unregister(self.name)
                self._register(self.name, key, self.byte_size)
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to HTTP
                if not _is_refusal(exc):
                    # Triton unreachable for a moment (restarting): this request goes by
                    # HTTP (and likely fails the same way), a later one registers.
                    log.debug("could not register %s with Triton now: %s", key, exc)
                    return False
                self._give_up(f"Triton refused to register {key}: {exc}")
                self.close()
                return False
            self._registered = True
            log.info(
                "system shared memory: region %s of %d bytes registered with Triton "
                "(inputs of %d bytes or more go through it)",
                self.name,
                self.byte_size,
                self.min_bytes,
            )
        return True

    def _create(self) -> None:
        self._pid = os.getpid()
        sequence = _regions_created.get(self._pid, 0)
        _regions_created[self._pid] = sequence + 1
        self.name = region_name(self._pid, sequence)
        path = SHM_DIR / self.name
        # O_EXCL, and never an unlink first: a file of this name is not ours (the token makes
        # a name of our own new), so this fails and the tensors go by HTTP.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the pages now: on a tmpfs too small, fail here rather than SIGBUS later.
            os.posix_fallocate(fd, 0, self.byte_size)
            self._map = mmap.mmap(fd, self.byte_size)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)
        self._allocator = Allocator(self.byte_size)

    def _give_up(self, why: str) -> None:
        self.broken = why
        log.warning("system shared memory not used, tensors go by HTTP: %s", why)


def _is_refusal(exc: BaseException) -> bool:
    """Whether Triton answered (an HTTP status: it will refuse again), rather than could not
    be reached. tritonclient's exceptions carry the status as ``status()``."""
    status = getattr(exc, "status", None)
    code = status() if callable(status) else None
    return code is not None and str(code).isdigit()


#: Regions created so far by each process (a fork starts its own count): each pool of a
#: process gets a name of its own.
_regions_created: dict[int, int] = {}
#: Pools of this process that still own a region: closed at exit.
_live_pools: weakref.WeakSet[SharedMemoryPool] = weakref.WeakSet()


def close_all() -> None:
    """Unregister and unlink every region of this process (Gunicorn's ``worker_exit``)."""
    for pool in list(_live_pools):
        pool.close()


atexit.register(close_all)


def cleanup_dead_worker(pid: int, triton_url: str, timeout_s: float = 2.0) -> list[str]:
    """In the master, for a worker that died: unlink its regions and unregister them.

    A worker killed with SIGKILL (the OOM killer, Gunicorn's timeout) never ran its own
    cleanup; its region would hold ``SCORE_SHM_BYTES`` of ``/dev/shm`` until the container
    ends. Never raises: the master must go on spawning workers. Returns the names removed.
    """
    names = regions_of(pid)
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(SHM_DIR / name)
        if not triton_url:
            continue
        url = f"http://{triton_url.removeprefix('http://')}/v2/systemsharedmemory/region/{name}/unregister"
        try:
            request = urllib.request.Request(url, data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                answer.read()
        except Exception as exc:  # noqa: BLE001 - Triton may be down; the file is gone anyway
            log.debug("could not unregister %s from Triton: %s", name, exc)
    return names


def registered_regions(triton_url: str, timeout_s: float = 2.0) -> list[str]:
    """The names of the system shared memory regions Triton has registered (for tests, ops)."""
    url = f"http://{triton_url.removeprefix('http://')}/v2/systemsharedmemory/status"
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        status = json.loads(answer.read() or b"[]")
    return sorted(region["name"] for region in status)
