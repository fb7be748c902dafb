"""factory_boy factories for the core records. App-specific factories live beside their tests."""

from __future__ import annotations

import hashlib

import factory
from django.contrib.auth import get_user_model

from leaderboard.catalog.models import LineageEdge, Relation, Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.submissions.models import ModelType, Precision, Submission, SubmissionState


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
