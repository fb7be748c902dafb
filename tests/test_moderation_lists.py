"""The block list, verified organisations and the public moderation log, through their pages,
the submission API and the log's JSON and Atom feed (issue 14)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from leaderboard.integrity.models import AuditEntry, BlockEntry
from tests.builders import make_model_repo
from tests.factories import edge, flag, ranked, repository

ATOM = "{http://www.w3.org/2005/Atom}"


def submit(client, user, repo_id: str):
    from leaderboard.accounts.models import ApiToken

    _, token = ApiToken.issue(user)
    return client.post(
        "/api/v1/submissions",
        {"repo_id": repo_id, "precision": "bfloat16", "model_type": "pretrained"},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


# --- block list ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_blocked_organisation_is_refused_naming_the_entry_until_removed(
    maintainer_client, maintainer, submitter, anonymous_client, model_root
):
    make_model_repo(model_root, "spam-lab/tiny")
    response = maintainer_client.post(
        "/integrity/blocklist/",
        {"kind": "organisation", "pattern": "Spam-*", "reason": "Uploads benchmark test sets."},
    )
    assert response.status_code == 302
    entry = BlockEntry.objects.get()
    assert (entry.kind, entry.pattern, entry.reason) == (
        "organisation",
        "spam-*",
        "Uploads benchmark test sets.",
    )

    refused = submit(anonymous_client, submitter, "spam-lab/tiny")
    assert refused.status_code == 400
    [error] = refused.json()["errors"]
    assert (error["code"], error["field"]) == ("blocked", "repo_id")
    assert error["message"] == (
        f"spam-lab/tiny is refused by block-list entry #{entry.pk} (organisation 'spam-*', "
        f"since {entry.created_at:%Y-%m-%d}): Uploads benchmark test sets. The public block "
        "list (/integrity/blocklist/) says how to contest it: file a report or write to the "
        "maintainers."
    )

    listed = anonymous_client.get("/integrity/blocklist.json").json()
    assert listed == {
        "entries": [
            {
                "id": entry.pk,
                "kind": "organisation",
                "pattern": "spam-*",
                "reason": "Uploads benchmark test sets.",
                "created_at": entry.created_at.isoformat(),
                "active": True,
                "removed_at": None,
                "removal_note": "",
            }
        ]
    }
    page = anonymous_client.get("/integrity/blocklist/").content.decode()
    assert "Uploads benchmark test sets." in page and "<code>spam-*</code>" in page
    assert 'name="remove"' not in page  # no maintainer's forms for the public

    removed = maintainer_client.post(
        "/integrity/blocklist/", {"remove": entry.pk, "note": "They removed the test sets."}
    )
    assert removed.status_code == 302
    assert submit(anonymous_client, submitter, "spam-lab/tiny").status_code == 201
    assert list(
        AuditEntry.objects.order_by("id").values_list("action", "subject", "note", "actor")
    ) == [
        ("blocked", "organisation spam-*", "Uploads benchmark test sets.", maintainer.pk),
        ("unblocked", "organisation spam-*", "They removed the test sets.", maintainer.pk),
    ]


@pytest.mark.django_db
def test_a_repository_pattern_blocks_only_what_it_matches(maintainer, submitter, model_root):
    from leaderboard.integrity import blocklist
    from leaderboard.submissions.intake import blocked_problem

    entry = blocklist.add_entry(maintainer, "repository", "acme/*-leak", "Trained on test sets.")
    assert blocked_problem("acme/mmlu-leak") is not None
    assert blocked_problem("ACME/MMLU-LEAK").message.startswith(  # type: ignore[union-attr]
        f"ACME/MMLU-LEAK is refused by block-list entry #{entry.pk}"
    )
    assert blocked_problem("acme/clean") is None
    assert blocked_problem("other/mmlu-leak") is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"kind": "organisation", "pattern": "a/b", "reason": "x"}, "invalid_pattern"),
        ({"kind": "repository", "pattern": "nobody", "reason": "x"}, "invalid_pattern"),
        ({"kind": "repository", "pattern": "a/<script>", "reason": "x"}, "invalid_pattern"),
        ({"kind": "user", "pattern": "a", "reason": "x"}, "invalid_kind"),
        ({"kind": "organisation", "pattern": "a", "reason": "  "}, "reason_missing"),
    ],
)
def test_block_list_refusals_name_the_field(maintainer, fields, code):
    from leaderboard.integrity import blocklist
    from leaderboard.problems import Refusal

    with pytest.raises(Refusal) as refused:
        blocklist.add_entry(maintainer, fields["kind"], fields["pattern"], fields["reason"])
    assert refused.value.problems[0].code == code
    assert BlockEntry.objects.count() == 0
    assert AuditEntry.objects.count() == 0


@pytest.mark.django_db
def test_only_maintainers_change_the_block_list(submitter_client, anonymous_client):
    fields = {"kind": "organisation", "pattern": "x", "reason": "y"}
    assert submitter_client.post("/integrity/blocklist/", fields).status_code == 403
    assert anonymous_client.post("/integrity/blocklist/", fields).status_code == 403
    assert BlockEntry.objects.count() == 0


# --- verified organisations ---------------------------------------------------------------------


@pytest.mark.django_db
def test_verifying_an_organisation_is_public_and_audited(
    maintainer_client, submitter_client, anonymous_client, maintainer
):
    assert (
        submitter_client.post("/integrity/verified/", {"org": "acme", "note": "n"}).status_code
        == 403
    )
    response = maintainer_client.post(
        "/integrity/verified/", {"org": "acme", "note": "Signed mail from acme.org's domain."}
    )
    assert response.status_code == 302
    page = anonymous_client.get("/integrity/verified/").content.decode()
    assert 'id="verified-acme"' in page and "Signed mail from acme.org&#x27;s domain." in page
    again = maintainer_client.post("/integrity/verified/", {"org": "acme", "note": "again"})
    assert again.status_code == 302
    withdraw = maintainer_client.post(
        "/integrity/verified/", {"org": "acme", "action": "withdraw", "note": "Domain lapsed."}
    )
    assert withdraw.status_code == 302
    assert 'id="verified-acme"' not in anonymous_client.get("/integrity/verified/").content.decode()
    assert list(AuditEntry.objects.order_by("id").values_list("action", "subject", "note")) == [
        ("verified", "organisation acme", "Signed mail from acme.org's domain."),
        ("unverified", "organisation acme", "Domain lapsed."),
    ]


# --- the moderation log ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_log_lists_every_change_newest_first_in_html_json_and_atom(
    maintainer, anonymous_client
):
    from leaderboard.integrity import blocklist, verification

    target = repository("acme/base")
    flag(target, maintainer)  # filed (by no one: an automatic signal) then confirmed
    blocklist.add_entry(maintainer, "organisation", "spam-*", "Uploads test sets.")
    verification.verify(maintainer, "acme", "Checked the domain.")
    ids = list(AuditEntry.objects.order_by("-created_at", "-id").values_list("id", flat=True))
    assert len(ids) == 4

    body = anonymous_client.get("/integrity/log.json").json()
    assert [entry["id"] for entry in body["entries"]] == ids
    assert [(e["action"], e["subject"], e["actor"], e["note"]) for e in body["entries"]] == [
        ("verified", "organisation acme", "charlie", "Checked the domain."),
        ("blocked", "organisation spam-*", "charlie", "Uploads test sets."),
        ("confirmed", "acme/base", "charlie", "Confirmed from the overlap report."),
        ("filed", "acme/base", None, ""),
    ]
    assert body["entries"][2]["report"]["status"] == "confirmed"
    assert body["entries"][0]["url"] == f"/integrity/log/#entry-{ids[0]}"
    assert body["next_before"] is None

    page = anonymous_client.get("/integrity/log/").content.decode()
    positions = [page.index(f'id="entry-{pk}"') for pk in ids]
    assert positions == sorted(positions)

    atom = anonymous_client.get("/integrity/log.atom")
    assert atom["Content-Type"] == "application/atom+xml"
    feed = ET.fromstring(atom.content)
    titles = [entry.find(f"{ATOM}title").text for entry in feed.iter(f"{ATOM}entry")]
    assert titles == [
        "verified an organisation: organisation acme",
        "added to the block list: organisation spam-*",
        "confirmed a flag: acme/base",
        "filed a report: acme/base",
    ]


@pytest.mark.django_db
def test_a_tainted_models_history_links_to_the_decision_that_taints_it(
    maintainer, anonymous_client
):
    base = repository("acme/base")
    child = ranked("acme/child", 0.5).repository
    edge(child, base)
    flag(base, maintainer)
    child.refresh_from_db()
    assert child.status == "tainted"
    confirmed = AuditEntry.objects.get(action="confirmed")
    page = anonymous_client.get("/integrity/lineage/acme/child/").content.decode()
    assert f'href="/integrity/log/#entry-{confirmed.pk}"' in page
    assert "Tainted by the decision on acme/base" in page


@pytest.mark.django_db
def test_a_verified_organisations_models_carry_the_badge_and_the_filter_keeps_only_them(
    maintainer_client, anonymous_client
):
    official = ranked("acme/official", 0.6)
    ranked("other/model", 0.7)
    assert (
        maintainer_client.post(
            "/integrity/verified/", {"org": "acme", "note": "Signed by acme.org."}
        ).status_code
        == 302
    )

    body = anonymous_client.get("/api/v1/leaderboard", {"suite": "open-llm-v1"}).json()
    assert {row["model"]: row["verified"] for row in body["rows"]} == {
        "other/model": False,
        "acme/official": True,
    }
    only = anonymous_client.get(
        "/api/v1/leaderboard", {"suite": "open-llm-v1", "verified_only": "true"}
    ).json()
    assert [row["model"] for row in only["rows"]] == ["acme/official"]
    page = anonymous_client.get("/", {"suite": "open-llm-v1", "verified_only": "1"})
    html = page.content.decode()
    assert 'data-model="acme/official"' in html and 'data-model="other/model"' not in html
    assert '<span class="badge verified"' in html
    model_page = anonymous_client.get("/models/acme/official/").content.decode()
    assert '<span class="badge verified"' in model_page
    submission = anonymous_client.get(f"/api/v1/submissions/{official.pk}").json()
    assert submission["verified"] is True

    maintainer_client.post(
        "/integrity/verified/", {"org": "acme", "action": "withdraw", "note": "Lapsed."}
    )
    again = anonymous_client.get("/api/v1/leaderboard", {"suite": "open-llm-v1"}).json()
    assert {row["model"]: row["verified"] for row in again["rows"]}["acme/official"] is False
