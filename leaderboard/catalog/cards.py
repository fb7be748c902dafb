"""Model-card reading: front matter through huggingface_hub, and what a card declares."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import yaml
from huggingface_hub import RepoCard

# Phrases the Hub's card template leaves behind when nobody filled it in.
TEMPLATE_MARKERS = (
    "[More Information Needed]",
    "<!-- Provide a quick summary",
    "Model Card for Model ID",
)
MIN_BODY_WORDS = 25

MERGE_TAGS = {"merge", "mergekit"}
RELATION_BY_HUB_NAME = {
    "finetune": "fine-tune",
    "fine-tune": "fine-tune",
    "merge": "merge",
    "adapter": "adapter",
    "quantized": "quantized",
}


class CardError(ValueError):
    """The card's front matter could not be parsed."""


@dataclass
class ParsedCard:
    metadata: dict[str, Any]
    body: str
    has_front_matter: bool
    problems: list[str] = field(default_factory=list)

    @property
    def looks_templated(self) -> bool:
        """Empty, or the Hub's auto-generated template with its placeholders left in."""
        words = re.findall(r"[A-Za-z]{2,}", re.sub(r"<!--.*?-->", " ", self.body, flags=re.S))
        if len(words) < MIN_BODY_WORDS:
            return True
        return sum(self.body.count(marker) for marker in TEMPLATE_MARKERS) >= 2


def parse_card(text: str) -> ParsedCard:
    """Split a README.md into front-matter metadata and body. Raises CardError when the front
    matter exists but is not valid YAML mapping."""
    # Editors on Windows save a byte-order mark that would hide the front matter.
    text = text.lstrip("\ufeff")
    stripped = text.lstrip()
    has_front_matter = stripped.startswith("---")
    logger = logging.getLogger("huggingface_hub.repocard")
    previous = logger.level
    logger.setLevel(
        logging.ERROR
    )  # "metadata block was not found" is our check's job, not a log line
    try:
        card = RepoCard(text, ignore_metadata_errors=False)
    except (yaml.YAMLError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CardError(first_line) from exc
    finally:
        logger.setLevel(previous)
    metadata = card.data.to_dict() if card.data else {}
    if not isinstance(metadata, dict):
        raise CardError("front matter is not a mapping of keys to values")
    if has_front_matter and not metadata and _UNCLOSED.match(stripped):
        raise CardError("front matter opened with '---' is never closed by a '---' line")
    return ParsedCard(
        metadata=_json_safe(metadata), body=card.text or "", has_front_matter=has_front_matter
    )


# "---" opening a block with no closing "---" line after it (an empty block "---\n---" closes).
_UNCLOSED = re.compile(r"\A---[ \t]*\r?\n(?![\s\S]*^---[ \t]*\r?$)", re.M)


def _json_safe(value: Any) -> Any:
    """YAML gives dates and other types a JSONField cannot store; cards are kept as JSON."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(item) for item in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _as_list(value: Any) -> list[str]:
    """A string or list of strings as a list; anything else (a mapping, a nested list) names
    no repository and is left out."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    names = [str(item).strip() for item in items if isinstance(item, (str, int, float))]
    return [name for name in names if name]


def declared_parents(metadata: dict[str, Any]) -> list[str]:
    """`base_model` as a de-duplicated list, in declared order."""
    return list(dict.fromkeys(_as_list(metadata.get("base_model"))))


def declared_datasets(metadata: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(_as_list(metadata.get("datasets"))))


def declared_relation(metadata: dict[str, Any]) -> str:
    """How a card's model relates to its parents: `base_model_relation` when the card says,
    else a merge when tagged as one, else a fine-tune."""
    hub_value = str(metadata.get("base_model_relation") or "").strip().lower()
    if hub_value in RELATION_BY_HUB_NAME:
        return RELATION_BY_HUB_NAME[hub_value]
    tags = {str(tag).lower() for tag in _as_list(metadata.get("tags"))}
    if tags & MERGE_TAGS:
        return "merge"
    return "fine-tune"


RELATION_BY_MODEL_TYPE = {
    "merge": "merge",
    "adapter": "adapter",
    "quantized": "quantized",
}


def relation_for_model_type(model_type: str) -> str:
    """The relation of a submitted model to its declared parents, from its declared type."""
    return RELATION_BY_MODEL_TYPE.get(model_type, "fine-tune")
