"""`manage.py demo_setup`: the demo accounts and the demo model's submission, idempotent."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command

from evaluator.demo_model import (
    INSTRUCT_BODY,
    INSTRUCT_CARD,
    INSTRUCT_ID,
    card_text,
    demo_precision,
)
from leaderboard.accounts.roles import is_maintainer
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.submissions.models import Submission
from tests.builders import make_model_repo
from tests.factories import QUEUES, drain


@pytest.fixture
def built_demo_model(model_root):
    """The demo repository as build_demo_repositories leaves it (small weights: converting the
    real GGUF is the evaluator's own test), so the command skips the conversion."""
    path = make_model_repo(model_root, INSTRUCT_ID, card=card_text(INSTRUCT_CARD, INSTRUCT_BODY))
    (path / "tokenizer.json").write_text("{}")
    yield path
    for queue in QUEUES:
        drain(queue)


@pytest.mark.django_db
def test_demo_setup_creates_accounts_and_submits_the_demo_model_once(built_demo_model, capsys):
    call_command("demo_setup")
    out = capsys.readouterr().out.splitlines()
    submission = Submission.objects.get()
    assert out == [
        "created user demo-maintainer",
        "created user demo-submitter",
        f"demo model at {built_demo_model}",
        f"submitted: {INSTRUCT_ID} (queued) at /submissions/{submission.pk}/",
    ]
    maintainer = authenticate(username="demo-maintainer", password="demo-maintainer-pw")
    submitter = authenticate(username="demo-submitter", password="demo-submitter-pw")
    assert is_maintainer(maintainer) is True
    assert is_maintainer(submitter) is False
    assert (submission.submitter, submission.model_type, submission.precision) == (
        submitter,
        "chat",
        demo_precision(),
    )
    assert (built_demo_model.parent / "SmolLM2-135M" / "README.md").is_file()
    # Parent and declared datasets are shipped as card-only repositories: the lineage resolves.
    repository = submission.repository
    repository.refresh_from_db()
    assert (repository.status, repository.status_path) == ("clean", [])
    assert sorted(
        (edge.parent.kind, edge.parent.repo_id, edge.parent.lineage_resolved)
        for edge in repository.parent_edges.select_related("parent")
    ) == [
        ("dataset", "HuggingFaceH4/ultrafeedback_binarized", True),
        ("dataset", "HuggingFaceTB/smol-smoltalk", True),
        ("model", "HuggingFaceTB/SmolLM2-135M", True),
    ]
    run = EvaluationRun.objects.get()
    assert (run.suite_name, run.state) == ("quick", "queued")

    call_command("demo_setup")
    assert capsys.readouterr().out.splitlines() == [
        f"demo model at {built_demo_model}",
        f"already submitted: {INSTRUCT_ID} (queued) at /submissions/{submission.pk}/",
    ]
    assert Submission.objects.count() == 1
    assert EvaluationRun.objects.count() == 1


@pytest.mark.django_db
def test_demo_setup_needs_the_local_model_source(settings):
    settings.TRELLIS_MODEL_SOURCE = "hub"
    with pytest.raises(CommandError) as error:
        call_command("demo_setup")
    assert str(error.value) == (
        "The demo model is a local repository: set TRELLIS_MODEL_SOURCE=local (it is 'hub')."
    )
