"""Weight fingerprints of catalog nodes (docs/provenance.md): stored with the repository, read
with ranged reads for nodes never evaluated, and the LSH keys that find a model's candidates
without a scan of the catalog.

Reading a fingerprint never runs model code: it reads safetensors headers and byte ranges
(evaluator.fingerprint). Reads happen outside any transaction; `store` writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from evaluator.fingerprint import (
    FingerprintError,
    HubReader,
    LocalReader,
    RangeReader,
    check,
    fingerprint,
)
from evaluator.provenance import Sketch, band_keys, digest_key
from leaderboard.catalog.models import (
    FingerprintBand,
    Repository,
    RepositoryKind,
    WeightFingerprint,
)
from leaderboard.catalog.sources import get_source
from leaderboard.catalog.sources.base import RepoSnapshot, SourceError

# Concurrent ranges per Hub fingerprint: each range is a round trip.
HUB_WORKERS = 8


class Unreadable(Exception):
    """The weights cannot be fingerprinted (no safetensors, card-only, source down); the
    message says why."""


def reader_for(snapshot: RepoSnapshot) -> RangeReader:
    if snapshot.local_path:
        return LocalReader(Path(snapshot.local_path))
    return HubReader(
        snapshot.repo_id,
        snapshot.sha,
        endpoint=getattr(settings, "HF_ENDPOINT", "") or None,
        token=getattr(settings, "HF_TOKEN", "") or None,
        timeout=float(getattr(settings, "TRELLIS_HUB_TIMEOUT", 20.0)),
        files=snapshot.files,
    )


def read_snapshot(snapshot: RepoSnapshot) -> dict[str, Any]:
    """The fingerprint of the weights of a repository already read from the source (the
    submission checks' snapshot). Raises Unreadable."""
    try:
        reader = reader_for(snapshot)
        workers = 1 if isinstance(reader, LocalReader) else HUB_WORKERS
        return fingerprint(reader, workers=workers)
    except (FingerprintError, OSError) as exc:
        raise Unreadable(f"{snapshot.repo_id}: {exc}") from exc
    except Exception as exc:  # huggingface_hub's HTTP errors: the Hub is down or refuses
        raise Unreadable(f"{snapshot.repo_id}: {type(exc).__name__}: {exc}") from exc


def read(repo_id: str, revision: str | None = None) -> tuple[dict[str, Any], str]:
    """The fingerprint of `repo_id` at `revision` read from the model source with ranged reads,
    and the commit it was read at. Raises Unreadable."""
    try:
        snapshot = get_source().snapshot(repo_id, revision or None, "model", card_only=True)
    except SourceError as exc:
        raise Unreadable(f"{repo_id}: {exc}") from exc
    return read_snapshot(snapshot), snapshot.sha


def store(
    repository: Repository,
    data: dict[str, Any],
    *,
    source: str,
    revision: str = "",
) -> WeightFingerprint:
    """Validate and keep `data` as `repository`'s fingerprint (replacing an older one), with
    its LSH band keys."""
    check(data)
    sketch = Sketch.of(repository.repo_id, data)
    with transaction.atomic():
        row, _ = WeightFingerprint.objects.update_or_create(
            repository=repository,
            defaults={
                "revision": revision,
                "architecture": data["architecture"],
                "weights_digest": data["weights_digest"],
                "digest_key": digest_key(sketch),
                "data": data,
                "source": source,
                "bytes_read": int(data.get("cost", {}).get("bytes_read", 0)),
            },
        )
        row.bands.all().delete()
        FingerprintBand.objects.bulk_create(
            FingerprintBand(fingerprint=row, key=key) for key in band_keys(sketch)
        )
    return row


def sketch_of(row: WeightFingerprint) -> Sketch:
    return Sketch.of(row.repository.repo_id, row.data)


def candidates(row: WeightFingerprint, also: Iterable[int] = ()) -> list[WeightFingerprint]:
    """Fingerprints sharing an LSH band or the digest with `row` whose repository entered the
    catalog before `row`'s (a parent is older), plus those of `also` (declared parents, whatever
    their age); oldest first."""
    sketch = sketch_of(row)
    keys = band_keys(sketch)
    near = (
        WeightFingerprint.objects.filter(bands__key__in=keys)
        .exclude(pk=row.pk)
        .filter(repository__created_at__lt=row.repository.created_at)
        .values_list("pk", flat=True)
    )
    same = WeightFingerprint.objects.filter(digest_key=row.digest_key).exclude(pk=row.pk)
    ids = set(near) | set(same.values_list("pk", flat=True))
    ids |= set(
        WeightFingerprint.objects.filter(repository_id__in=list(also)).values_list("pk", flat=True)
    )
    ids.discard(row.pk)
    return list(
        WeightFingerprint.objects.filter(pk__in=ids)
        .select_related("repository")
        .order_by("repository__created_at", "repository_id")
    )


def copies_of(data: dict[str, Any]) -> list[Repository]:
    """Models whose stored weights are byte-identical to `data`'s (the same digest)."""
    return list(
        Repository.objects.filter(
            kind=RepositoryKind.MODEL,
            fingerprint__architecture=data["architecture"],
            fingerprint__weights_digest=data["weights_digest"],
        ).order_by("created_at", "pk")
    )
