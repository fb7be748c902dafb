"""The one shape of a refusal a user can trigger: each problem names a stable code, the field and
the fix; a `Refusal` carries every problem found and the HTTP status it answers with. Forms, API
routes and management commands all translate this one exception (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ninja import Schema


@dataclass(frozen=True)
class Problem:
    code: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}


class Refusal(Exception):
    """Something a user asked for that cannot be done as asked. `problems` lists every reason at
    once; `status` is the HTTP status an API route answers with (400 unless the problem is one of
    permission, conflict or size)."""

    def __init__(self, problems: Iterable[Problem], status: int = 400) -> None:
        self.problems = list(problems)
        self.status = status
        super().__init__("; ".join(f"{p.code}: {p.message}" for p in self.problems))

    @classmethod
    def one(cls, code: str, field: str, message: str, status: int = 400) -> Refusal:
        return cls([Problem(code=code, field=field, message=message)], status)

    @property
    def code(self) -> str:
        """The first problem's code (most refusals carry exactly one)."""
        return self.problems[0].code if self.problems else ""

    @property
    def message(self) -> str:
        return " ".join(p.message for p in self.problems)

    def as_text(self) -> str:
        """One problem a line, for a management command's CommandError."""
        return "\n".join(f"  {p.code} ({p.field}): {p.message}" for p in self.problems)

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        """The error body of every API route: {"errors": [{"code", "field", "message"}]}."""
        return {"errors": [p.as_dict() for p in self.problems]}


class ErrorItem(Schema):
    code: str
    field: str
    message: str


class Errors(Schema):
    """The error body of every API route, as the OpenAPI document names it."""

    errors: list[ErrorItem]


def error_responses(*statuses: int) -> dict[int, type[Errors]]:
    """A route's refusals for its `response=` declaration: `{**error_responses(400, 404)}`."""
    return dict.fromkeys(statuses, Errors)
