"""Weight fingerprints: per-tensor content hashes and small seeded sketches of each weight, read
from safetensors files through byte ranges (a local file or HTTP ranges on the Hub) without
loading a file.

A fingerprint is a JSON-able dict (`SCHEMA`, `VERSION`) that crosses the trust boundary like an
evaluation result: the worker computes it where the weights already are, the web side computes it
for never-evaluated parents with ranged reads, and `evaluator.provenance` relates fingerprints.

What is read per tensor:
- its header entry (name, dtype, shape, data offsets);
- `CHUNKS` contiguous runs of `CHUNK_ELEMENTS` elements at offsets drawn from a generator seeded
  by the tensor's shape alone, so models of one architecture are sampled at the same positions
  whatever their names, dtypes or files; a tensor smaller than that is read whole;
- with `exact=True`, every byte (streamed in blocks) for a sha256 of the whole tensor.

The sketch keeps the sampled values as float32, which holds bf16 and fp16 values exactly, so a
cast can be told from a fine-tune by rounding (see `evaluator.provenance`). Contiguous runs
rather than scattered rows x columns keep the Hub cost at about `CHUNKS` requests per tensor:
~600 requests and ~4 MB for a 7B model in bf16.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from evaluator.vocabulary import SAFETENSORS_SUFFIX

SCHEMA = "trellis.fingerprint"
VERSION = 1
SEED = 20250601
CHUNKS = 2
CHUNK_ELEMENTS = 512
INDEX_FILE = "model.safetensors.index.json"
# safetensors itself refuses headers above 100 MB; a longer one means a corrupt or hostile file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_INDEX_BYTES = 8 * 1024 * 1024
# Ranges closer than this are fetched as one (the gap is cheaper than another request).
COALESCE_GAP = 4096
EXACT_BLOCK = 8 * 1024 * 1024

# dtype -> (bytes per element, numpy reader to float32 or None when not a float we sketch)
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
DTYPE_BYTES = {
    **FLOAT_DTYPES,
    "I64": 8,
    "U64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class FingerprintError(ValueError):
    """The repository's weights cannot be fingerprinted (no safetensors, a corrupt header, a
    missing shard); the message says which file and why."""


# --- readers ----------------------------------------------------------------------------------


class RangeReader(Protocol):
    """Byte ranges of a repository's files; counts what it read."""

    bytes_read: int
    requests: int

    def files(self) -> list[str]: ...

    def read(self, name: str, start: int, length: int) -> bytes: ...


class _Counted:
    def __init__(self) -> None:
        self.bytes_read = 0
        self.requests = 0
        self._lock = threading.Lock()

    def _count(self, size: int) -> None:
        with self._lock:
            self.bytes_read += size
            self.requests += 1


class LocalReader(_Counted):
    """A repository folder on disk (a worker's snapshot or a local model root)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file())

    def read(self, name: str, start: int, length: int) -> bytes:
        with open(self.path / name, "rb") as handle:
            handle.seek(start)
            data = handle.read(length)
        self._count(len(data))
        return data


class HubReader(_Counted):
    """A Hub repository at a pinned revision, read with HTTP `Range` requests through
    huggingface_hub's session (so HF_ENDPOINT, HF_TOKEN and its proxies/SSL settings apply)."""

    def __init__(
        self,
        repo_id: str,
        revision: str,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        timeout: float = 20.0,
        files: Sequence[str] | None = None,
    ) -> None:
        from huggingface_hub import constants

        super().__init__()
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self._files = sorted(files) if files is not None else None

    def files(self) -> list[str]:
        if self._files is None:
            from huggingface_hub import HfApi

            info = HfApi(endpoint=self.endpoint, token=self.token).model_info(
                self.repo_id, revision=self.revision, timeout=self.timeout
            )
            self._files = sorted(sibling.rfilename for sibling in info.siblings or [])
        return self._files

    def read(self, name: str, start: int, length: int) -> bytes:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        if length <= 0:
            return b""
        url = hf_hub_url(self.repo_id, name, revision=self.revision, endpoint=self.endpoint)
        headers = build_hf_headers(
            token=self.token, headers={"Range": f"bytes={start}-{start + length - 1}"}
        )
        received, wire = bytearray(), 0
        with get_session().stream("GET", url, headers=headers, timeout=self.timeout) as response:
            if response.status_code >= 400:
                response.read()
                hf_raise_for_status(response)
            # A server that ignores Range answers 200 with the whole file: skip to our range and
            # stop there, so at most start + length bytes cross the wire.
            skip = start if response.status_code == 200 else 0
            for chunk in response.iter_bytes():
                wire += len(chunk)
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                received += chunk
                if len(received) >= length:
                    break
        self._count(wire)
        return bytes(received[:length])


# --- safetensors layout -----------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in the file
    end: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


def weight_files(reader: RangeReader) -> list[str]:
    """The shards an index names, else every top-level *.safetensors file."""
    files = reader.files()
    if INDEX_FILE in files:
        size_hint = reader.read(INDEX_FILE, 0, MAX_INDEX_BYTES)
        try:
            weight_map = json.loads(size_hint)["weight_map"]
            names = sorted({str(shard) for shard in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FingerprintError(f"{INDEX_FILE} has no readable weight_map: {exc}") from exc
        missing = [name for name in names if name not in files]
        if missing:
            raise FingerprintError(f"{INDEX_FILE} names missing shards: {', '.join(missing)}")
        return names
    names = [name for name in files if "/" not in name and name.endswith(SAFETENSORS_SUFFIX)]
    if not names:
        raise FingerprintError("the repository has no safetensors weights")
    return names


def read_entries(reader: RangeReader, name: str) -> list[TensorEntry]:
    """The tensors of one safetensors file, from its 8-byte length and JSON header."""
    prefix = reader.read(name, 0, 8)
    if len(prefix) != 8:
        raise FingerprintError(f"{name} is shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length == 0 or length > MAX_HEADER_BYTES:
        raise FingerprintError(f"{name}: header length {length} is out of range")
    raw = reader.read(name, 8, length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FingerprintError(f"{name}: header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FingerprintError(f"{name}: header is not a JSON object")
    base = 8 + length
    entries = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(dim) for dim in info["shape"])
            begin, end = (int(offset) for offset in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FingerprintError(f"{name}: tensor {tensor!r} has a malformed entry") from exc
        width = DTYPE_BYTES.get(dtype)
        if width is not None and end - begin != width * math.prod(shape):
            raise FingerprintError(f"{name}: tensor {tensor!r} has inconsistent data offsets")
        entries.append(TensorEntry(tensor, name, dtype, shape, base + begin, base + end))
    return entries


# --- sampling ---------------------------------------------------------------------------------


def sample_positions(
    shape: Sequence[int], chunks: int = CHUNKS, chunk_elements: int = CHUNK_ELEMENTS
) -> list[tuple[int, int]]:
    """(first element, count) runs to read for a tensor of this shape: the same for every model
    of one architecture, sorted and disjoint; the whole tensor when it is small."""
    elements = math.prod(shape)
    if elements <= chunks * chunk_elements:
        return [(0, elements)] if elements else []
    seed = int.from_bytes(hashlib.sha256(f"{SEED}:{list(shape)}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    # One run per equal stripe of the tensor, so runs never overlap and cover its whole extent.
    stripe = elements // chunks
    runs = []
    for index in range(chunks):
        low = index * stripe
        high = (index + 1) * stripe if index < chunks - 1 else elements
        offset = low + int(rng.integers(0, max(1, high - low - chunk_elements + 1)))
        runs.append((offset, min(chunk_elements, high - offset)))
    return runs


def to_float32(raw: bytes, dtype: str) -> np.ndarray:
    """Little-endian float bytes as float32 (exact for bf16, fp16 and fp32)."""
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "F64":
        return np.frombuffer(raw, dtype="<f8").astype(np.float32)
    raise ValueError(f"no float conversion for {dtype}")


def _coalesced(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start - merged[-1][1] <= COALESCE_GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _read_runs(reader: RangeReader, entry: TensorEntry, runs: list[tuple[int, int]]) -> bytes:
    width = DTYPE_BYTES[entry.dtype]
    wanted = [
        (entry.start + first * width, entry.start + (first + count) * width)
        for first, count in runs
    ]
    blocks = {
        (start, end): reader.read(entry.file, start, end - start)
        for start, end in _coalesced(wanted)
    }
    out = bytearray()
    for start, end in wanted:
        for (block_start, block_end), data in blocks.items():
            if block_start <= start and end <= block_end:
                piece = data[start - block_start : end - block_start]
                if len(piece) != end - start:
                    raise FingerprintError(f"{entry.file} ends inside tensor {entry.name!r}")
                out += piece
                break
    return bytes(out)


def _exact_sha256(reader: RangeReader, entry: TensorEntry) -> str:
    digest = hashlib.sha256()
    position = entry.start
    while position < entry.end:
        size = min(EXACT_BLOCK, entry.end - position)
        data = reader.read(entry.file, position, size)
        if len(data) != size:
            raise FingerprintError(f"{entry.file} ends inside tensor {entry.name!r}")
        digest.update(data)
        position += size
    return digest.hexdigest()


def _tensor_record(reader: RangeReader, entry: TensorEntry, exact: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "name": entry.name,
        "dtype": entry.dtype,
        "shape": list(entry.shape),
    }
    if entry.dtype not in DTYPE_BYTES:
        # An unknown dtype: hash the raw bytes we can address, never interpret them.
        record["sha256"] = _exact_sha256(reader, entry) if exact else None
        record["sample_sha256"] = None
        record["sketch"] = None
        return record
    runs = sample_positions(entry.shape)
    raw = _read_runs(reader, entry, runs)
    whole = runs == [(0, entry.elements)]
    sample_digest = hashlib.sha256(f"{entry.dtype}:{list(entry.shape)}:".encode() + raw)
    record["sample_sha256"] = sample_digest.hexdigest()
    if whole:
        record["sha256"] = hashlib.sha256(raw).hexdigest()
    else:
        record["sha256"] = _exact_sha256(reader, entry) if exact else None
    if entry.dtype in FLOAT_DTYPES:
        values = to_float32(raw, entry.dtype)
        record["sketch"] = base64.b64encode(values.astype("<f4").tobytes()).decode("ascii")
    else:
        record["sketch"] = None
    return record


# --- the fingerprint --------------------------------------------------------------------------


def architecture_key(tensors: Iterable[tuple[str, Sequence[int]]]) -> str:
    """Names and shapes, not dtypes: a cast keeps its architecture."""
    listing = sorted(f"{name}:{list(shape)}" for name, shape in tensors)
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()[:32]


def weights_digest(tensors: Iterable[dict[str, Any]]) -> str:
    """One digest over every tensor's name, dtype, shape and hash (exact when known, else of its
    sample): equal for byte-identical weights whatever the files' layout or metadata."""
    lines = sorted(
        f"{t['name']}:{t['dtype']}:{t['shape']}:{t.get('sha256') or t.get('sample_sha256')}"
        for t in tensors
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fingerprint(reader: RangeReader, *, exact: bool = False, workers: int = 1) -> dict[str, Any]:
    """The fingerprint of the repository `reader` reads. `exact` streams every tensor through
    sha256 (reads the whole weights); without it only sampled runs are read and `sha256` is set
    for tensors small enough to be read whole. `workers` > 1 reads tensors concurrently (for
    HTTP, where each range costs a round trip)."""
    started = time.perf_counter()
    entries: list[TensorEntry] = []
    for name in weight_files(reader):
        entries.extend(read_entries(reader, name))
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise FingerprintError(f"tensor {entry.name!r} appears in more than one shard")
        seen.add(entry.name)
    entries.sort(key=lambda e: e.name)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            tensors = list(pool.map(lambda e: _tensor_record(reader, e, exact), entries))
    else:
        tensors = [_tensor_record(reader, entry, exact) for entry in entries]
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "sampling": {"seed": SEED, "chunks": CHUNKS, "chunk_elements": CHUNK_ELEMENTS},
        "architecture": architecture_key((t["name"], t["shape"]) for t in tensors),
        "parameters": sum(entry.elements for entry in entries),
        "exact": exact,
        "weights_digest": weights_digest(tensors),
        "tensors": tensors,
        "cost": {
            "bytes_read": reader.bytes_read,
            "requests": reader.requests,
            "seconds": round(time.perf_counter() - started, 4),
        },
    }


def fingerprint_path(path: Path | str, *, exact: bool = False) -> dict[str, Any]:
    """Fingerprint a local repository folder."""
    return fingerprint(LocalReader(path), exact=exact)


def check(value: Any) -> dict[str, Any]:
    """A fingerprint received from elsewhere, checked for shape before anything trusts it:
    the schema and version, and every tensor's fields and sketch length. Raises ValueError."""
    if not isinstance(value, dict) or value.get("schema") != SCHEMA:
        raise ValueError(f"not a {SCHEMA} object")
    if value.get("version") != VERSION:
        raise ValueError(f"unsupported fingerprint version {value.get('version')!r}")
    sampling = value.get("sampling")
    expected = {"seed": SEED, "chunks": CHUNKS, "chunk_elements": CHUNK_ELEMENTS}
    if sampling != expected:
        raise ValueError(f"sampling {sampling!r} differs from this version's {expected!r}")
    tensors = value.get("tensors")
    if not isinstance(tensors, list) or not tensors:
        raise ValueError("fingerprint has no tensors")
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ValueError("a tensor entry has no name")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"tensor {tensor['name']!r} has no valid shape")
        sketch = tensor.get("sketch")
        if sketch is not None:
            expected_len = sum(count for _, count in sample_positions(shape))
            try:
                decoded = base64.b64decode(sketch, validate=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"tensor {tensor['name']!r}: sketch is not base64") from exc
            if len(decoded) != 4 * expected_len:
                raise ValueError(f"tensor {tensor['name']!r}: sketch has the wrong length")
    if value.get("architecture") != architecture_key((t["name"], t["shape"]) for t in tensors):
        raise ValueError("architecture key does not match the tensors")
    return value


def sketch_values(tensor: dict[str, Any]) -> np.ndarray | None:
    """A tensor record's sketch as float32 values (None for non-float tensors)."""
    sketch = tensor.get("sketch")
    if sketch is None:
        return None
    return np.frombuffer(base64.b64decode(sketch), dtype="<f4").astype(np.float32)


def iter_sketches(fp: dict[str, Any]) -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
    for tensor in fp["tensors"]:
        values = sketch_values(tensor)
        if values is not None:
            yield tensor["name"], tensor["dtype"], tuple(tensor["shape"]), values
