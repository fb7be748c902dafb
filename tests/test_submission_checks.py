"""The submission rules through check_submission and flow.submit, against repositories built on
disk."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from leaderboard import flow
from leaderboard.catalog.models import LineageEdge, Relation, Repository, RepositoryKind
from leaderboard.evaluations.models import EvaluationRun, RunState
from leaderboard.problems import Refusal
from leaderboard.submissions import checks
from leaderboard.submissions.intake import SubmissionRequest, check_submission
from leaderboard.submissions.models import Submission
from tests.builders import card_text, default_card, make_dataset_repo, make_model_repo
from tests.factories import EdgeFactory, RepositoryFactory, SubmissionFactory

pytestmark = pytest.mark.django_db

# make_model_repo's safetensors: embed 32x8, two layers of q_proj 8x8 and up_proj 16x8.
PARAMETERS = 32 * 8 + 2 * (8 * 8 + 16 * 8)
HUB_TEMPLATE = """
# Model Card for Model ID

<!-- Provide a quick summary of what the model is/does. -->

## Model Details

### Model Description

- **Developed by:** [More Information Needed]
- **Model type:** [More Information Needed]
- **License:** [More Information Needed]
"""


def request(**overrides: str) -> SubmissionRequest:
    values = {
        "repo_id": "acme/tiny-chat",
        "revision": "main",
        "precision": "bfloat16",
        "model_type": "fine-tuned",
        "weight_type": "original",
    }
    values.update(overrides)
    return SubmissionRequest(**values)


def codes(outcome) -> list[str]:
    return [item.code for item in outcome.problems]


def fine_tune_card(repo_id: str = "acme/tiny-chat", **overrides):
    meta = {"base_model": "acme/base", "datasets": ["acme/instructions"], **overrides}
    return default_card(repo_id, **meta)


@pytest.fixture
def base(model_root: Path) -> Path:
    """A pretrained parent that itself declares nothing."""
    return make_model_repo(model_root, "acme/base")


@pytest.fixture
def tiny_chat(model_root: Path, base: Path) -> Path:
    return make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card())


def table_counts() -> dict[str, int]:
    return {
        "repositories": Repository.objects.count(),
        "submissions": Submission.objects.count(),
        "edges": LineageEdge.objects.count(),
        "runs": EvaluationRun.objects.count(),
    }


# --- the whole path ------------------------------------------------------------------------------


def test_a_complete_fine_tune_passes_every_check(tiny_chat, submitter):
    outcome = check_submission(request(), submitter)
    assert outcome.problems == []
    assert outcome.parents == ["acme/base"]
    assert outcome.datasets == ["acme/instructions"]
    assert outcome.parameter_count == PARAMETERS


def test_submit_records_everything_in_one_go(
    model_root, tiny_chat, submitter, django_capture_on_commit_callbacks
):
    # The parent declares its own parent: resolution must reach the grandparent too, after
    # commit (the parent's card was read by the checks, the grandparent's is not read yet).
    make_model_repo(model_root, "acme/base", card=default_card("acme/base", base_model="acme/root"))
    make_model_repo(model_root, "acme/root")
    make_dataset_repo(model_root, "acme/instructions")
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), git=True)
    sha = subprocess.run(
        ["git", "-C", str(tiny_chat), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        submission = flow.submit(request(precision="float16"), submitter)

    # The evaluation run's message, the ancestors' resolution and the weights' provenance check
    # (docs/provenance.md), all on commit.
    assert len(callbacks) == 3
    submission.refresh_from_db()
    assert (submission.repository.status, submission.repository.lineage_pending) == (
        "resolving",
        True,
    )
    assert Repository.objects.get(repo_id="acme/root").lineage_resolved is False
    flow.resolve_ancestors(submission.repository_id)
    submission.refresh_from_db()
    assert (submission.repository.status, submission.repository.lineage_pending) == (
        "clean",
        False,
    )
    assert Repository.objects.get(repo_id="acme/root").lineage_resolved is True
    assert submission.repository.repo_id == "acme/tiny-chat"
    assert submission.repository.resolved_revision == sha
    assert (submission.requested_revision, submission.revision) == ("main", sha)
    assert (submission.precision, submission.model_type, submission.weight_type) == (
        "float16",
        "fine-tuned",
        "original",
    )
    assert submission.parameter_count == PARAMETERS
    assert submission.architecture == "LlamaForCausalLM"
    assert submission.license == "apache-2.0"
    assert submission.merge_method == ""
    assert submission.submitter == submitter
    assert submission.card_text == (tiny_chat / "README.md").read_text()
    assert submission.card_metadata["base_model"] == "acme/base"
    assert submission.card_metadata["datasets"] == ["acme/instructions"]
    assert sorted(
        (e.child.repo_id, e.parent.repo_id, e.parent.kind, e.relation, e.declared_in)
        for e in LineageEdge.objects.select_related("child", "parent")
    ) == [
        ("acme/base", "acme/root", "model", "fine-tune", "card"),
        ("acme/tiny-chat", "acme/base", "model", "fine-tune", "card"),
        ("acme/tiny-chat", "acme/instructions", "dataset", "trained-on", "card"),
    ]
    runs = list(EvaluationRun.objects.filter(submission=submission))
    assert [run.state for run in runs] == [RunState.QUEUED]
    assert submission.state == "queued"


def test_the_reconciler_sends_a_lost_resolution_again(
    model_root, tiny_chat, submitter, monkeypatch, django_capture_on_commit_callbacks
):
    make_model_repo(model_root, "acme/base", card=default_card("acme/base", base_model="acme/root"))
    make_model_repo(model_root, "acme/root")
    with django_capture_on_commit_callbacks(execute=False):
        submission = flow.submit(request(), submitter)  # its resolution message is lost
    sent: list[int] = []
    monkeypatch.setattr(flow, "send_resolve", sent.append)
    monkeypatch.setattr(flow.runs, "reconcile_runs", flow.runs.ReconcileReport)
    flow.reconcile()
    assert sent == []  # within the grace period the task may still be on its way
    Submission.objects.filter(pk=submission.pk).update(
        created_at=timezone.now() - flow.RESOLVE_GRACE - timedelta(seconds=1)
    )
    flow.reconcile()
    assert sent == [submission.repository_id]
    flow.resolve_ancestors(submission.repository_id)
    flow.reconcile()
    assert sent == [submission.repository_id]


def test_refusal_saves_nothing(model_root, base, submitter, django_capture_on_commit_callbacks):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(license=None))
    before = table_counts()
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        pytest.raises(Refusal) as refused,
    ):
        flow.submit(request(), submitter)
    assert [item.code for item in refused.value.problems] == ["license_missing"]
    assert table_counts() == before
    assert callbacks == []


def test_every_problem_is_reported_at_once(model_root, submitter):
    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=default_card("acme/tiny-chat", license=None),
        weights="bin",
        config={"auto_map": {"AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"}},
    )
    outcome = check_submission(request(precision="int4"), submitter)
    assert codes(outcome) == [
        "invalid_precision",
        "license_missing",
        "parents_missing",
        "datasets_missing",
        "pickle_weights",
        "custom_code",
    ]
    assert [item.field for item in outcome.problems] == [
        "precision",
        "card.license",
        "card.base_model",
        "card.datasets",
        "files",
        "config.json",
    ]


# --- 1. repo id, existence, pinned revision ---------------------------------------------------


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "no-namespace",
        "a/b/c",
        "-org/name",
        "org/name-",
        "org/.name",
        "org/na--me",
        "org/na..me",
        "org/name.git",
        "org/",
        "org/na me",
        "org/caf\u00e9",
        "org/" + "n" * 97,
    ],
)
def test_malformed_repo_ids_are_refused_before_the_source_is_asked(repo_id, model_root, submitter):
    outcome = check_submission(request(repo_id=repo_id), submitter)
    assert codes(outcome) == ["invalid_repo_id"]
    assert outcome.snapshot is None


@pytest.mark.parametrize(
    "repo_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "a/b", "_org/x.y_z", "o/" + "n" * 96]
)
def test_hub_shaped_repo_ids_are_well_formed(repo_id):
    assert checks.repo_id_error(repo_id) is None


def test_long_typed_values_are_not_echoed_whole(tiny_chat, submitter):
    outcome = check_submission(
        request(repo_id="acme/" + "x" * 500, model_type="y" * 500), submitter
    )
    assert codes(outcome) == ["invalid_repo_id", "invalid_model_type"]
    long_id, long_part = "acme/" + "x" * 74 + "…", "x" * 79 + "…"
    assert outcome.problems[0].message == (
        f"The repository id '{long_id}' part '{long_part}' must be 1-96 letters, digits, '-', "
        "'_' or '.', and must not start or end with '-' or '.': enter it as in the repository's "
        "URL, e.g. HuggingFaceTB/SmolLM2-135M-Instruct."
    )
    assert outcome.problems[1].message.startswith(f"The model type '{'y' * 79}…' is not supported")


def test_pretrained_with_an_unknown_weight_type_needs_no_parents(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat")
    outcome = check_submission(request(model_type="pretrained", weight_type="gguf"), submitter)
    assert codes(outcome) == ["invalid_weight_type"]


def test_missing_repository_skips_file_checks_but_not_input_checks(model_root, submitter):
    outcome = check_submission(
        request(repo_id="acme/ghost", precision="int8", model_type="instruct"), submitter
    )
    assert codes(outcome) == ["invalid_precision", "invalid_model_type", "repo_not_found"]
    assert outcome.problems[2].message == (
        "No model repository 'acme/ghost' on the model source: check the spelling (org/name, as "
        "in the repository's URL). Its card and files are checked once it resolves."
    )


def test_branch_is_pinned_to_its_commit_sha(model_root, base, submitter):
    path = make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), git=True)
    subprocess.run(["git", "-C", str(path), "tag", "v1"], check=True)
    sha = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    outcome = check_submission(request(revision="v1"), submitter)
    assert outcome.problems == []
    assert outcome.snapshot is not None and outcome.snapshot.sha == sha
    assert re.fullmatch(r"[0-9a-f]{40}", sha)


def test_unknown_revision_is_refused(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), git=True)
    outcome = check_submission(request(revision="v9", precision="fp8"), submitter)
    assert codes(outcome) == ["invalid_precision", "revision_not_found"]


def test_blank_revision_means_main_and_spaces_are_refused(tiny_chat, submitter):
    assert check_submission(request(revision="  "), submitter).problems == []
    assert codes(check_submission(request(revision="my branch"), submitter)) == ["invalid_revision"]


def test_unreadable_repository_is_a_retry_later_problem(model_root, base, submitter):
    path = make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), git=True)
    # A commit whose tree object is gone: the source answers, but garbage.
    tree = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD^{tree}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (path / ".git" / "objects" / tree[:2] / tree[2:]).unlink()
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["source_unavailable"]
    assert outcome.problems[0].message.endswith("nothing was saved: try again in a few minutes.")


def test_the_hub_source_passes_a_complete_model(fake_hub, submitter):
    make_model_repo(fake_hub.root, "acme/base")
    make_model_repo(fake_hub.root, "acme/tiny-chat", card=fine_tune_card(), git=True)
    outcome = check_submission(request(), submitter)
    assert outcome.problems == []
    assert outcome.parameter_count == PARAMETERS
    assert outcome.snapshot is not None and re.fullmatch(r"[0-9a-f]{40}", outcome.snapshot.sha)


def test_gated_repository_is_refused(fake_hub, submitter):
    make_model_repo(fake_hub.root, "acme/tiny-chat", card=fine_tune_card())
    fake_hub.guard("acme/tiny-chat", gated="manual")
    outcome = check_submission(request(precision="int4"), submitter)
    assert codes(outcome) == ["invalid_precision", "repo_access_denied"]


def test_hub_outage_is_a_retry_later_problem(fake_hub, submitter):
    make_model_repo(fake_hub.root, "acme/tiny-chat", card=fine_tune_card())
    fake_hub.fail_status = 503
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["source_unavailable"]


# --- 2. the model card ----------------------------------------------------------------------------


def test_missing_card(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=None)
    assert codes(check_submission(request(), submitter)) == ["card_missing"]


def test_unparseable_front_matter(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card="---\nlicense: [apache-2.0\n---\n# Tiny\n")
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["card_unparseable"]
    assert outcome.problems[0].message.startswith("README.md front matter is not valid YAML (")


def test_card_without_front_matter(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=card_text(None, name="acme/tiny-chat"))
    assert codes(check_submission(request(model_type="pretrained"), submitter)) == [
        "card_metadata_missing",
        "license_missing",
    ]


@pytest.mark.parametrize("body", [HUB_TEMPLATE, "", "# Tiny chat\n\nA model.\n"])
def test_template_or_empty_card(model_root, body, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=default_card("acme/tiny-chat"), body=body)
    assert codes(check_submission(request(model_type="pretrained"), submitter)) == [
        "card_templated"
    ]


# --- 3. license ---------------------------------------------------------------------------------


def test_license_required(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(license=None))
    assert codes(check_submission(request(), submitter)) == ["license_missing"]


def test_other_license_needs_name_and_link(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(license="other"))
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["license_other_incomplete"]
    assert "add license_name and license_link" in outcome.problems[0].message

    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=fine_tune_card(license="other", license_name="tiny-license"),
    )
    outcome = check_submission(request(), submitter)
    assert "add license_link (" in outcome.problems[0].message

    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=fine_tune_card(license="other", license_name="tiny", license_link="LICENSE"),
    )
    assert check_submission(request(), submitter).problems == []


# --- 4. weights and code ------------------------------------------------------------------------


def test_pickle_only_weights_are_refused(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), weights="bin")
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["pickle_weights"]
    assert "(pytorch_model.bin)" in outcome.problems[0].message


def test_pickles_beside_safetensors_are_fine(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), weights="both")
    assert check_submission(request(), submitter).problems == []


def test_no_weights_at_all(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(), weights="none")
    assert codes(check_submission(request(), submitter)) == ["weights_missing"]


def test_custom_code_is_refused(model_root, base, submitter):
    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=fine_tune_card(),
        config={"auto_map": {"AutoConfig": "configuration_tiny.TinyConfig"}},
    )
    assert codes(check_submission(request(), submitter)) == ["custom_code"]


# --- 5. size and precision ----------------------------------------------------------------------


def test_parameter_limit_is_inclusive(tiny_chat, submitter, settings):
    settings.TRELLIS_MAX_PARAMETERS = PARAMETERS
    assert check_submission(request(), submitter).problems == []
    settings.TRELLIS_MAX_PARAMETERS = PARAMETERS - 1
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["too_many_parameters"]
    assert outcome.problems[0].message == (
        "The model has 640 parameters; this leaderboard accepts at most 639: submit a smaller "
        "model."
    )


def test_unreadable_safetensors_header_means_unknown_size(model_root, tiny_chat, submitter):
    (tiny_chat / "model.safetensors").write_bytes(b"\xff" * 16)
    assert codes(check_submission(request(), submitter)) == ["parameter_count_unknown"]


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "float32"])
def test_supported_precisions(tiny_chat, submitter, precision):
    assert check_submission(request(precision=precision), submitter).problems == []


@pytest.mark.parametrize("precision", ["", "fp16", "int4", "float8"])
def test_unsupported_precisions(tiny_chat, submitter, precision):
    outcome = check_submission(request(precision=precision), submitter)
    assert codes(outcome) == ["invalid_precision"]


def test_unknown_weight_type(tiny_chat, submitter):
    assert codes(check_submission(request(weight_type="gguf"), submitter)) == [
        "invalid_weight_type"
    ]


def test_empty_choices_ask_for_a_choice(tiny_chat, submitter):
    outcome = check_submission(request(precision="", model_type=" "), submitter)
    assert [item.message for item in outcome.problems] == [
        "Choose the precision: one of float16, bfloat16, float32.",
        "Choose the model type: one of pretrained, continued-pretraining, fine-tuned, chat, "
        "merge, adapter, quantized.",
    ]


# --- 6. parents ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("continued-pretraining", ["parents_missing"]),
        ("fine-tuned", ["parents_missing"]),
        ("chat", ["parents_missing"]),
        ("merge", ["parents_missing", "mergekit_config_missing"]),
        ("adapter", ["parents_missing"]),
        ("quantized", ["parents_missing"]),
    ],
)
def test_every_derived_type_needs_declared_parents(model_root, submitter, model_type, expected):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(base_model=None))
    outcome = check_submission(request(model_type=model_type), submitter)
    assert codes(outcome) == expected
    assert outcome.problems[0].message == (
        f"A {model_type} model (original weights) must declare the models it was made from: add "
        "'base_model: <org>/<name>' (a list for several) to the README.md front matter."
    )


def test_pretrained_needs_no_parents_nor_datasets(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat")
    assert check_submission(request(model_type="pretrained"), submitter).problems == []


def test_pretrained_with_declared_parents_is_contradictory(tiny_chat, submitter):
    outcome = check_submission(request(model_type="pretrained"), submitter)
    assert codes(outcome) == ["pretrained_with_parents"]


def test_delta_weights_need_a_parent_even_for_pretrained(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat")
    outcome = check_submission(request(model_type="pretrained", weight_type="delta"), submitter)
    assert codes(outcome) == ["parents_missing"]


def test_each_parent_must_exist(model_root, base, submitter):
    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=fine_tune_card(base_model=["acme/base", "acme/vanished"]),
    )
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["parent_not_found"]
    assert outcome.problems[0].message.startswith("base_model 'acme/vanished' is not a model")


def test_parent_ids_must_be_repo_ids(model_root, submitter):
    make_model_repo(
        model_root,
        "acme/tiny-chat",
        card=fine_tune_card(base_model="https://huggingface.co/acme/base"),
    )
    assert codes(check_submission(request(), submitter)) == ["invalid_parent_id"]


def test_self_parent(model_root, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(base_model="acme/tiny-chat"))
    assert codes(check_submission(request(), submitter)) == ["self_parent"]


def test_declared_cycle_is_refused(model_root, base, submitter):
    # acme/tiny-chat already derives from acme/base; now acme/base claims tiny-chat as parent.
    EdgeFactory(
        child=RepositoryFactory(repo_id="acme/tiny-chat"),
        parent=RepositoryFactory(repo_id="acme/base"),
    )
    make_model_repo(model_root, "acme/tiny-chat")
    make_model_repo(model_root, "acme/base", card=fine_tune_card(base_model="acme/tiny-chat"))
    outcome = check_submission(request(repo_id="acme/base"), submitter)
    assert codes(outcome) == ["lineage_cycle"]
    assert outcome.problems[0].message == (
        "acme/tiny-chat already derives from acme/base (acme/base → acme/tiny-chat → acme/base), "
        "so declaring it as a parent would close a lineage cycle: remove acme/tiny-chat from "
        "base_model."
    )


MERGE_CARD = {"base_model": ["acme/base", "acme/tiny-chat"], "tags": ["merge", "mergekit"]}


@pytest.mark.parametrize(
    "config",
    [
        {
            "models": [{"model": "acme/base"}, {"model": "acme/tiny-chat"}],
            "merge_method": "linear",
        },
        {
            "base_model": "acme/base",
            "models": [{"model": "acme/tiny-chat", "parameters": {"weight": 0.5}}],
            "merge_method": "ties",
        },
        {
            "slices": [
                {"sources": [{"model": "acme/base", "layer_range": [0, 2]}]},
                {"sources": [{"model": "acme/tiny-chat", "layer_range": [0, 2]}]},
            ],
            "merge_method": "passthrough",
        },
    ],
)
def test_merge_matching_its_mergekit_config(model_root, tiny_chat, submitter, config):
    make_model_repo(
        model_root, "acme/merged", card=default_card("acme/merged", **MERGE_CARD), mergekit=config
    )
    outcome = check_submission(request(repo_id="acme/merged", model_type="merge"), submitter)
    assert outcome.problems == []
    assert checks.merge_method_of(outcome.snapshot.mergekit_config) == config["merge_method"]


def test_merge_config_and_card_must_agree_both_ways(model_root, tiny_chat, submitter):
    make_model_repo(model_root, "acme/other")
    make_model_repo(
        model_root,
        "acme/merged",
        card=default_card("acme/merged", **MERGE_CARD),
        mergekit={
            "base_model": "acme/base",
            "models": [{"model": "acme/other"}],
            "merge_method": "slerp",
        },
    )
    outcome = check_submission(request(repo_id="acme/merged", model_type="merge"), submitter)
    assert [item.as_dict() for item in outcome.problems] == [
        {
            "code": "merge_parent_undeclared",
            "field": "mergekit_config.yml",
            "message": "mergekit_config.yml merges acme/other, which base_model in README.md does "
            "not declare: add them to base_model.",
        },
        {
            "code": "merge_parent_unused",
            "field": "mergekit_config.yml",
            "message": "base_model in README.md declares acme/tiny-chat, which "
            "mergekit_config.yml does not merge: remove them from base_model or fix the config.",
        },
    ]


def test_merge_without_its_config(model_root, tiny_chat, submitter):
    make_model_repo(model_root, "acme/merged", card=default_card("acme/merged", **MERGE_CARD))
    outcome = check_submission(request(repo_id="acme/merged", model_type="merge"), submitter)
    assert codes(outcome) == ["mergekit_config_missing"]


def test_mergekit_reference_forms():
    assert checks.mergekit_models(
        {
            "models": ["org/a@rev1", {"model": {"path": "org/b"}}, {"model": "org/c+org/lora"}],
            "base_model": {"path": "org/a"},
            "slices": [{"sources": [{"model": "org/d"}, {"layer_range": [0, 1]}]}],
        }
    ) == ["org/a", "org/b", "org/c", "org/d"]


ADAPTER_CARD = {"base_model": "acme/base", "datasets": ["acme/instructions"]}


def make_adapter(root: Path, adapter_config: dict | None) -> Path:
    path = make_model_repo(
        root,
        "acme/tiny-lora",
        card=default_card("acme/tiny-lora", **ADAPTER_CARD),
        adapter=adapter_config,
    )
    (path / "model.safetensors").rename(path / "adapter_model.safetensors")
    return path


def test_adapter_weights_count_their_base(model_root, base, submitter):
    make_adapter(model_root, {"base_model_name_or_path": "acme/base", "peft_type": "LORA"})
    outcome = check_submission(
        request(repo_id="acme/tiny-lora", model_type="adapter", weight_type="adapter"), submitter
    )
    assert outcome.problems == []
    assert outcome.parameter_count == 2 * PARAMETERS


def test_adapter_weights_need_adapter_config(model_root, base, submitter):
    make_adapter(model_root, None)
    outcome = check_submission(
        request(repo_id="acme/tiny-lora", model_type="fine-tuned", weight_type="adapter"),
        submitter,
    )
    assert codes(outcome) == ["adapter_config_missing"]


def test_adapter_base_must_match_declared_parent(model_root, base, submitter):
    make_adapter(model_root, {"base_model_name_or_path": "acme/other-base", "peft_type": "LORA"})
    outcome = check_submission(
        request(repo_id="acme/tiny-lora", model_type="adapter", weight_type="adapter"), submitter
    )
    assert codes(outcome) == ["adapter_base_mismatch"]
    assert outcome.problems[0].message == (
        "adapter_config.json's base_model_name_or_path is 'acme/other-base' but base_model in "
        "README.md declares acme/base: make the two name the same model."
    )


# --- 7. datasets --------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["continued-pretraining", "fine-tuned", "chat"])
def test_trained_types_need_datasets(model_root, base, submitter, model_type):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(datasets=None))
    outcome = check_submission(request(model_type=model_type), submitter)
    assert codes(outcome) == ["datasets_missing"]


def test_quantized_needs_no_datasets(model_root, base, submitter):
    make_model_repo(model_root, "acme/tiny-chat", card=fine_tune_card(datasets=None))
    assert check_submission(request(model_type="quantized"), submitter).problems == []


def test_submitted_datasets_become_nodes(model_root, tiny_chat, submitter):
    make_dataset_repo(model_root, "acme/instructions")
    submission = flow.submit(request(), submitter)
    dataset = Repository.objects.get(kind=RepositoryKind.DATASET, repo_id="acme/instructions")
    assert dataset.license == "cc-by-4.0"
    assert LineageEdge.objects.get(child=submission.repository, parent=dataset).relation == (
        Relation.TRAINED_ON
    )


# --- 8. duplicates ------------------------------------------------------------------------------


def test_same_revision_and_precision_is_a_duplicate(tiny_chat, submitter, other_submitter):
    first = flow.submit(request(), submitter)
    outcome = check_submission(request(), other_submitter)
    assert codes(outcome) == ["duplicate_submission"]
    assert f"see its results at /submissions/{first.pk}/." in outcome.problems[0].message
    # Another precision of the same revision is a different evaluation.
    assert check_submission(request(precision="float32"), other_submitter).problems == []


def test_duplicate_race_is_a_refusal_not_an_error(
    tiny_chat, submitter, django_capture_on_commit_callbacks
):
    outcome = check_submission(request(), submitter)
    assert outcome.problems == []
    # Another request wins between the checks and the insert.
    winner = SubmissionFactory(
        repository=RepositoryFactory(repo_id="acme/tiny-chat"),
        revision=outcome.snapshot.sha,
        precision="bfloat16",
    )
    before = table_counts()
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        pytest.raises(Refusal) as refused,
    ):
        flow.record(outcome, submitter)
    assert [item.code for item in refused.value.problems] == ["duplicate_submission"]
    assert f"/submissions/{winner.pk}/" in refused.value.problems[0].message
    assert table_counts() == before
    assert callbacks == []


# --- 9. weekly limit ----------------------------------------------------------------------------


def _past_submissions(user, *ages: timedelta) -> list[Submission]:
    made = []
    for age in ages:
        submission = SubmissionFactory(submitter=user)
        Submission.objects.filter(pk=submission.pk).update(created_at=timezone.now() - age)
        submission.refresh_from_db()
        made.append(submission)
    return made


def test_weekly_limit_says_when_the_next_slot_frees(tiny_chat, submitter, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 2
    older, _, _ = _past_submissions(
        submitter, timedelta(days=5), timedelta(days=1), timedelta(days=8)
    )
    outcome = check_submission(request(), submitter)
    assert codes(outcome) == ["weekly_limit_reached"]
    frees_at = older.created_at + timedelta(days=7)
    assert outcome.problems[0].message == (
        "You have submitted 2 models in the last 7 days and the limit is 2: your next "
        f"submission slot frees at {frees_at:%Y-%m-%d %H:%M} UTC."
    )
    assert outcome.problems[0].field == "submitter"


def test_weekly_limit_counts_a_rolling_week(tiny_chat, submitter, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 2
    _past_submissions(submitter, timedelta(days=6), timedelta(days=7, minutes=1))
    assert check_submission(request(), submitter).problems == []


def test_weekly_limit_runs_even_when_the_repo_is_missing(model_root, submitter, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 0
    outcome = check_submission(request(repo_id="acme/ghost"), submitter)
    assert codes(outcome) == ["repo_not_found", "weekly_limit_reached"]


def test_maintainers_are_exempt_from_the_limit(tiny_chat, maintainer, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 1
    _past_submissions(maintainer, timedelta(hours=1), timedelta(hours=2))
    assert check_submission(request(), maintainer).problems == []
    assert flow.submit(request(), maintainer).submitter == maintainer


def test_limit_is_checked_again_inside_the_transaction(tiny_chat, submitter, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 1
    outcome = check_submission(request(), submitter)
    assert outcome.problems == []
    _past_submissions(submitter, timedelta(minutes=1))  # a concurrent submission landed first
    before = table_counts()
    with pytest.raises(Refusal) as refused:
        flow.record(outcome, submitter)
    assert [item.code for item in refused.value.problems] == ["weekly_limit_reached"]
    assert table_counts() == before


# --- the codes are documented -------------------------------------------------------------------


def test_every_problem_code_is_documented():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "submission.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]+)` \|", docs, flags=re.M))
    assert documented == checks.PROBLEM_FIELDS
