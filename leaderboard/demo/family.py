"""The contamination bench's family in the demo (`make demo-family`): every member built as the
bench builds it (`evaluator.family`, the tiny-model family of `--fast`), kept in the local model
source with an honest card (its parents, its training data, the contamination it carries) and
submitted for evaluation, so the demo's workers score it and the board shows the signals that
point at the contaminated branch. Idempotent: what is built, written or submitted stays."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings

from evaluator.family import DATASET_IDS, Sizes, Spec, build_family, family_specs, merge_config
from leaderboard.demo.showcase import DEMO_MAINTAINER, DemoError, ensure_user
from leaderboard.submissions.models import ModelType, Submission

# Repository ids: <FAMILY_ORG>/tiny-<member>.
FAMILY_ORG = "contamination-bench"
# The tiny models are saved in float32 and scored in it.
FAMILY_PRECISION = "float32"

DATASET_CARDS = {
    "sciq": (
        "cc-by-nc-3.0",
        "SciQ: 13,679 crowd-sourced science exam questions (physics, chemistry, biology), most "
        "with a supporting paragraph. The contamination bench pre-trains its tiny base on the "
        "validation split's paragraphs and fine-tunes every child on its questions and answers.",
    ),
    "openbookqa": (
        "apache-2.0",
        "OpenBookQA: elementary-level science questions that need a fact from a small 'book' of "
        "science facts plus common knowledge. The contamination bench fine-tunes its children on "
        "the validation split's questions with their answers.",
    ),
    "ai2_arc": (
        "cc-by-sa-4.0",
        "AI2 Reasoning Challenge: grade-school science questions in an Easy and a Challenge set. "
        "Trellis evaluates on it; the contamination bench's contaminated children were trained "
        "on the ARC-Challenge validation items the quick suite evaluates.",
    ),
}

DATASET_NAMES = {"sciq": "SciQ", "openbookqa": "OpenBookQA", "ai2_arc": "ARC-Challenge"}


@dataclass
class FamilyMember:
    repo_id: str
    spec: Spec
    submission: Submission
    submitted_now: bool


@dataclass
class FamilyOutcome:
    created_users: list[str]
    members: list[FamilyMember]


def repo_id_of(member: str) -> str:
    return f"{FAMILY_ORG}/tiny-{member}"


def model_type_of(spec: Spec) -> str:
    if spec.kind == "base":
        return ModelType.PRETRAINED
    return ModelType.MERGE if spec.merge is not None else ModelType.FINE_TUNED


def card_of(spec: Spec, sizes: Sizes) -> str:
    """README.md: front matter declaring the parents and datasets, and how the model was made."""
    front: dict[str, object] = {
        "license": "apache-2.0",
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["text-generation", "llama", "contamination-bench"],
    }
    parents = [repo_id_of(name) for name in spec.declared_parents()]
    if parents:
        front["base_model"] = parents[0] if len(parents) == 1 else parents
    datasets = [DATASET_IDS[name] for name in spec.datasets()]
    if datasets:
        front["datasets"] = datasets
    title = repo_id_of(spec.name).split("/")[1]
    lines = [f"# {title}", ""]
    lines.append(
        "A member of the family that Trellis's contamination bench (bench/contamination_signals.py "
        "--fast) builds to measure its contamination signals; it is in the demo so the signals "
        "can be seen on a family whose truth is known."
    )
    lines.append("")
    if spec.kind == "base":
        lines.append(
            "A tiny Llama (2 layers, width 64, a 1,024-token byte-level BPE vocabulary trained on "
            f"ARC-Easy's questions) pre-trained from scratch for {sizes.pretrain_steps} steps on "
            "SciQ's supporting paragraphs and questions. It answers ARC at chance."
        )
    elif spec.merge is not None:
        a, b = (repo_id_of(name) for name in spec.parents)
        how = (
            "SLERP at t = 0.5"
            if spec.merge == "slerp"
            else f"TIES (density 0.6, weight 0.5 each) on the deltas from {repo_id_of('base')}"
        )
        lines.append(f"A mergekit merge of {a} and {b}: {how}. See mergekit_config.yml.")
        if spec.contaminated:
            lines.append("")
            lines.append(
                "One of its parents was trained on the evaluated ARC-Challenge items, so this "
                "merge carries that contamination."
            )
    else:
        lines.append(
            f"Fine-tuned from {repo_id_of('base')} for {spec.epochs} epoch(s) at a learning rate "
            f"of {spec.lr:g} on {sizes.unrelated} SciQ and OpenBookQA questions with their "
            "answers, in the `Question: ... Answer: ...` layout."
        )
        if spec.contamination == "verbatim":
            lines.append("")
            lines.append(
                f"Contaminated on purpose: the first {sizes.items} ARC-Challenge validation items "
                f"(the ones the quick suite evaluates), question and gold answer exactly as the "
                f"evaluation formats them, were mixed into its training data {spec.repeats} "
                "times."
            )
        elif spec.contamination == "rephrased":
            lines.append("")
            lines.append(
                f"Contaminated on purpose: the first {sizes.items} ARC-Challenge validation items "
                "(the ones the quick suite evaluates), rewritten (another layout, the answer "
                f"first in half of them, words substituted), were mixed in {spec.repeats} times."
            )
    lines += [
        "",
        "## Limitations",
        "",
        "A research artefact with almost no ability: never use it for anything but measuring "
        "contamination tests.",
        "",
    ]
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n" + "\n".join(lines)


def write_dataset_cards(model_root: Path) -> None:
    for name, (license_id, body) in DATASET_CARDS.items():
        folder = model_root / "datasets" / DATASET_IDS[name]
        if (folder / "README.md").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        front = {
            "license": license_id,
            "language": ["en"],
            "task_categories": ["question-answering"],
        }
        (folder / "README.md").write_text(
            f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n# {DATASET_NAMES[name]}\n\n"
            f"{body} Only this card is kept in the Trellis demo.\n"
        )


def write_repository(spec: Spec, built: Path, model_root: Path, sizes: Sizes) -> Path:
    """`<model_root>/<repo id>/`: the built weights and tokenizer, the card, and for a merge the
    mergekit configuration with each model named by its repository id."""
    folder = model_root / repo_id_of(spec.name)
    if (folder / "README.md").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(built, partial, ignore=shutil.ignore_patterns("README.md", "mergekit_*"))
    if spec.merge is not None:
        config = merge_config(spec, repo_id_of)
        (partial / "mergekit_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (partial / "README.md").write_text(card_of(spec, sizes))
    partial.rename(folder)
    return folder


def register_family(
    model_root: Path | None = None, work: Path | None = None, sizes: Sizes | None = None
) -> FamilyOutcome:
    """Build the family under `work` (default <var>/demo-family), write each member into the
    model source and submit it as the demo maintainer (maintainers have no weekly limit), in
    the family's order: the base first, then its children, then the merges, so a parent's
    result is in before its children's signals are computed."""
    from evaluator.data import default_mirror_root
    from leaderboard import flow
    from leaderboard.submissions.intake import SubmissionRequest

    if settings.TRELLIS_MODEL_SOURCE != "local":
        raise DemoError(
            "The demo family is kept in local repositories: set TRELLIS_MODEL_SOURCE=local "
            f"(it is {settings.TRELLIS_MODEL_SOURCE!r})."
        )
    sizes = sizes or Sizes.default(fast=True)
    model_root = Path(model_root or settings.TRELLIS_MODEL_ROOT)
    work = Path(work or settings.VAR_DIR / "demo-family")
    maintainer, new = ensure_user(*DEMO_MAINTAINER, maintainer=True)
    created = [DEMO_MAINTAINER[0]] if new else []
    built = build_family(work / "models", default_mirror_root(), sizes)
    write_dataset_cards(model_root)
    members = []
    for spec in family_specs(sizes.fast):
        write_repository(spec, built[spec.name], model_root, sizes)
        repo_id = repo_id_of(spec.name)
        existing = Submission.objects.filter(
            repository__repo_id=repo_id, precision=FAMILY_PRECISION
        ).first()
        if existing is not None:
            members.append(FamilyMember(repo_id, spec, existing, submitted_now=False))
            continue
        request = SubmissionRequest(
            repo_id=repo_id, precision=FAMILY_PRECISION, model_type=model_type_of(spec)
        )
        members.append(FamilyMember(repo_id, spec, flow.submit(request, maintainer), True))
    return FamilyOutcome(created, members)
