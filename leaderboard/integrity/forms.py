"""The report form: collects the fields and shows each refusal next to its field; the rules
live in leaderboard.integrity.reports.record_report, for the form and the API alike."""

from __future__ import annotations

from django import forms

from leaderboard.integrity.models import ReportKind
from leaderboard.integrity.reports import LINKS_MAX
from leaderboard.problems import Problem


class ReportForm(forms.Form):
    kind = forms.ChoiceField(
        choices=ReportKind.choices,
        help_text="Contamination: the model saw benchmark test data. Lineage: a parent or a "
        "training dataset is undisclosed or false. License: the declared license is wrong.",
    )
    evidence = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "required": True}),
        help_text="What is wrong and how you found out, in words a maintainer can check. "
        "It is shown publicly on the repository's page.",
    )
    links = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "https://…"}),
        help_text=f"Up to {LINKS_MAX} http(s) links supporting the evidence, one per line.",
    )

    def add_problems(self, problems: list[Problem]) -> None:
        for item in problems:
            field = item.field if item.field in self.fields else None
            self.add_error(field, forms.ValidationError(item.message, code=item.code))
