"""Reports and moderation decisions through leaderboard.flow and leaderboard.integrity.reports:
validation with one clear message per problem, joining, the daily rate limit, decisions,
permissions and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from leaderboard import flow
from leaderboard.catalog.models import Repository
from leaderboard.evaluations.runs import evaluated_repositories
from leaderboard.integrity import reports
from leaderboard.integrity.models import AuditEntry, Report, ReportSupport
from leaderboard.problems import Refusal
from tests.factories import (
    DatasetFactory,
    EdgeFactory,
    RepositoryFactory,
    RunFactory,
    SubmissionFactory,
)

pytestmark = pytest.mark.django_db

EVIDENCE = "The model reproduces MMLU test items verbatim."


def codes(exc: pytest.ExceptionInfo[Refusal]) -> list[tuple[str, str]]:
    return [(p.code, p.field) for p in exc.value.problems]


@pytest.fixture
def target():
    return RepositoryFactory(repo_id="org/suspect")


def test_every_problem_of_a_report_is_named_at_once(target, submitter):
    with pytest.raises(Refusal) as refused:
        flow.file_report(
            reporter=submitter,
            target=target,
            kind="plagiarism",
            evidence="   ",
            links=["ftp://example.org/x", "https://example.org/ok", "javascript:alert(1)"],
        )
    assert codes(refused) == [
        ("invalid_kind", "kind"),
        ("missing_evidence", "evidence"),
        ("invalid_link", "links"),
        ("invalid_link", "links"),
    ]
    assert refused.value.status == 400
    assert refused.value.problems[0].message == (
        "kind 'plagiarism' is not one of: contamination, lineage, license, other."
    )
    assert Report.objects.count() == 0
    assert AuditEntry.objects.count() == 0


def test_links_are_cleaned_and_limited():
    assert reports.clean_links(
        " https://a.example/x\n\nhttp://b.example/y https://a.example/x "
    ) == [
        "https://a.example/x",
        "http://b.example/y",
    ]
    with pytest.raises(Refusal) as refused:
        reports.clean_links([f"https://example.org/{i}" for i in range(11)])
    assert codes(refused) == [("too_many_links", "links")]


def test_filing_opens_a_report_audits_it_and_puts_the_target_under_review(target, submitter):
    filed = flow.file_report(
        reporter=submitter,
        target=target,
        kind="contamination",
        evidence=EVIDENCE,
        links=["https://example.org/proof"],
    )
    assert filed.joined is False
    report = Report.objects.get()
    assert (report.status, report.kind, report.reporter, report.links) == (
        "open",
        "contamination",
        submitter,
        ["https://example.org/proof"],
    )
    assert list(AuditEntry.objects.values_list("action", "actor", "target", "report")) == [
        ("filed", submitter.pk, target.pk, report.pk)
    ]
    assert Repository.objects.get(pk=target.pk).status == "under-review"


def test_a_second_open_report_of_the_same_kind_joins_the_first(target, submitter, other_submitter):
    first = flow.file_report(
        reporter=submitter, target=target, kind="contamination", evidence=EVIDENCE
    )
    second = flow.file_report(
        reporter=other_submitter,
        target=target,
        kind="contamination",
        evidence="Same here: 92% exact-match on held-out items.",
        links=["https://example.org/second"],
    )
    assert second.joined is True
    assert second.report.pk == first.report.pk
    assert Report.objects.count() == 1
    support = ReportSupport.objects.get()
    assert (support.user, support.evidence, support.links) == (
        other_submitter,
        "Same here: 92% exact-match on held-out items.",
        ["https://example.org/second"],
    )
    assert first.report.to_dict()["supporters"] == ["bob"]
    # A different kind on the same target is a separate report.
    third = flow.file_report(
        reporter=other_submitter, target=target, kind="license", evidence="Wrong license."
    )
    assert third.joined is False
    assert Report.objects.count() == 2


def test_the_same_user_cannot_report_the_same_thing_twice(target, submitter):
    flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)
    with pytest.raises(Refusal) as refused:
        flow.file_report(reporter=submitter, target=target, kind="other", evidence="again")
    assert codes(refused) == [("already_reported", "target")]
    assert refused.value.status == 409


def test_after_dismissal_a_new_report_opens_instead_of_joining(target, submitter, maintainer):
    first = flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)
    flow.resolve(first.report.pk, "dismiss", "Not reproducible.", maintainer)
    again = flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)
    assert again.joined is False
    assert again.report.pk != first.report.pk


def test_reports_are_rate_limited_per_user_per_day(
    settings, submitter, other_submitter, monkeypatch
):
    settings.TRELLIS_REPORTS_PER_DAY = 2
    start = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    monkeypatch.setattr(timezone, "now", lambda: start)
    targets = [RepositoryFactory(repo_id=f"org/m{i}") for i in range(4)]
    flow.file_report(reporter=submitter, target=targets[0], kind="other", evidence=EVIDENCE)
    # Joining someone else's report counts as filing.
    flow.file_report(reporter=other_submitter, target=targets[1], kind="other", evidence=EVIDENCE)
    flow.file_report(reporter=submitter, target=targets[1], kind="other", evidence=EVIDENCE)
    with pytest.raises(Refusal) as refused:
        flow.file_report(reporter=submitter, target=targets[2], kind="other", evidence=EVIDENCE)
    assert codes(refused) == [("rate_limited", "reporter")]
    assert refused.value.status == 429
    assert refused.value.problems[0].message == (
        "You have filed 2 reports in the last 24 hours; the limit is 2 (TRELLIS_REPORTS_PER_DAY). "
        "You can report again after 2024-05-02 08:00 UTC."
    )
    # Other users are not affected; a day later the user may report again.
    flow.file_report(reporter=other_submitter, target=targets[2], kind="other", evidence=EVIDENCE)
    monkeypatch.setattr(timezone, "now", lambda: start + timedelta(days=1, seconds=1))
    flow.file_report(reporter=submitter, target=targets[3], kind="other", evidence=EVIDENCE)
    assert Report.objects.filter(reporter=submitter).count() == 2


def test_maintainers_and_automatic_signals_are_not_rate_limited(settings, maintainer):
    settings.TRELLIS_REPORTS_PER_DAY = 0
    first, second = RepositoryFactory(repo_id="org/a"), RepositoryFactory(repo_id="org/b")
    flow.file_report(reporter=maintainer, target=first, kind="other", evidence=EVIDENCE)
    flow.file_report(reporter=None, target=second, kind="contamination", evidence="z-score 4.1")
    assert Report.objects.count() == 2


def test_only_maintainers_resolve(target, submitter, other_submitter):
    filed = flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)
    for actor in (submitter, other_submitter, None):
        with pytest.raises(Refusal) as refused:
            flow.resolve(filed.report.pk, "confirm", "I say so", actor)
        assert (refused.value.code, refused.value.status) == ("not_a_maintainer", 403)
    assert Report.objects.get().status == "open"
    assert AuditEntry.objects.filter(action="confirmed").count() == 0


def test_decisions_follow_the_report_lifecycle(target, submitter, maintainer):
    filed = flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)
    pk = filed.report.pk
    with pytest.raises(Refusal) as refused:
        flow.resolve(pk, "lift", "nothing to lift", maintainer)
    assert codes(refused) == [("invalid_transition", "decision")]
    assert refused.value.status == 409

    with pytest.raises(Refusal) as refused:
        flow.resolve(pk, "approve", "  ", maintainer)
    assert codes(refused) == [("invalid_decision", "decision"), ("missing_note", "note")]

    report = flow.resolve(pk, "confirm", "Checked the overlap myself.", maintainer)
    assert (report.status, report.resolved_by, report.resolution_note) == (
        "confirmed",
        maintainer,
        "Checked the overlap myself.",
    )
    assert report.confirmed_at == report.resolved_at
    assert Repository.objects.get(pk=target.pk).status == "flagged"
    with pytest.raises(Refusal):
        flow.resolve(pk, "dismiss", "changed my mind", maintainer)
    lifted = flow.resolve(pk, "lift", "Retrained without the test set.", maintainer)
    assert lifted.status == "lifted"
    assert lifted.confirmed_at == report.confirmed_at  # lifting keeps when it was confirmed
    assert Repository.objects.get(pk=target.pk).status == "clean"

    with pytest.raises(Refusal) as refused:
        flow.resolve(999_999, "confirm", "note", maintainer)
    assert codes(refused) == [("unknown_report", "id")]
    assert refused.value.status == 404


def test_unknown_targets_are_refused_with_the_fix():
    DatasetFactory(repo_id="data-org/only-a-dataset")
    with pytest.raises(Refusal) as refused:
        reports.find_target("model", "data-org/only-a-dataset")
    assert codes(refused) == [("unknown_target", "target")]
    assert refused.value.status == 404
    assert reports.find_target("dataset", "data-org/only-a-dataset").kind == "dataset"
    with pytest.raises(Refusal) as refused:
        reports.find_target("space", "x/y")
    assert codes(refused) == [("invalid_target_type", "target_type")]


def test_queue_orders_by_ranked_models_affected_then_newest(submitter, monkeypatch):
    base = datetime(2024, 5, 1, tzinfo=UTC)
    popular = RepositoryFactory(repo_id="org/popular")
    ranked_children = [RepositoryFactory(repo_id=f"org/ranked-{i}") for i in range(3)]
    for child in ranked_children:
        EdgeFactory(child=child, parent=popular)
        RunFactory(submission=SubmissionFactory(repository=child), state="finished")
    # A queued-but-unfinished evaluation does not make a model ranked.
    unranked = RepositoryFactory(repo_id="org/unranked")
    EdgeFactory(child=unranked, parent=popular)
    RunFactory(submission=SubmissionFactory(repository=unranked), state="queued")
    lonely = RepositoryFactory(repo_id="org/lonely")
    quiet = RepositoryFactory(repo_id="org/quiet")
    for offset, target in enumerate([popular, lonely, quiet]):
        monkeypatch.setattr(timezone, "now", lambda offset=offset: base + timedelta(hours=offset))
        flow.file_report(reporter=submitter, target=target, kind="other", evidence=EVIDENCE)

    by_impact = reports.moderation_queue(evaluated_repositories())
    assert [(i.report.target.repo_id, i.affected_ranked) for i in by_impact] == [
        ("org/popular", 3),
        ("org/quiet", 0),
        ("org/lonely", 0),
    ]
    by_date = reports.moderation_queue(evaluated_repositories(), "newest")
    assert [i.report.target.repo_id for i in by_date] == ["org/quiet", "org/lonely", "org/popular"]


def test_integrity_context_collects_status_reports_and_history(target, submitter, maintainer):
    filed = flow.file_report(reporter=submitter, target=target, kind="license", evidence=EVIDENCE)
    flow.resolve(filed.report.pk, "confirm", "License text says NC.", maintainer)
    flow.file_report(reporter=submitter, target=target, kind="other", evidence="More.")
    context = reports.integrity_context(Repository.objects.get(pk=target.pk))
    assert context["status"] == "flagged"
    assert context["status_label"] == "flagged"
    assert context["path_text"].startswith("org/suspect (license, confirmed ")
    assert [r.kind for r in context["flags"]] == ["license"]
    assert [r.kind for r in context["open_reports"]] == ["other"]
    assert [e.action for e in context["history"]] == ["filed", "confirmed", "filed"][::-1]
    assert context["report_url"] == "/integrity/report/?target=org%2Fsuspect&type=model"
    assert context["lineage_url"] == "/integrity/lineage/org/suspect/"
