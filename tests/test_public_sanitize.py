"""Model cards are untrusted HTML: the sanitizer must defuse hostile ones and keep honest ones."""

from __future__ import annotations

import pytest

from leaderboard.public.sanitize import render_card, strip_front_matter

REL = 'rel="nofollow noopener noreferrer"'


@pytest.mark.parametrize(
    ("card", "html"),
    [
        ("<script>alert(1)</script>hello", "\n<p>hello</p>"),
        ("x <script src=https://evil.example/x.js></script> y", "<p>x  y</p>"),
        ("<style>body{display:none}</style>visible", "\n<p>visible</p>"),
        ("<img src=x onerror=alert(1)>", '<p><img referrerpolicy="no-referrer"></p>'),
        ('<b onclick="steal()" onmouseover="x()">bold</b>', "<p><b>bold</b></p>"),
        ("<svg onload=alert(1)><circle r=5 /></svg>", "<p></p>"),
        ("[click](javascript:alert(1))", f"<p><a {REL}>click</a></p>"),
        ('<a href="JaVaScRiPt:alert(1)">x</a>', f"<p><a {REL}>x</a></p>"),
        ('<a href="jav&#x09;ascript:alert(1)">tab</a>', f"<p><a {REL}>tab</a></p>"),
        ('<a href=" javascript:alert(1)">space</a>', f"<p><a {REL}>space</a></p>"),
        (
            "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
            f"<p><a {REL}>d</a></p>",
        ),
        (
            "![pixel](data:image/png;base64,iVBORw0KGgo=)",
            '<p><img alt="pixel" referrerpolicy="no-referrer"></p>',
        ),
        ('<iframe src="https://evil.example"></iframe>after', "\n<p>after</p>"),
        ('<form action="https://evil.example"><input name="pw"></form>', ""),
        ('<object data="x.swf"></object><embed src="x.swf">', "\n<p></p>"),
        ('<a href="/admin/">relative</a>', f"<p><a {REL}>relative</a></p>"),
        ('<div style="position:fixed;top:0">overlay</div>', "<div>overlay</div>"),
        ("<!-- <script>alert(1)</script> -->text", "\n<p>text</p>"),
        ('<meta http-equiv="refresh" content="0;url=https://evil.example">', "<p></p>"),
    ],
)
def test_hostile_cards_are_defused(card, html):
    assert render_card(card) == html


def test_honest_markdown_survives():
    card = (
        "---\nlicense: apache-2.0\ntags: [merge]\n---\n"
        "# My model\n\nTrained on [the data](https://example.org/data).\n\n"
        "| task | score |\n|---|---|\n| arc | 41.3 |\n\n"
        "```python\nprint('hi')\n```\n"
    )
    assert render_card(card) == (
        "<h1>My model</h1>\n"
        f'<p>Trained on <a href="https://example.org/data" {REL}>the data</a>.</p>\n'
        "<table>\n<thead>\n<tr>\n<th>task</th>\n<th>score</th>\n</tr>\n</thead>\n"
        "<tbody>\n<tr>\n<td>arc</td>\n<td>41.3</td>\n</tr>\n</tbody>\n</table>\n"
        "<pre><code class=\"language-python\">print('hi')\n</code></pre>"
    )


def test_front_matter_is_not_rendered_but_a_later_rule_is():
    assert (
        strip_front_matter("---\nlicense: mit\n---\nbody\n\n---\n\nmore") == "body\n\n---\n\nmore"
    )
    assert strip_front_matter("no front matter\n---\n") == "no front matter\n---\n"
