"""A synthetic catalog for benchmarks and for exploring the UI at scale: pretrained roots,
fine-tunes, chats, adapters, quantizations and merges of merges with plausible licenses, sizes,
training datasets and scores on every shipped suite. Every row it writes is marked
`is_synthetic`, and `purge()` removes exactly those rows."""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from leaderboard.catalog.models import (
    DeclaredIn,
    LineageEdge,
    Relation,
    Repository,
    RepositoryKind,
)
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.integrity.models import AuditEntry, Report
from leaderboard.public.models import RankingEntry
from leaderboard.public.projection import refresh_entries_for
from leaderboard.public.suites import suite_names, suite_view, versions_of
from leaderboard.submissions.models import (
    ModelType,
    Precision,
    Submission,
    SubmissionState,
    WeightType,
)

ORG_PREFIX = "synthetic-"
LABS = ("atlas", "boreal", "cirrus", "delta", "ember", "fjord", "gale", "helix")
SIZES_B = (0.135, 0.36, 0.5, 1.1, 1.7, 3.0, 7.0, 8.0, 13.0, 14.0, 32.0, 70.0)
ROOT_LICENSES = ("apache-2.0", "apache-2.0", "mit", "llama3.1", "gemma", "other", "cc-by-nc-4.0")
DERIVED_LICENSES = ("apache-2.0", "apache-2.0", "apache-2.0", "mit", "cc-by-nc-4.0", "", "other")
MERGE_METHODS = ("slerp", "ties", "dare_ties", "linear", "task_arithmetic")
# (model type, relation to its parent(s), share of the derived models)
DERIVATIONS: tuple[tuple[str, str, float], ...] = (
    (ModelType.FINE_TUNED, Relation.FINE_TUNE, 0.40),
    (ModelType.CHAT, Relation.FINE_TUNE, 0.15),
    (ModelType.MERGE, Relation.MERGE, 0.28),
    (ModelType.ADAPTER, Relation.ADAPTER, 0.06),
    (ModelType.QUANTIZED, Relation.QUANTIZED, 0.05),
    (ModelType.CONTINUED_PRETRAINING, Relation.FINE_TUNE, 0.06),
)
# Share of derived models with a suspicious jump (what the plots' outlier check should find).
JUMP_RATE = 0.01
SPAN_DAYS = 730
_BATCH = 2000


class SyntheticError(ValueError):
    pass


@dataclass
class _Model:
    index: int
    repo_id: str
    model_type: str
    parameters: int
    license: str
    family: int  # index of the root it descends from
    skill: dict[str, float]  # per (suite, version, task) key: the model's true score
    parents: list[tuple[int, str]] = field(default_factory=list)  # (model index, relation)
    datasets: list[int] = field(default_factory=list)
    merge_method: str = ""
    submitted_at: datetime = field(default_factory=timezone.now)


@dataclass(frozen=True)
class Seeded:
    models: int
    datasets: int
    edges: int
    runs: int
    scores: int
    ranked: int
    seconds: float


@dataclass(frozen=True)
class Purged:
    repositories: int
    submissions: int
    runs: int
    seconds: float


def _columns() -> list[tuple[str, str, str, float]]:
    """(suite, version, task, chance rate) of every shipped suite version."""
    columns = []
    for name in suite_names():
        for version in versions_of(name):
            view = suite_view(name, version)
            if view is None or not view.defined:
                continue
            for column in view.columns:
                columns.append((name, version, column.key, column.random_baseline))
    return columns


def seed(count: int, *, rng_seed: int = 0, now: datetime | None = None) -> Seeded:
    """Create `count` synthetic models, each submitted once and evaluated on every shipped
    suite version. Refuses when synthetic rows exist already (purge first)."""
    started = time.perf_counter()
    if count < 1:
        raise SyntheticError("--models must be at least 1.")
    if Repository.objects.filter(is_synthetic=True).exists():
        raise SyntheticError("Synthetic rows exist already; run with --purge to replace them.")
    columns = _columns()
    if not columns:
        raise SyntheticError("No suite is defined: there is nothing to score the models on.")
    rng = random.Random(rng_seed)
    now = now or timezone.now()
    models, dataset_names = _plan(count, columns, rng, now)
    with transaction.atomic():
        datasets = Repository.objects.bulk_create(
            [
                Repository(
                    kind=RepositoryKind.DATASET,
                    repo_id=name,
                    license="cc-by-4.0",
                    lineage_resolved=True,
                    is_synthetic=True,
                    card_data={"license": "cc-by-4.0"},
                )
                for name in dataset_names
            ],
            batch_size=_BATCH,
        )
        repositories = Repository.objects.bulk_create(
            [_repository(model, models, dataset_names) for model in models], batch_size=_BATCH
        )
        edges = [
            LineageEdge(
                child_id=repositories[model.index].pk,
                parent_id=repositories[parent].pk,
                relation=relation,
                declared_in=DeclaredIn.SYNTHETIC,
            )
            for model in models
            for parent, relation in model.parents
        ] + [
            LineageEdge(
                child_id=repositories[model.index].pk,
                parent_id=datasets[dataset].pk,
                relation=Relation.TRAINED_ON,
                declared_in=DeclaredIn.SYNTHETIC,
            )
            for model in models
            for dataset in model.datasets
        ]
        LineageEdge.objects.bulk_create(edges, batch_size=_BATCH)
        submissions = Submission.objects.bulk_create(
            [_submission(model, repositories[model.index], rng) for model in models],
            batch_size=_BATCH,
        )
        # created_at is auto_now_add: bulk_create stamps "now", the history is set after.
        for model, submission in zip(models, submissions, strict=True):
            submission.created_at = model.submitted_at
        Submission.objects.bulk_update(submissions, ["created_at"], batch_size=500)
        suites = sorted({(suite, version) for suite, version, _task, _b in columns})
        runs = EvaluationRun.objects.bulk_create(
            [
                _run(model, submission, suite, version)
                for model, submission in zip(models, submissions, strict=True)
                for suite, version in suites
            ],
            batch_size=_BATCH,
        )
        scores = _scores(models, runs, suites, rng)
        TaskScore.objects.bulk_create(scores, batch_size=_BATCH)
        ranked = refresh_entries_for([s.pk for s in submissions])
    _analyze()
    return Seeded(
        models=len(models),
        datasets=len(datasets),
        edges=len(edges),
        runs=len(runs),
        scores=len(scores),
        ranked=ranked,
        seconds=time.perf_counter() - started,
    )


def _analyze() -> None:
    """Refresh the planner's statistics of the tables a bulk seed filled. Until autovacuum
    comes by (minutes later) PostgreSQL plans on the empty tables' statistics: the ranking's
    data-version query took 100-380 ms instead of 2 on 10,000 fresh rows, every request."""
    if connection.vendor != "postgresql":
        return
    tables = [
        model._meta.db_table
        for model in (Repository, LineageEdge, Submission, EvaluationRun, TaskScore, RankingEntry)
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {', '.join(tables)}")


def _plan(
    count: int, columns: list[tuple[str, str, str, float]], rng: random.Random, now: datetime
) -> tuple[list[_Model], list[str]]:
    """The models (roots first, then derivations in submission order) and dataset names."""
    taken = set(
        Repository.objects.filter(repo_id__startswith=ORG_PREFIX).values_list("repo_id", flat=True)
    )
    if taken:
        raise SyntheticError(
            f"{len(taken)} repositories already use the '{ORG_PREFIX}' organisation prefix "
            "without being synthetic; rename them before seeding."
        )
    dataset_names = [
        f"{ORG_PREFIX}data/corpus-{i:03d}" for i in range(max(3, min(60, count // 150)))
    ]
    roots = min(len(LABS) * len(SIZES_B), max(count // 200, min(count, 3)))
    models: list[_Model] = []
    by_family: dict[int, list[int]] = {}
    start = now - timedelta(days=SPAN_DAYS)
    for index in range(count):
        when = start + timedelta(days=SPAN_DAYS * (index + rng.random()) / count)
        if index < roots:
            model = _root(index, columns, rng, dataset_names)
        else:
            model = _derive(index, models, by_family, columns, rng, dataset_names)
        model.submitted_at = when
        models.append(model)
        by_family.setdefault(model.family, []).append(index)
    return models, dataset_names


def _root(
    index: int, columns: list[tuple[str, str, str, float]], rng: random.Random, datasets: list[str]
) -> _Model:
    lab = LABS[index % len(LABS)]
    # Stride 5 through the 12 sizes: even three roots span small, medium and large.
    cycle, position = divmod(index, len(SIZES_B))
    size = SIZES_B[(position * 5) % len(SIZES_B)] * (1 + 0.05 * cycle)
    parameters = int(size * 1e9)
    # Bigger models score higher, with diminishing returns; each lab has its own strengths.
    ability = 0.15 + 0.11 * math.log10(parameters / 1e8)
    skill = {
        _key(suite, version, task): min(
            0.95, baseline + (1 - baseline) * max(0.0, ability + rng.gauss(0, 0.04))
        )
        for suite, version, task, baseline in columns
    }
    return _Model(
        index=index,
        repo_id=f"{ORG_PREFIX}{lab}/{lab}-{_size_label(parameters)}-base-{index:04d}",
        model_type=ModelType.PRETRAINED,
        parameters=parameters,
        license=ROOT_LICENSES[index % len(ROOT_LICENSES)],
        family=index,
        skill=skill,
        datasets=rng.sample(range(len(datasets)), k=min(2, len(datasets))),
    )


def _derive(
    index: int,
    models: list[_Model],
    by_family: dict[int, list[int]],
    columns: list[tuple[str, str, str, float]],
    rng: random.Random,
    datasets: list[str],
) -> _Model:
    model_type, relation, _share = rng.choices(DERIVATIONS, weights=[d[2] for d in DERIVATIONS])[0]
    first = models[rng.randrange(len(models))]
    family = by_family[first.family]
    parents = [first]
    if model_type == ModelType.MERGE:
        others = [models[i] for i in family if i != first.index]
        parents += rng.sample(others, k=min(len(others), rng.choice((1, 1, 2))))
    merge_method = rng.choice(MERGE_METHODS) if model_type == ModelType.MERGE else ""
    # A contaminated model jumps on the benchmarks it saw, not across the board.
    jumped = (
        set(rng.sample(sorted({task for _s, _v, task, _b in columns}), k=2))
        if rng.random() < JUMP_RATE
        else set()
    )
    skill = {}
    for suite, version, task, baseline in columns:
        key = _key(suite, version, task)
        inherited = sum(p.skill[key] for p in parents) / len(parents)
        deltas: dict[str, float] = {
            ModelType.MERGE: rng.gauss(0.006, 0.01),
            ModelType.QUANTIZED: -abs(rng.gauss(0.004, 0.003)),
            ModelType.ADAPTER: rng.gauss(0.002, 0.008),
            ModelType.CHAT: rng.gauss(0.0, 0.012),
        }
        delta = deltas.get(model_type, rng.gauss(0.003, 0.012))
        ceiling = baseline + (1 - baseline) * 0.9
        if task in jumped:
            skill[key] = min(0.98, inherited + rng.uniform(0.2, 0.3))
        else:
            # Descendants of a jump inherit it (that is how it spreads); honest gains stop
            # below the ceiling.
            skill[key] = min(max(ceiling, inherited), max(baseline, inherited + delta))
    org = f"{ORG_PREFIX}user{rng.randrange(max(8, len(models) // 20)):03d}"
    stem = models[first.family].repo_id.split("/", 1)[1].split("-base-")[0]
    suffixes: dict[str, str] = {
        ModelType.FINE_TUNED: "ft",
        ModelType.CHAT: "chat",
        ModelType.MERGE: merge_method.replace("_", "-"),
        ModelType.ADAPTER: "lora",
        ModelType.QUANTIZED: "q8",
        ModelType.CONTINUED_PRETRAINING: "cpt",
    }
    suffix = suffixes[model_type]
    declares_data = model_type in (ModelType.FINE_TUNED, ModelType.CHAT) or (
        model_type == ModelType.CONTINUED_PRETRAINING
    )
    return _Model(
        index=index,
        repo_id=f"{org}/{stem}-{suffix}-{index:05d}",
        model_type=model_type,
        parameters=first.parameters,
        license=rng.choice(DERIVED_LICENSES) if rng.random() < 0.3 else first.license,
        family=first.family,
        skill=skill,
        parents=[(p.index, relation) for p in parents],
        datasets=[rng.randrange(len(datasets))] if declares_data and rng.random() < 0.7 else [],
        merge_method=merge_method,
    )


def _key(suite: str, version: str, task: str) -> str:
    return f"{suite}@{version}:{task}"


def _size_label(parameters: int) -> str:
    billions = parameters / 1e9
    return f"{billions:.0f}b" if billions >= 1 else f"{parameters / 1e6:.0f}m"


def _repository(model: _Model, models: list[_Model], datasets: list[str]) -> Repository:
    card_data: dict[str, Any] = {"license": model.license or "other", "tags": ["synthetic"]}
    if model.parents:
        card_data["base_model"] = [models[p].repo_id for p, _r in model.parents]
    if model.datasets:
        card_data["datasets"] = [datasets[d] for d in model.datasets]
    return Repository(
        kind=RepositoryKind.MODEL,
        repo_id=model.repo_id,
        license=model.license,
        lineage_resolved=True,
        is_synthetic=True,
        card_data=card_data,
        resolved_revision=_sha(model.repo_id),
    )


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _submission(model: _Model, repository: Repository, rng: random.Random) -> Submission:
    precision = rng.choices(
        (Precision.BFLOAT16, Precision.FLOAT16, Precision.FLOAT32), weights=(7, 2, 1)
    )[0]
    lines = [
        "---",
        f"license: {model.license or 'other'}",
        "tags: [synthetic]",
        "---",
        f"# {model.repo_id.split('/', 1)[1]}",
        "",
        "A synthetic model generated by `manage.py seed_synthetic` to exercise Trellis at "
        "scale. It was never trained and has no weights; its scores are simulated.",
    ]
    return Submission(
        repository=repository,
        requested_revision="main",
        revision=_sha(model.repo_id),
        precision=precision,
        weight_type=WeightType.ADAPTER if model.model_type == ModelType.ADAPTER else "original",
        model_type=model.model_type,
        parameter_count=model.parameters,
        architecture="LlamaForCausalLM",
        license=model.license,
        card_text="\n".join(lines) + "\n",
        card_metadata={"license": model.license or "other", "tags": ["synthetic"]},
        merge_method=model.merge_method,
        state=SubmissionState.FINISHED,
        is_synthetic=True,
    )


def _run(model: _Model, submission: Submission, suite: str, version: str) -> EvaluationRun:
    finished = model.submitted_at + timedelta(hours=6)
    return EvaluationRun(
        submission=submission,
        suite_name=suite,
        suite_version=version,
        state=RunState.FINISHED,
        queue="synthetic",
        enqueued_at=model.submitted_at,
        started_at=model.submitted_at + timedelta(hours=1),
        finished_at=finished,
        worker="seed_synthetic",
        is_synthetic=True,
        payload={
            "synthetic": True,
            "dtype": submission.precision,
            "device": "none (simulated scores)",
            "batch_size": "auto",
            "reproduce": {"command": "python manage.py seed_synthetic (scores are simulated)"},
        },
    )


def _scores(
    models: list[_Model],
    runs: list[EvaluationRun],
    suites: list[tuple[str, str]],
    rng: random.Random,
) -> list[TaskScore]:
    scores = []
    views = {(suite, version): suite_view(suite, version) for suite, version in suites}
    per_model = len(suites)
    for position, run in enumerate(runs):
        model = models[position // per_model]
        view = views[(run.suite_name, run.suite_version)]
        assert view is not None
        for column in view.columns:
            n = 1000
            truth = model.skill[_key(run.suite_name, run.suite_version, column.key)]
            value = min(1.0, max(0.0, truth + rng.gauss(0, math.sqrt(truth * (1 - truth) / n))))
            scores.append(
                TaskScore(
                    run=run,
                    task=column.key,
                    metric=column.metric,
                    value=value,
                    stderr=math.sqrt(value * (1 - value) / (n - 1)),
                    n_samples=n,
                    num_fewshot=column.num_fewshot,
                )
            )
    return scores


def purge() -> Purged:
    """Delete every synthetic row, and the integrity records that point at synthetic nodes."""
    started = time.perf_counter()
    with transaction.atomic():
        synthetic = Repository.objects.filter(is_synthetic=True)
        AuditEntry.objects.filter(target__in=synthetic).delete()
        Report.objects.filter(target__in=synthetic).delete()
        RankingEntry.objects.filter(is_synthetic=True).delete()
        TaskScore.objects.filter(run__is_synthetic=True).delete()
        runs = EvaluationRun.objects.filter(is_synthetic=True).delete()[0]
        submissions = Submission.objects.filter(is_synthetic=True).delete()[0]
        LineageEdge.objects.filter(child__is_synthetic=True).delete()
        LineageEdge.objects.filter(parent__is_synthetic=True).delete()
        repositories = synthetic.delete()[0]
    return Purged(repositories, submissions, runs, time.perf_counter() - started)


def flag_some(count: int, actor: Any, rng_seed: int = 0) -> int:
    """File contamination reports (automatic signals) on `count` synthetic models, preferring
    roots and early models so taint spreads; with a maintainer `actor`, confirm them."""
    from leaderboard.flow import file_report, resolve

    rng = random.Random(rng_seed + 1)
    candidates = list(
        Repository.objects.filter(is_synthetic=True, kind=RepositoryKind.MODEL)
        .order_by("id")
        .values_list("id", flat=True)[: max(count * 20, 50)]
    )
    chosen = rng.sample(candidates, k=min(count, len(candidates)))
    for repository in Repository.objects.filter(pk__in=chosen):
        filed = file_report(
            reporter=None,
            target=repository,
            kind="contamination",
            evidence="Synthetic catalog: a simulated contamination signal.",
        )
        if actor is not None:
            resolve(filed.report.pk, "confirm", "Synthetic catalog: simulated flag.", actor)
    return len(chosen)
