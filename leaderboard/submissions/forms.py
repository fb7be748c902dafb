"""The submission form: collects the five fields and shows each refusal next to its field.

It validates nothing itself: intake.check_submission is the one judge, for the form and the
API alike."""

from __future__ import annotations

import re

from django import forms
from django.core.exceptions import ValidationError

from leaderboard.problems import Problem
from leaderboard.submissions.intake import SubmissionRequest
from leaderboard.submissions.models import ModelType, Precision, WeightType

# Any host: the public Hub, a mirror named by HF_ENDPOINT, or Trellis's own model pages.
HUB_URL = re.compile(
    r"^https?://[^/\s]+/(?:models/)?(?P<org>[\w.-]+)/(?P<name>[\w.-]+)(?:/(?:tree|blob)/\S*)?/?$"
)
INPUT_FIELDS = ("repo_id", "revision", "precision", "model_type", "weight_type")


class SubmissionForm(forms.Form):
    repo_id = forms.CharField(
        label="Repository",
        required=False,
        widget=forms.TextInput(
            attrs={"placeholder": "org/name", "required": True, "autocomplete": "off"}
        ),
        help_text="The model's repository id, org/name. Its README.md front matter must declare "
        "a license, its parents (base_model) and its training datasets, and its weights must be "
        "safetensors: workers never load pickles or custom code.",
    )
    revision = forms.CharField(
        required=False,
        initial="main",
        help_text="Branch, tag or commit sha. It is pinned to the commit sha at submission, so "
        "later pushes cannot change what was evaluated.",
    )
    precision = forms.CharField(
        required=False,
        initial=Precision.BFLOAT16,
        widget=forms.Select(choices=Precision.choices),
        help_text="The dtype the weights are loaded in for evaluation. A revision can be "
        "submitted once per precision.",
    )
    model_type = forms.CharField(
        label="Model type",
        required=False,
        widget=forms.Select(choices=[("", "choose how the model was made"), *ModelType.choices]),
        help_text="How the model was made. Every type but pretrained must declare its parents in "
        "base_model, so that a flag on a parent reaches it; continued-pretraining, fine-tuned "
        "and chat models must also declare their datasets; merges must ship the "
        "mergekit_config.yml that names the same parents.",
    )
    weight_type = forms.CharField(
        label="Weight type",
        required=False,
        initial=WeightType.ORIGINAL,
        widget=forms.Select(choices=WeightType.choices),
        help_text="original: complete weights. adapter: PEFT adapter weights with their "
        "adapter_config.json, whose base_model_name_or_path must be the declared parent. delta: "
        "differences to the declared base model. Adapters and deltas need a declared parent.",
    )

    def clean_repo_id(self) -> str:
        """A pasted Hub address (https://huggingface.co/org/name, with /tree/<rev> or a
        trailing slash) is understood as the repository id it names."""
        value = (self.cleaned_data.get("repo_id") or "").strip()
        found = HUB_URL.match(value)
        if found:
            return f"{found['org']}/{found['name']}"
        return value

    def to_request(self) -> SubmissionRequest:
        data = self.cleaned_data
        return SubmissionRequest(**{name: data.get(name) or "" for name in INPUT_FIELDS})

    def add_problems(self, problems: list[Problem]) -> None:
        """Each problem goes next to the field that fixes it: the typed fields by name, what is
        wrong inside the repository next to the repository, the weekly limit above the form."""
        for item in problems:
            if item.field in INPUT_FIELDS:
                target: str | None = item.field
            elif item.field == "submitter":
                target = None
            else:
                target = "repo_id"
            self.add_error(
                target, ValidationError(item.message, code=item.code, params={"where": item.field})
            )
