"""The catalog: every repository anyone referenced (models and datasets) and the lineage edges
between them. Submitted or not, a referenced repository is a node of the lineage graph."""

from __future__ import annotations

from django.db import models


class RepositoryKind(models.TextChoices):
    MODEL = "model", "model"
    DATASET = "dataset", "dataset"


class LineageStatus(models.TextChoices):
    """Derived status of a node; written only by leaderboard.integrity (docs/integrity.md)."""

    CLEAN = "clean", "clean"
    RESOLVING = "resolving", "resolving"
    UNDER_REVIEW = "under-review", "under review"
    INCOMPLETE = "incomplete", "incomplete"
    TAINTED = "tainted", "tainted"
    FLAGGED = "flagged", "flagged"


class Relation(models.TextChoices):
    FINE_TUNE = "fine-tune", "fine-tune"
    MERGE = "merge", "merge"
    ADAPTER = "adapter", "adapter"
    QUANTIZED = "quantized", "quantized"
    TRAINED_ON = "trained-on", "trained on (dataset)"


class DeclaredIn(models.TextChoices):
    CARD = "card", "model card"
    MERGEKIT = "mergekit", "mergekit config"
    ADAPTER_CONFIG = "adapter-config", "adapter config"
    SYNTHETIC = "synthetic", "synthetic catalog"
    # Not declared: found from the weights (docs/provenance.md) and confirmed by a maintainer.
    WEIGHTS = "weights", "found from weights"


class Repository(models.Model):
    """A node of the lineage graph: a model or dataset repository on the model source."""

    kind = models.CharField(
        max_length=8, choices=RepositoryKind.choices, default=RepositoryKind.MODEL
    )
    repo_id = models.CharField(max_length=200, help_text="<org>/<name> on the model source")
    # What the source said when the node was last resolved (its card, license, revision).
    resolved_revision = models.CharField(max_length=64, blank=True)
    license = models.CharField(max_length=100, blank=True)
    card_data = models.JSONField(default=dict, blank=True)
    # False while the node's own declared parents could not be read (missing, unreachable,
    # depth limit): integrity derives `incomplete` for it and its descendants from this.
    lineage_resolved = models.BooleanField(default=False)
    resolution_note = models.CharField(max_length=300, blank=True)
    # True from a submission's commit until the task resolving the ancestors above its declared
    # parents has run, on the submitted model and on each ancestor left for that task to read:
    # integrity derives `resolving` for them and their descendants from this.
    lineage_pending = models.BooleanField(default=False)
    is_synthetic = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Derived lineage status (decision 3): cached here so the ranking joins one table.
    status = models.CharField(
        max_length=16, choices=LineageStatus.choices, default=LineageStatus.CLEAN, db_index=True
    )
    # Unless clean: the shortest explaining path, as a list of steps.
    status_path = models.JSONField(default=list, blank=True)
    status_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "repo_id"], name="unique_repository_per_kind"),
        ]
        ordering = ["repo_id"]

    def __str__(self) -> str:
        return self.repo_id if self.kind == RepositoryKind.MODEL else f"dataset:{self.repo_id}"

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/", 1)[-1]


class LineageEdge(models.Model):
    """`child` declares `parent` (a model it derives from, or a dataset it was trained on)."""

    child = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="parent_edges")
    parent = models.ForeignKey(Repository, on_delete=models.CASCADE, related_name="child_edges")
    relation = models.CharField(max_length=16, choices=Relation.choices)
    declared_in = models.CharField(
        max_length=16, choices=DeclaredIn.choices, default=DeclaredIn.CARD
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["child", "parent"], name="unique_lineage_edge"),
            models.CheckConstraint(
                condition=~models.Q(child=models.F("parent")), name="no_self_edge"
            ),
        ]
        indexes = [models.Index(fields=["parent", "child"])]

    def __str__(self) -> str:
        return f"{self.child} ← {self.parent} ({self.relation})"


class FingerprintSource(models.TextChoices):
    WORKER = "worker", "evaluation worker"
    WEB = "web", "ranged reads on the web side"


class WeightFingerprint(models.Model):
    """A model's weight fingerprint (evaluator.fingerprint, docs/provenance.md) at one
    revision: per-tensor hashes and sampled values, read without loading the weights."""

    repository = models.OneToOneField(
        Repository, on_delete=models.CASCADE, related_name="fingerprint"
    )
    revision = models.CharField(max_length=64, blank=True)
    architecture = models.CharField(max_length=32, db_index=True)
    weights_digest = models.CharField(max_length=64, db_index=True)
    digest_key = models.CharField(max_length=32, db_index=True)
    data = models.JSONField()
    source = models.CharField(max_length=8, choices=FingerprintSource.choices)
    bytes_read = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"fingerprint of {self.repository}"


class FingerprintBand(models.Model):
    """One LSH bucket key of a fingerprint: candidates are the fingerprints sharing a key."""

    fingerprint = models.ForeignKey(
        WeightFingerprint, on_delete=models.CASCADE, related_name="bands"
    )
    key = models.CharField(max_length=64, db_index=True)

    def __str__(self) -> str:
        return self.key
