"""Weight fingerprints read through byte ranges: what is read, what is kept, and that the Hub
source asks only for ranges (the fake Hub counts them)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evaluator.fingerprint import (
    CHUNK_ELEMENTS,
    CHUNKS,
    SCHEMA,
    VERSION,
    FingerprintError,
    HubReader,
    LocalReader,
    check,
    fingerprint,
    fingerprint_path,
    sample_positions,
    sketch_values,
)


def write_model(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        return folder
    weight_map = {}
    for index in range(shards):
        shard = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[index::shards]}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layers.0.attn.weight": torch.randn(300, 200, generator=generator) * 0.02,
        "layers.0.norm.weight": torch.ones(200),
        "embed.weight": torch.randn(50, 16, generator=generator),
    }


def by_name(fp: dict) -> dict[str, dict]:
    return {tensor["name"]: tensor for tensor in fp["tensors"]}


def test_a_local_fingerprint_reads_headers_and_sampled_runs_only(tmp_path):
    tensors = weights()
    folder = write_model(tmp_path / "m", tensors)
    reader = LocalReader(folder)
    fp = fingerprint(reader)

    assert (fp["schema"], fp["version"], fp["exact"]) == (SCHEMA, VERSION, False)
    assert fp["parameters"] == 300 * 200 + 200 + 50 * 16
    assert [t["name"] for t in fp["tensors"]] == [
        "embed.weight",
        "layers.0.attn.weight",
        "layers.0.norm.weight",
    ]
    big = by_name(fp)["layers.0.attn.weight"]
    runs = sample_positions([300, 200])
    assert len(runs) == CHUNKS and all(count == CHUNK_ELEMENTS for _, count in runs)
    flat = tensors["layers.0.attn.weight"].flatten().numpy()
    expected = np.concatenate([flat[first : first + count] for first, count in runs])
    assert np.array_equal(sketch_values(big), expected)
    assert big["sha256"] is None  # not read whole
    # Small tensors are read whole, so their exact hash comes for free.
    small = by_name(fp)["embed.weight"]
    assert small["sha256"] == hashlib.sha256(tensors["embed.weight"].numpy().tobytes()).hexdigest()
    size = (folder / "model.safetensors").stat().st_size
    # 8 + header + two runs of 512 float32 + the small tensors, never the 240 KB matrix.
    sampled = 4 * (CHUNKS * CHUNK_ELEMENTS + 200 + 50 * 16)
    assert reader.bytes_read < sampled + 1024
    assert reader.bytes_read < size / 10
    assert reader.requests == 2 + 4  # length, header, two runs, two small tensors
    assert json.loads(json.dumps(fp)) == fp


def test_sample_positions_depend_on_the_shape_only_and_cover_the_tensor():
    assert sample_positions([300, 200]) == sample_positions((300, 200))
    assert sample_positions([300, 200]) != sample_positions([200, 300])
    assert sample_positions([10, 10]) == [(0, 100)]
    runs = sample_positions([4096, 4096])
    assert runs[0][0] < 4096 * 4096 // 2 <= runs[1][0]
    assert all(first + count <= 4096 * 4096 for first, count in runs)


def test_exact_hashes_read_every_byte(tmp_path):
    tensors = weights()
    folder = write_model(tmp_path / "m", tensors)
    reader = LocalReader(folder)
    fp = fingerprint(reader, exact=True)
    raw = tensors["layers.0.attn.weight"].numpy().tobytes()
    assert by_name(fp)["layers.0.attn.weight"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert reader.bytes_read >= len(raw)
    assert fp["exact"] is True


def test_casts_keep_the_architecture_and_sample_the_same_positions(tmp_path):
    tensors = weights()
    full = fingerprint_path(write_model(tmp_path / "f32", tensors))
    half = fingerprint_path(
        write_model(tmp_path / "bf16", {k: v.to(torch.bfloat16) for k, v in tensors.items()})
    )
    assert full["architecture"] == half["architecture"]
    assert full["weights_digest"] != half["weights_digest"]
    name = "layers.0.attn.weight"
    assert by_name(half)[name]["dtype"] == "BF16"
    expected = tensors[name].to(torch.bfloat16).float().flatten().numpy()
    runs = sample_positions([300, 200])
    assert np.array_equal(
        sketch_values(by_name(half)[name]),
        np.concatenate([expected[first : first + count] for first, count in runs]),
    )


def test_a_copy_has_the_same_digest_whatever_the_file_layout(tmp_path):
    tensors = weights()
    one = fingerprint_path(write_model(tmp_path / "one", tensors))
    sharded = fingerprint_path(write_model(tmp_path / "sharded", tensors, shards=2))
    assert one["weights_digest"] == sharded["weights_digest"]
    assert one["tensors"] == sharded["tensors"]


def test_an_index_naming_a_missing_shard_is_refused_with_its_name(tmp_path):
    folder = write_model(tmp_path / "m", weights(), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FingerprintError, match="names missing shards: model-00002-of-00002"):
        fingerprint_path(folder)


def test_no_weights_and_corrupt_headers_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("card")
    with pytest.raises(FingerprintError, match="has no safetensors weights"):
        fingerprint_path(empty)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(FingerprintError, match="header length 1000000000000 is out of range"):
        fingerprint_path(corrupt)
    (corrupt / "model.safetensors").write_bytes((5).to_bytes(8, "little") + b"nope!")
    with pytest.raises(FingerprintError, match="header is not JSON"):
        fingerprint_path(corrupt)


def test_check_refuses_what_does_not_match_this_version(tmp_path):
    fp = fingerprint_path(write_model(tmp_path / "m", weights()))
    assert check(copy.deepcopy(fp)) == fp
    wrong = copy.deepcopy(fp) | {"version": VERSION + 1}
    with pytest.raises(ValueError, match="unsupported fingerprint version"):
        check(wrong)
    short = copy.deepcopy(fp)
    short["tensors"][1]["sketch"] = base64.b64encode(b"\0" * 8).decode()
    with pytest.raises(ValueError, match=r"'layers\.0\.attn\.weight': sketch has the wrong length"):
        check(short)
    renamed = copy.deepcopy(fp)
    renamed["tensors"][0]["name"] = "other.weight"
    with pytest.raises(ValueError, match="architecture key does not match"):
        check(renamed)
    with pytest.raises(ValueError, match=r"not a trellis\.fingerprint object"):
        check({"schema": "x"})


def test_the_hub_reader_asks_for_ranges_and_its_bytes_are_bounded(fake_hub):
    # A 4 MB matrix: the fingerprint must cost a few kilobytes of ranges, never the file.
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "layers.0.mlp.weight": torch.randn(1024, 1024, generator=generator),
        "layers.1.mlp.weight": torch.randn(1024, 1024, generator=generator),
        "norm.weight": torch.ones(1024),
    }
    folder = write_model(fake_hub.root / "acme" / "big", tensors)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# big\n")
    local = fingerprint_path(folder)

    reader = HubReader("acme/big", "main", endpoint=fake_hub.url)
    remote = fingerprint(reader, workers=4)

    assert remote["tensors"] == local["tensors"]
    assert remote["weights_digest"] == local["weights_digest"]
    downloads = [
        (path, ranged) for method, path, ranged in fake_hub.requests if "/resolve/" in path
    ]
    assert downloads and all(ranged is not None for _, ranged in downloads)
    requested = 0
    for _, ranged in downloads:
        start, end = (int(x) for x in ranged.removeprefix("bytes=").split("-"))
        requested += end - start + 1
    size = (folder / "model.safetensors").stat().st_size
    header = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    # Per matrix two runs of 512 float32; the norm read whole; the length and the header.
    bound = 8 + header + 2 * CHUNKS * CHUNK_ELEMENTS * 4 + 1024 * 4
    assert requested == bound
    assert reader.bytes_read == bound
    assert requested < size / 500
    assert reader.requests == len(downloads) == 2 + 2 * CHUNKS + 1
    assert math.isclose(size, 8 * 1024 * 1024 + 4096 + 8 + header)


def test_the_hub_reader_stops_reading_when_a_server_ignores_ranges(fake_hub):
    generator = torch.Generator().manual_seed(4)
    folder = write_model(
        fake_hub.root / "acme" / "m", {"w": torch.randn(1024, 1024, generator=generator)}
    )
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# m\n")
    fake_hub.ignore_ranges = True
    reader = HubReader("acme/m", "main", endpoint=fake_hub.url, files=["model.safetensors"])
    data = (folder / "model.safetensors").read_bytes()
    assert reader.read("model.safetensors", 1000, 16) == data[1000:1016]
    assert reader.requests == 1
    # The answer is the whole 4 MB file; the reader stops after the block holding its range.
    assert 1016 <= reader.bytes_read < len(data) / 4


def test_the_worker_fingerprints_what_it_evaluated_with_exact_hashes(tmp_path):
    from types import SimpleNamespace

    from evaluator.run import weights_fingerprint

    tensors = weights()
    folder = write_model(tmp_path / "acme" / "m", tensors)
    job = SimpleNamespace(model_source="local", repo_id="acme/m", revision="main")
    fp = weights_fingerprint(job, str(folder))  # type: ignore[arg-type]
    assert fp is not None
    assert fp["exact"] is True
    raw = tensors["layers.0.attn.weight"].numpy().tobytes()
    assert by_name(fp)["layers.0.attn.weight"]["sha256"] == hashlib.sha256(raw).hexdigest()
    # Unreadable weights never fail an evaluation: no fingerprint, a warning in the log.
    gone = SimpleNamespace(model_source="local", repo_id="acme/gone", revision="main")
    assert weights_fingerprint(gone, str(tmp_path / "gone")) is None  # type: ignore[arg-type]
