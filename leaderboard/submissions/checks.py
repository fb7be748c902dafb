"""The submission rules as pure functions over the request, a RepoSnapshot and its ParsedCard.

Each rule returns Problems (a stable code, the field it concerns, a message naming the fix);
intake.check_submission runs them all and adds the ones that need the database or the source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from evaluator.vocabulary import is_safetensors, is_weight_pickle
from leaderboard.catalog.cards import (
    CardError,
    ParsedCard,
    declared_datasets,
    declared_parents,
    parse_card,
)
from leaderboard.catalog.sources import RepoSnapshot
from leaderboard.problems import Problem
from leaderboard.submissions.models import ModelType, Precision, WeightType

# Every code a refusal can carry, with the field it is reported on. docs/submission.md documents
# each one; a test keeps the two in step. Codes are part of the API: never rename one.
PROBLEM_FIELDS: dict[str, str] = {
    "invalid_repo_id": "repo_id",
    "repo_not_found": "repo_id",
    "repo_access_denied": "repo_id",
    "source_unavailable": "repo_id",
    "invalid_revision": "revision",
    "revision_not_found": "revision",
    "duplicate_submission": "revision",
    "invalid_precision": "precision",
    "invalid_model_type": "model_type",
    "pretrained_with_parents": "model_type",
    "invalid_weight_type": "weight_type",
    "card_missing": "card",
    "card_unparseable": "card",
    "card_metadata_missing": "card",
    "card_templated": "card",
    "license_missing": "card.license",
    "license_other_incomplete": "card.license",
    "parents_missing": "card.base_model",
    "invalid_parent_id": "card.base_model",
    "self_parent": "card.base_model",
    "parent_not_found": "card.base_model",
    "lineage_cycle": "card.base_model",
    "datasets_missing": "card.datasets",
    "weights_missing": "files",
    "pickle_weights": "files",
    "custom_code": "config.json",
    "parameter_count_unknown": "parameter_count",
    "too_many_parameters": "parameter_count",
    "mergekit_config_missing": "mergekit_config.yml",
    "merge_parent_undeclared": "mergekit_config.yml",
    "merge_parent_unused": "mergekit_config.yml",
    "adapter_config_missing": "adapter_config.json",
    "adapter_base_mismatch": "adapter_config.json",
    "weekly_limit_reached": "submitter",
    "blocked": "repo_id",
}

# Datasets are what these types add over their parents; without them a contaminated dataset
# could not be traced to the model.
DATASETS_REQUIRED = frozenset(
    {ModelType.CONTINUED_PRETRAINING, ModelType.FINE_TUNED, ModelType.CHAT}
)

_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?", re.ASCII)


def problem(code: str, message: str) -> Problem:
    return Problem(code=code, field=PROBLEM_FIELDS[code], message=message)


def _choices(values: Iterable[str]) -> str:
    return ", ".join(values)


def shown(value: str, limit: int = 80) -> str:
    """A typed value quoted for a message, cut short so a pasted essay is not echoed back."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def repo_id_error(repo_id: str, *, namespace_required: bool = True) -> str | None:
    """Why `repo_id` breaks the Hub's naming rules, or None when it follows them: `org/name`,
    each part 1-96 characters of letters, digits, `-`, `_`, `.`, starting and ending with a letter,
    digit or `_`, no `--` or `..`, not ending in `.git`."""
    if not repo_id:
        return "is empty"
    parts = repo_id.split("/")
    if len(parts) > 2 or (namespace_required and len(parts) != 2):
        return "must have the form org/name (one slash)"
    for part in parts:
        if not _REPO_PART.fullmatch(part):
            return (
                f"part {shown(part)} must be 1-96 letters, digits, '-', '_' or '.', and must "
                "not start or end with '-' or '.'"
            )
        if "--" in part or ".." in part:
            return f"part {shown(part)} must not contain '--' or '..'"
    if repo_id.endswith(".git"):
        return "must not end with '.git'"
    return None


def _choice_problem(code: str, what: str, value: str, choices: list[str]) -> Problem:
    if not value:
        return problem(code, f"Choose the {what}: one of {_choices(choices)}.")
    return problem(
        code, f"The {what} {shown(value)} is not supported; choose one of {_choices(choices)}."
    )


def check_input(
    repo_id: str, revision: str, precision: str, model_type: str, weight_type: str
) -> list[Problem]:
    """Rules on the typed fields alone; they run even when the repository cannot be read."""
    problems = []
    example = "e.g. HuggingFaceTB/SmolLM2-135M-Instruct"
    if not repo_id:
        problems.append(
            problem("invalid_repo_id", f"Enter the model's repository id as org/name, {example}.")
        )
    elif error := repo_id_error(repo_id):
        problems.append(
            problem(
                "invalid_repo_id",
                f"The repository id {shown(repo_id)} {error}: enter it as in the repository's URL, "
                f"{example}.",
            )
        )
    if len(revision) > 255 or any(ch.isspace() for ch in revision):
        problems.append(
            problem(
                "invalid_revision",
                "Enter a branch, tag or commit sha without spaces (at most 255 characters); "
                "leave it as 'main' for the default branch.",
            )
        )
    if precision not in Precision.values:
        problems.append(
            _choice_problem("invalid_precision", "precision", precision, Precision.values)
        )
    if model_type not in ModelType.values:
        problems.append(
            _choice_problem("invalid_model_type", "model type", model_type, ModelType.values)
        )
    if weight_type not in WeightType.values:
        problems.append(
            _choice_problem("invalid_weight_type", "weight type", weight_type, WeightType.values)
        )
    return problems


def check_card(card_text: str | None) -> tuple[ParsedCard | None, list[Problem]]:
    """The card is present, its front matter parses, and somebody actually wrote it.

    Returns the parsed card (None when there is none or it does not parse) and the problems."""
    if card_text is None or not card_text.strip():
        return None, [
            problem(
                "card_missing",
                "The repository has no model card: add a README.md with YAML front matter "
                "(license, base_model, datasets) and a description of how the model was made.",
            )
        ]
    try:
        card = parse_card(card_text)
    except CardError as exc:
        return None, [
            problem(
                "card_unparseable",
                f"README.md front matter is not valid YAML ({exc}): fix the block between the "
                "two '---' lines.",
            )
        ]
    problems = []
    if not card.has_front_matter:
        problems.append(
            problem(
                "card_metadata_missing",
                "README.md has no YAML front matter: start it with a '---' block declaring "
                "license, base_model and datasets.",
            )
        )
    if card.looks_templated:
        problems.append(
            problem(
                "card_templated",
                "README.md is empty or still the auto-generated template: describe the model, "
                "how it was trained and its limitations, and remove the '[More Information "
                "Needed]' placeholders.",
            )
        )
    return card, problems


def _text(value: Any) -> str:
    return str(value).strip() if value is not None else ""


def check_license(metadata: dict[str, Any]) -> list[Problem]:
    license_id = _text(metadata.get("license"))
    if not license_id:
        return [
            problem(
                "license_missing",
                "README.md front matter declares no license: add e.g. 'license: apache-2.0'.",
            )
        ]
    if license_id.lower() == "other":
        missing = [key for key in ("license_name", "license_link") if not _text(metadata.get(key))]
        if missing:
            return [
                problem(
                    "license_other_incomplete",
                    "With 'license: other' the front matter must also name the license: add "
                    f"{' and '.join(missing)} (e.g. license_name: llama3, license_link: LICENSE).",
                )
            ]
    return []


def check_weights(snapshot: RepoSnapshot) -> list[Problem]:
    """Workers load safetensors only (decision 2): pickled weights can run code when loaded."""
    problems = []
    names = [path.rsplit("/", 1)[-1] for path in snapshot.files]
    if not any(is_safetensors(name) for name in names):
        pickles = sorted(name for name in names if is_weight_pickle(name))
        if pickles:
            problems.append(
                problem(
                    "pickle_weights",
                    f"The weights are pickle files only ({', '.join(pickles[:5])}), which can run "
                    "code when loaded: convert them to safetensors (e.g. save_pretrained("
                    "safe_serialization=True)) and push the .safetensors files.",
                )
            )
        else:
            problems.append(
                problem(
                    "weights_missing",
                    "The repository has no .safetensors weights at this revision: push the "
                    "model's weights in safetensors format.",
                )
            )
    if snapshot.config and snapshot.config.get("auto_map"):
        problems.append(
            problem(
                "custom_code",
                "config.json has an 'auto_map', so the model needs its own Python code; Trellis "
                "never runs trust_remote_code: use an architecture that transformers ships.",
            )
        )
    return problems


def check_parameter_count(parameter_count: int | None, limit: int) -> list[Problem]:
    if parameter_count is None:
        return [
            problem(
                "parameter_count_unknown",
                "The parameter count could not be read from the safetensors headers: push "
                "complete .safetensors files (with model.safetensors.index.json when sharded).",
            )
        ]
    if parameter_count > limit:
        return [
            problem(
                "too_many_parameters",
                f"The model has {parameter_count:,} parameters; this leaderboard accepts at most "
                f"{limit:,}: submit a smaller model.",
            )
        ]
    return []


def check_parents(
    repo_id: str, metadata: dict[str, Any], model_type: str, weight_type: str
) -> tuple[list[str], list[Problem]]:
    """The card's `base_model` list, and what is wrong with it on its own. Returns the parents
    that are well-formed and not the model itself (the ones worth looking up)."""
    parents = declared_parents(metadata)
    problems = []
    derived = model_type != ModelType.PRETRAINED or weight_type in (
        WeightType.ADAPTER,
        WeightType.DELTA,
    )
    if not parents and derived and model_type in ModelType.values:
        problems.append(
            problem(
                "parents_missing",
                f"A {model_type} model ({weight_type} weights) must declare the models it was "
                "made from: add 'base_model: <org>/<name>' (a list for several) to the README.md "
                "front matter.",
            )
        )
    if parents and model_type == ModelType.PRETRAINED:
        problems.append(
            problem(
                "pretrained_with_parents",
                f"The card declares base_model ({', '.join(parents)}), so the model was not "
                "pretrained from scratch: choose continued-pretraining, fine-tuned, chat, merge, "
                "adapter or quantized, or remove base_model from the card.",
            )
        )
    lookups = []
    for parent in parents:
        error = repo_id_error(parent, namespace_required=False)
        if error:
            problems.append(
                problem(
                    "invalid_parent_id",
                    f"base_model {shown(parent)} {error}: write the parent's Hub id, e.g. "
                    "meta-llama/Llama-3.1-8B, not a path or URL.",
                )
            )
        elif parent.casefold() == repo_id.casefold():
            problems.append(
                problem(
                    "self_parent",
                    f"base_model lists the model itself ({parent}): name the model it was made "
                    "from instead.",
                )
            )
        else:
            lookups.append(parent)
    return lookups, problems


def check_datasets(metadata: dict[str, Any], model_type: str) -> list[Problem]:
    if model_type in DATASETS_REQUIRED and not declared_datasets(metadata):
        return [
            problem(
                "datasets_missing",
                f"A {model_type} model must declare its training data: add 'datasets: "
                "[<org>/<name>, ...]' with the Hub ids of the datasets to the README.md front "
                "matter.",
            )
        ]
    return []


def _model_ref(value: Any) -> str | None:
    """A mergekit model reference as a repo id: `org/name`, `org/name@rev`, `org/name+lora`, or
    a mapping with `model` or `path`."""
    if isinstance(value, dict):
        value = value.get("model", value.get("path"))
        if isinstance(value, dict):
            value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().split("+", 1)[0].split("@", 1)[0]


def mergekit_models(config: dict[str, Any]) -> list[str]:
    """Every model a mergekit config reads: `models[].model`, `base_model`, and
    `slices[].sources[].model`, de-duplicated in order of appearance."""
    refs: list[str | None] = []
    for entry in config.get("models") or []:
        refs.append(_model_ref(entry))
    refs.append(_model_ref(config.get("base_model")))
    for slice_ in config.get("slices") or []:
        if isinstance(slice_, dict):
            for source in slice_.get("sources") or []:
                refs.append(_model_ref(source))
    return list(dict.fromkeys(ref for ref in refs if ref))


def check_merge(parents: list[str], snapshot: RepoSnapshot, model_type: str) -> list[Problem]:
    """A merge's card must declare exactly the models its mergekit config merges."""
    if model_type != ModelType.MERGE:
        return []
    if snapshot.mergekit_config is None:
        return [
            problem(
                "mergekit_config_missing",
                "A merge must ship the mergekit_config.yml it was made with, so its parents can "
                "be checked: push that file to the repository.",
            )
        ]
    used = mergekit_models(snapshot.mergekit_config)
    declared = {parent.casefold() for parent in parents}
    used_folded = {model.casefold() for model in used}
    problems = []
    undeclared = [model for model in used if model.casefold() not in declared]
    if undeclared:
        problems.append(
            problem(
                "merge_parent_undeclared",
                f"mergekit_config.yml merges {', '.join(undeclared)}, which base_model in "
                "README.md does not declare: add them to base_model.",
            )
        )
    unused = [parent for parent in parents if parent.casefold() not in used_folded]
    if unused:
        problems.append(
            problem(
                "merge_parent_unused",
                f"base_model in README.md declares {', '.join(unused)}, which mergekit_config.yml "
                "does not merge: remove them from base_model or fix the config.",
            )
        )
    return problems


def check_adapter(
    parents: list[str] | None, snapshot: RepoSnapshot, weight_type: str
) -> list[Problem]:
    """Adapter weights need their adapter_config.json, whose base must be a declared parent.
    `parents` is None when the card could not be read: then only the file's presence counts."""
    if snapshot.adapter_config is None:
        if weight_type == WeightType.ADAPTER:
            return [
                problem(
                    "adapter_config_missing",
                    "Adapter weights need the adapter_config.json that PEFT writes next to them: "
                    "push it, or choose the weight type 'original' if the adapter is merged in.",
                )
            ]
        return []
    if parents is None:
        return []
    base = _text(snapshot.adapter_config.get("base_model_name_or_path"))
    if not base:
        return [
            problem(
                "adapter_base_mismatch",
                "adapter_config.json does not name base_model_name_or_path: set it to the Hub id "
                "of the model the adapter was trained on.",
            )
        ]
    if base.casefold() not in {parent.casefold() for parent in parents}:
        declared = ", ".join(parents) or "nothing"
        return [
            problem(
                "adapter_base_mismatch",
                f"adapter_config.json's base_model_name_or_path is {shown(base)} but base_model in "
                f"README.md declares {declared}: make the two name the same model.",
            )
        ]
    return []


def architecture_of(config: dict[str, Any] | None) -> str:
    architectures = (config or {}).get("architectures") or []
    if isinstance(architectures, list) and architectures:
        return str(architectures[0])[:100]
    return ""


def merge_method_of(config: dict[str, Any] | None) -> str:
    return _text((config or {}).get("merge_method"))[:40]
