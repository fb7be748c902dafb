"""Parameter counts from safetensors headers: the 8-byte length and JSON header, never tensors."""

from __future__ import annotations

import json
import math
import struct
from typing import IO, Any

# safetensors itself refuses headers above 100 MB; a bigger length means a corrupt file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsHeaderError(ValueError):
    """The file does not start with a valid safetensors header."""


def read_header(handle: IO[bytes]) -> dict[str, Any]:
    prefix = handle.read(8)
    if len(prefix) != 8:
        raise SafetensorsHeaderError("file is shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length == 0 or length > MAX_HEADER_BYTES:
        raise SafetensorsHeaderError(f"header length {length} is out of range")
    raw = handle.read(length)
    if len(raw) != length:
        raise SafetensorsHeaderError("file ends inside its header")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SafetensorsHeaderError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("header is not a JSON object")
    return header


def parameters_from_header(handle: IO[bytes]) -> int:
    """Sum over tensors of the product of each shape (a scalar, shape [], counts one)."""
    total = 0
    for name, info in read_header(handle).items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and dim >= 0 for dim in shape
        ):
            raise SafetensorsHeaderError(f"tensor {name!r} has no valid shape")
        total += math.prod(shape)
    return total


def weight_files_for_count(files: list[str], index: dict[str, Any] | None) -> list[str]:
    """The safetensors files whose tensors make up the model: the shards named by the index when
    there is one, else every top-level *.safetensors file (sub-folders hold other variants)."""
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            return []
        return sorted({str(shard) for shard in weight_map.values()})
    return sorted(name for name in files if "/" not in name and name.endswith(".safetensors"))
