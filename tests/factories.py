"""Test data in one place: factory_boy factories for the core records, ranked models on a real
suite version (for the public views), and evaluator result payloads with their details artifact
(for ingest). On-disk model repositories are built by `tests/builders.py`: files, not records."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from evaluator.suites import load_suite
from leaderboard.catalog.models import LineageEdge, Relation, Repository, RepositoryKind
from leaderboard.celery import app
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.submissions.models import ModelType, Precision, Submission, SubmissionState

# --- records -------------------------------------------------------------------------------------


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.django.Password("pw-for-tests-123")


class RepositoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Repository
        django_get_or_create = ("kind", "repo_id")

    kind = RepositoryKind.MODEL
    repo_id = factory.Sequence(lambda n: f"org{n % 7}/model-{n}")
    license = "apache-2.0"
    lineage_resolved = True


class DatasetFactory(RepositoryFactory):
    kind = RepositoryKind.DATASET
    repo_id = factory.Sequence(lambda n: f"data-org/dataset-{n}")


class EdgeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LineageEdge

    child = factory.SubFactory(RepositoryFactory)
    parent = factory.SubFactory(RepositoryFactory)
    relation = Relation.FINE_TUNE


class SubmissionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Submission

    repository = factory.SubFactory(RepositoryFactory)
    requested_revision = "main"
    revision = factory.Sequence(lambda n: hashlib.sha1(str(n).encode()).hexdigest())
    precision = Precision.BFLOAT16
    model_type = ModelType.FINE_TUNED
    parameter_count = 135_000_000
    architecture = "LlamaForCausalLM"
    license = "apache-2.0"
    card_text = "---\nlicense: apache-2.0\n---\n# A model\n"
    submitter = factory.SubFactory(UserFactory)
    state = SubmissionState.QUEUED


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EvaluationRun

    submission = factory.SubFactory(SubmissionFactory)
    suite_name = "quick"
    suite_version = "1"
    state = RunState.QUEUED


class TaskScoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TaskScore

    run = factory.SubFactory(RunFactory, state=RunState.FINISHED)
    task = "arc_easy"
    metric = "acc"
    value = 0.5
    stderr = 0.02
    n_samples = 100
    num_fewshot = 0


# --- ranked models (public views) ----------------------------------------------------------------

# The suite the public tests rank on: shipped by the evaluator, never edited once shipped.
SUITE, VERSION = "open-llm-v1", "1"
TASKS = ("arc_challenge", "hellaswag", "mmlu", "winogrande")
FEWSHOT = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "winogrande": 5}
METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "winogrande": "acc"}


def repository(repo_id: str, *, kind: str = RepositoryKind.MODEL, **fields: Any) -> Repository:
    """The repository `repo_id`, created (lineage resolved) unless it exists."""
    return RepositoryFactory(kind=kind, repo_id=repo_id, **fields)


def edge(child: Repository, parent: Repository, relation: str = Relation.FINE_TUNE) -> None:
    EdgeFactory(child=child, parent=parent, relation=relation)


def ranked(
    repo_id: str,
    scores: dict[str, float] | float,
    *,
    stderr: float | None = 0.01,
    model_type: str = ModelType.FINE_TUNED,
    precision: str = Precision.BFLOAT16,
    parameter_count: int = 1_000_000_000,
    license: str = "apache-2.0",
    merge_method: str = "",
    is_synthetic: bool = False,
    created_at: datetime | None = None,
    card_text: str = "---\nlicense: apache-2.0\n---\n# A model\n\nIt is a model.\n",
    payload: dict[str, Any] | None = None,
    artifact_path: str = "",
    version: str = VERSION,
    refresh: bool = True,
) -> Submission:
    """A model with one submission and one finished run on the test suite, already ranked.
    `scores` is one value for every task, or a value per task (0..1)."""
    repo = repository(repo_id, license=license, is_synthetic=is_synthetic)
    values = scores if isinstance(scores, dict) else dict.fromkeys(TASKS, scores)
    revision = hashlib.sha1(f"{repo_id}:{precision}:{version}".encode()).hexdigest()
    submission = Submission.objects.create(
        repository=repo,
        requested_revision="main",
        revision=revision,
        precision=precision,
        model_type=model_type,
        parameter_count=parameter_count,
        license=license,
        card_text=card_text,
        merge_method=merge_method,
        is_synthetic=is_synthetic,
        state="finished",
    )
    if created_at is not None:
        Submission.objects.filter(pk=submission.pk).update(created_at=created_at)
        submission.refresh_from_db()
    run = EvaluationRun.objects.create(
        submission=submission,
        suite_name=SUITE,
        suite_version=version,
        state=RunState.FINISHED,
        finished_at=timezone.now(),
        payload=payload,
        artifact_path=artifact_path,
        is_synthetic=is_synthetic,
    )
    TaskScore.objects.bulk_create(
        TaskScore(
            run=run,
            task=task,
            metric=METRIC[task],
            value=value,
            stderr=stderr,
            n_samples=1000,
            num_fewshot=FEWSHOT[task],
        )
        for task, value in values.items()
    )
    if refresh:
        from leaderboard.public.projection import refresh_entries_for

        refresh_entries_for([submission.pk])
    return submission


def flag(target: Repository, maintainer: Any, kind: str = "contamination") -> None:
    """Confirm a flag on `target` through the flow (its descendants become tainted)."""
    from leaderboard.flow import file_report, resolve

    filed = file_report(
        reporter=None, target=target, kind=kind, evidence="Test items appear in its training data."
    )
    resolve(filed.report.pk, "confirm", "Confirmed from the overlap report.", maintainer)


def report(target: Repository, kind: str = "contamination") -> None:
    """An open report on `target` (it and its descendants are under review)."""
    from leaderboard.flow import file_report

    file_report(reporter=None, target=target, kind=kind, evidence="Suspicious jump on MMLU.")


# --- evaluator payloads and the test broker (evaluations) -----------------------------------------

QUEUES = ("trellis", "gpu-small", "gpu-large")


def write_artifact(root: Path, run_id: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    relative = Path(str(run_id)) / "quick@1-details.jsonl.gz"
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as out:
        for row in rows:
            out.write(json.dumps(row).encode() + b"\n")
    data = path.read_bytes()
    return {
        "path": relative.as_posix(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "rows": len(rows),
    }


def quick_payload(run_id: int, artifact_root: Path, values: dict[str, float] | None = None) -> dict:
    """A payload for the quick suite as the evaluator returns it, artifact written."""
    suite = load_suite("quick")
    values = values or {}
    tasks = [
        {
            "task": task.key,
            "lm_eval_task": task.lm_eval_task,
            "metric": task.metric,
            "value": values.get(task.key, 0.5),
            "stderr": 0.05,
            "n_samples": 4,
            "num_fewshot": task.num_fewshot,
        }
        for task in suite.tasks
    ]
    rows = [
        {
            "task": "arc_easy",
            "lm_eval_task": "arc_easy",
            "doc_id": 0,
            "choices": ["a", "b"],
            "loglikelihoods": [-1.5, -2.5],
            "prediction": 0,
            "gold": 0,
            "correct": True,
        }
    ]
    return {
        "run_id": run_id,
        "suite": {"name": suite.name, "version": suite.version},
        "tasks": tasks,
        "versions": {"lm_eval": "0.4.13", "transformers": "5.23.0", "torch": "2.13.0"},
        "dtype": "bfloat16",
        "device": "cpu",
        "batch_size": 8,
        "backend": "trellis-prefix",
        "duration_seconds": 12.5,
        "loglikelihood_requests": 1234,
        "reproduce": {
            "command": "lm_eval --model hf --model_args pretrained=x --tasks arc_easy",
            "task_overrides": {"arc_easy.yaml": "include: arc_easy"},
        },
        "artifact": write_artifact(artifact_root, run_id, rows),
    }


DELETE = object()


def changed(payload: dict, path: str, value: Any) -> dict:
    """A deep copy of `payload` with the dotted `path` (list indexes as numbers) set to `value`,
    or removed when `value` is DELETE."""
    result = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return result


def drain(queue: str) -> list[tuple[str, list[Any]]]:
    """Take every message off `queue` of the test broker: (task name, args) in order."""
    found = []
    with app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = simple.get(block=False)
                except simple.Empty:
                    break
                found.append((message.headers["task"], message.payload[0]))
                message.ack()
        finally:
            simple.close()
    return found
