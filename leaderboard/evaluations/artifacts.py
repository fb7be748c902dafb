"""This site's artifact store (evaluator/artifacts.py): the bucket TRELLIS_ARTIFACT_STORE names,
else the folder TRELLIS_ARTIFACT_ROOT. Jobs name it to GPU workers; ingest checks what they wrote
in it; the download streams from it."""

from __future__ import annotations

from django.conf import settings

from evaluator.artifacts import ArtifactStore, open_store


def artifact_store() -> ArtifactStore:
    # Built per call from the settings (cheap: the S3 client is cached per process), so a
    # changed setting (a test's) takes effect at once.
    return open_store(settings.TRELLIS_ARTIFACT_STORE or settings.TRELLIS_ARTIFACT_ROOT)
