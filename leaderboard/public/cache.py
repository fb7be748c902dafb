"""Responses and fragments cached by the data version they were built from.

A body built for a data version (an ETag from `etags.py`, or any string that changes whenever
the data behind the body does) is kept under that version, so a change needs no invalidation:
the next request carries a new version and builds anew, and old versions expire. Two layers:

- the Django cache (`CACHES["default"]`: Redis when `TRELLIS_CACHE_URL` names one), shared by
  every web process and host, so one process builds and the others read;
- a small per-process copy, so a hit on a large body (the full leaderboard JSON, ~8 MB for
  10,000 rows) is not fetched and unpickled again on every request.

Bodies are stored as built and gzip-compressed; `cached_response` sends the compressed bytes
to a client that accepts gzip. An outage of the shared cache costs a rebuild, never a failed
request.

A body missing from both is built by one request at a time: the first takes a short lock in the
shared cache, the others wait for its body (up to BUILD_WAIT) instead of all building the same
one at once, which under load is what turned one slow build into a queue of them."""

from __future__ import annotations

import gc
import gzip
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers

from leaderboard.public.etags import Validator
from leaderboard.public.http import conditional
from leaderboard.public.process import kept_per_process

logger = logging.getLogger(__name__)

IDENTITY, GZIP = "identity", "gzip"
# Shared copies outlive any realistic gap between data changes; a new version replaces them.
SHARED_TIMEOUT = 6 * 3600
# The per-process copy keeps the most recently used bodies up to this many bytes.
LOCAL_BYTES = 64 * 1024 * 1024
# Below this size compression does not pay: the gzip representation is the body as it is.
MIN_COMPRESS = 1024
GZIP_LEVEL = 6
# A build holds its lock at most this long (a crashed builder frees it by expiry); the others
# poll the shared cache for its body, first after BUILD_POLL seconds and then at doubling
# intervals up to BUILD_POLL_MAX, for up to BUILD_WAIT, and then build it themselves.
BUILD_LOCK_SECONDS = 30
BUILD_WAIT = 10.0
BUILD_POLL = 0.02
BUILD_POLL_MAX = 0.2

Representation = tuple[str, bytes]  # (content encoding, bytes)


class _LocalCopies:
    """A byte-bounded LRU of representations, shared by the threads of one process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.items: OrderedDict[str, Representation] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> Representation | None:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
            return found

    def put(self, key: str, value: Representation) -> None:
        if len(value[1]) > self.limit:
            return
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.size -= len(old[1])
            self.items[key] = value
            self.size += len(value[1])
            while self.size > self.limit:
                _key, dropped = self.items.popitem(last=False)
                self.size -= len(dropped[1])

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0


_local = _LocalCopies(LOCAL_BYTES)


@kept_per_process
def forget_local_copies() -> None:
    """Drop this process's copies (tests; the shared cache is untouched)."""
    _local.clear()


def _key(namespace: str, version: str, encoding: str) -> str:
    return f"response:{namespace}:{version}:{encoding}"


def _shared_get(key: str) -> Representation | None:
    try:
        value = caches["default"].get(key)
    except Exception:  # a cache outage costs a rebuild, not the request
        logger.warning("response cache unavailable (get %s)", key, exc_info=True)
        return None
    return value if isinstance(value, tuple) else None


def _shared_set(values: dict[str, Representation]) -> None:
    try:
        caches["default"].set_many(values, SHARED_TIMEOUT)
    except Exception:
        logger.warning("response cache unavailable (set %s)", ", ".join(values), exc_info=True)


def _shared_add(key: str) -> bool:
    """Take a build lock; True when the cache is unavailable (build without one)."""
    try:
        return bool(caches["default"].add(key, 1, BUILD_LOCK_SECONDS))
    except Exception:
        logger.warning("response cache unavailable (add %s)", key, exc_info=True)
        return True


def _shared_has(key: str) -> bool:
    try:
        return caches["default"].get(key) is not None
    except Exception:
        return False


def _shared_delete(key: str) -> None:
    try:
        caches["default"].delete(key)
    except Exception:
        logger.warning("response cache unavailable (delete %s)", key, exc_info=True)


def compress(body: bytes) -> Representation:
    """The gzip representation of `body`, or `body` itself when compressing does not pay."""
    if len(body) < MIN_COMPRESS:
        return IDENTITY, body
    packed = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    return (GZIP, packed) if len(packed) < len(body) else (IDENTITY, body)


def representation(
    namespace: str,
    version: str,
    build: Callable[[], str | bytes],
    *,
    gzip_ok: bool,
    both: bool = True,
) -> Representation:
    """The body of `namespace` at data `version`, gzip-compressed when `gzip_ok` and it pays.
    Read from this process, else from the shared cache, else built once and stored in both
    (plain and gzip; only plain when neither `both` nor `gzip_ok`)."""
    wanted = GZIP if gzip_ok else IDENTITY
    key = _key(namespace, version, wanted)
    found = _local.get(key) or _shared_get(key)
    if found is None:
        other = _local.get(_key(namespace, version, IDENTITY if gzip_ok else GZIP))
        if other is not None and other[0] == GZIP and not gzip_ok:
            found = (IDENTITY, gzip.decompress(other[1]))
        elif other is not None and other[0] == IDENTITY and gzip_ok:
            found = compress(other[1])
    if found is not None:
        _local.put(key, found)
        return found
    lock = f"building:{namespace}:{version}"
    locked = _shared_add(lock)
    if not locked:
        found = _wait_for(key, lock)
        if found is not None:
            _local.put(key, found)
            return found
    try:
        return _build_and_store(namespace, version, build, gzip_ok=gzip_ok, both=both)
    finally:
        if locked:
            _shared_delete(lock)


def _wait_for(key: str, lock: str) -> Representation | None:
    """The body another request is building, once it is in the shared cache (None: the
    builder failed and freed its lock, or BUILD_WAIT went by)."""
    deadline = time.monotonic() + BUILD_WAIT
    pause = BUILD_POLL
    while time.monotonic() < deadline:
        time.sleep(pause)
        found = _shared_get(key)
        if found is not None or not _shared_has(lock):
            return found
        # Backing off: under load a build takes long, and a dozen waiters polling every 20 ms
        # cost the machine more than the build.
        pause = min(pause * 2, BUILD_POLL_MAX)
    return None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a body is built: a build allocates tens of thousands
    of objects that live until it ends (10,000 plotted rows), and the collections they set off
    kept walking them: a third of /plots/' build. Reference counting still frees the rest."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build_and_store(
    namespace: str,
    version: str,
    build: Callable[[], str | bytes],
    *,
    gzip_ok: bool,
    both: bool,
) -> Representation:
    with _collector_paused():
        built = build()
    body = built.encode() if isinstance(built, str) else built
    plain: Representation = (IDENTITY, body)
    stored = {_key(namespace, version, IDENTITY): plain}
    packed = compress(body) if both or gzip_ok else plain
    if both or gzip_ok:
        stored[_key(namespace, version, GZIP)] = packed
    _shared_set(stored)
    chosen = packed if gzip_ok else plain
    _local.put(_key(namespace, version, GZIP if gzip_ok else IDENTITY), chosen)
    return chosen


def cached_bytes(namespace: str, version: str, build: Callable[[], str | bytes]) -> bytes:
    """A fragment (a figure's JSON, a rendered table) of `namespace` at data `version`,
    uncompressed, built at most once per version across processes."""
    return representation(namespace, version, build, gzip_ok=False, both=False)[1]


def accepts_gzip(request: HttpRequest) -> bool:
    """Whether the request's Accept-Encoding takes gzip (a `q=0` refuses it)."""
    for item in request.headers.get("Accept-Encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().removeprefix("q=").strip() if "q=" in params else "1"
        try:
            return float(quality) > 0
        except ValueError:
            return False
    return False


def cached_response(
    request: HttpRequest,
    namespace: str,
    validator: Validator,
    build: Callable[[], str | bytes],
    *,
    content_type: str,
) -> HttpResponse:
    """A conditional response (304 when the client's copy is current) whose body is cached by
    the validator's ETag and sent gzip-compressed to clients that accept it."""

    def respond() -> HttpResponse:
        encoding, body = representation(
            namespace, validator.etag, build, gzip_ok=accepts_gzip(request)
        )
        response = HttpResponse(body, content_type=content_type)
        if encoding == GZIP:
            response["Content-Encoding"] = GZIP
        return response

    response = conditional(request, validator, respond)
    patch_vary_headers(response, ["Accept-Encoding"])
    return response
