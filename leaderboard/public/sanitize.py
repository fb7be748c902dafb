"""Model cards as safe HTML: Markdown rendered, then cleaned by nh3 (ammonia) against an
allow-list, so a hostile card cannot run script, attach event handlers or smuggle
javascript:/data: URLs into the page."""

from __future__ import annotations

import re

import markdown
import nh3

ALLOWED_TAGS = frozenset(
    {
        "a",
        "abbr",
        "b",
        "blockquote",
        "br",
        "code",
        "dd",
        "del",
        "details",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "img",
        "kbd",
        "li",
        "ol",
        "p",
        "pre",
        "s",
        "span",
        "strong",
        "sub",
        "summary",
        "sup",
        "table",
        "tbody",
        "td",
        "th",
        "thead",
        "tr",
        "ul",
    }
)
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "abbr": {"title"},
    "th": {"align"},
    "td": {"align"},
    "code": {"class"},
}
# Relative URLs would resolve against Trellis itself, not the model's repository: dropped too.
URL_SCHEMES = frozenset({"http", "https", "mailto"})

_FRONT_MATTER = re.compile(r"\A\ufeff?\s*---[ \t]*\r?\n.*?\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def strip_front_matter(text: str) -> str:
    """The card body without its YAML metadata block (shown separately as fields)."""
    return _FRONT_MATTER.sub("", text, count=1)


def render_card(text: str) -> str:
    """Sanitized HTML of a model card's Markdown body."""
    html = markdown.markdown(
        strip_front_matter(text or ""),
        extensions=["tables", "fenced_code", "sane_lists"],
        output_format="html",
    )
    return clean_html(html)


def clean_html(html: str) -> str:
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="nofollow noopener noreferrer",
        strip_comments=True,
        url_relative="deny",
        set_tag_attribute_values={"img": {"referrerpolicy": "no-referrer"}},
    )
