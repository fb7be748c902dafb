"""The public pages in Chromium (Playwright): the ranking's sorting, filters, lineage toggles and
permalinks, the model page's scores and lineage graph, and the plots. Saves the screenshots that
the README shows to docs/screenshots/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop

from leaderboard.public.suites import forget_stored_versions
from tests.conftest import chromium
from tests.factories import SUITE, edge, flag, ranked, repository

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, live_server: Any, settings: Any) -> Iterator[Any]:
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()  # per-process cache; each test has its own database
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.base = live_server.url  # type: ignore[attr-defined]
    yield page
    context.close()


@pytest.fixture
def catalog(django_user_model: Any) -> None:
    """Twelve models covering every filter, a flagged root with a tainted child."""
    # A superuser moderates: transactional tests flush the maintainers group its migration made.
    maintainer = django_user_model.objects.create_superuser("root", "root@example.org", "pw")
    ranked("acme/base-7b", 0.62, model_type="pretrained", parameter_count=7_000_000_000)
    ranked("acme/chat-7b", 0.64, model_type="chat", parameter_count=7_000_000_000)
    ranked("acme/tiny", 0.31, model_type="pretrained", parameter_count=135_000_000, license="mit")
    ranked("beta/fp16-tune", 0.5, precision="float16", parameter_count=1_500_000_000)
    ranked("beta/nc-tune", 0.48, license="cc-by-nc-4.0", parameter_count=1_100_000_000)
    ranked("beta/unlicensed", 0.45, license="", parameter_count=2_000_000_000)
    ranked("gamma/slerp-mix", 0.66, model_type="merge", merge_method="slerp")
    ranked("gamma/ties-mix", 0.58, model_type="merge", merge_method="ties")
    ranked("synthetic-demo/fake", 0.55, is_synthetic=True)
    ranked("delta/big", 0.7, model_type="pretrained", parameter_count=70_000_000_000)
    root = ranked("evil/contaminated", 0.9, model_type="pretrained").repository
    child = ranked("evil/child", 0.85).repository
    edge(child, root)
    dataset = repository("data/leaky-set", kind="dataset")
    edge(repository("acme/tiny"), dataset, "trained-on")
    flag(root, maintainer)


VISIBLE = [
    "delta/big",
    "gamma/slerp-mix",
    "acme/chat-7b",
    "acme/base-7b",
    "gamma/ties-mix",
    "synthetic-demo/fake",
    "beta/fp16-tune",
    "beta/nc-tune",
    "beta/unlicensed",
    "acme/tiny",
]


BY_SIZE = [
    "delta/big",
    "acme/chat-7b",
    "acme/base-7b",
    "beta/unlicensed",
    "beta/fp16-tune",
    "beta/nc-tune",
    "gamma/slerp-mix",
    "gamma/ties-mix",
    "synthetic-demo/fake",
    "acme/tiny",
]
BY_SIZE_ASCENDING = [
    "acme/tiny",
    "gamma/slerp-mix",
    "gamma/ties-mix",
    "synthetic-demo/fake",
    "beta/nc-tune",
    "beta/fp16-tune",
    "beta/unlicensed",
    "acme/chat-7b",
    "acme/base-7b",
    "delta/big",
]


def rows(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#ranking-table tbody tr[data-model]", "rows => rows.map(r => r.dataset.model)"
    )


def wait_rows(page: Any, expected: list[str]) -> None:
    """Wait until the table (swapped by htmx) shows exactly `expected`, in order."""
    page.wait_for_function(
        """expected => JSON.stringify(Array.from(
            document.querySelectorAll('#ranking-table tbody tr[data-model]'),
            r => r.dataset.model)) === JSON.stringify(expected)""",
        arg=expected,
    )
    assert rows(page) == expected


def settle(page: Any, action: Any) -> None:
    """Run `action` and wait for the htmx request it triggers to be answered and swapped."""
    with page.expect_response(lambda r: r.request.headers.get("hx-request") == "true"):
        action()
    page.wait_for_load_state("networkidle")


def test_ranking_loads_and_sorts(page, catalog):
    page.goto(page.base + "/")
    wait_rows(page, VISIBLE)
    assert page.inner_text("#ranking-count").startswith("Showing 1\u201310 of 10 rows")
    header = page.locator('th[data-sort="arc_challenge"]')
    assert "25-shot, metric acc_norm" in header.get_attribute("title")

    settle(page, lambda: page.click('th[data-sort="parameters"] a'))
    # Equal sizes fall back to the average, best first, in both directions.
    wait_rows(page, BY_SIZE)
    assert "sort=parameters" in page.url
    settle(page, lambda: page.click('th[data-sort="parameters"] a'))
    wait_rows(page, BY_SIZE_ASCENDING)
    assert "dir=asc" in page.url
    settle(page, lambda: page.click('th[data-sort="model"] a'))
    wait_rows(page, sorted(VISIBLE))


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (lambda p: p.check('input[name="model_type"][value="chat"]'), ["acme/chat-7b"]),
        (lambda p: p.check('input[name="precision"][value="float16"]'), ["beta/fp16-tune"]),
        (
            lambda p: p.check('input[name="license"][value="restrictive"]'),
            ["beta/nc-tune"],
        ),
        (lambda p: p.check('input[name="license"][value="unknown"]'), ["beta/unlicensed"]),
        (
            lambda p: (p.fill("#f-min", "5"), p.dispatch_event("#f-min", "change")),
            ["delta/big", "acme/chat-7b", "acme/base-7b"],
        ),
        (
            lambda p: (p.fill("#f-max", "0.5"), p.dispatch_event("#f-max", "change")),
            ["acme/tiny"],
        ),
        (
            lambda p: p.check("#f-hide-merges"),
            [name for name in VISIBLE if "-mix" not in name],
        ),
        (
            lambda p: p.check("#f-hide-synthetic"),
            [name for name in VISIBLE if not name.startswith("synthetic-")],
        ),
        (lambda p: p.fill("#f-q", "mix"), ["gamma/slerp-mix", "gamma/ties-mix"]),
    ],
    ids=[
        "type",
        "precision",
        "license-restrictive",
        "license-unknown",
        "min-size",
        "max-size",
        "hide-merges",
        "hide-synthetic",
        "search",
    ],
)
def test_each_filter_changes_the_rows(page, catalog, action, expected):
    page.goto(page.base + "/")
    wait_rows(page, VISIBLE)
    settle(page, lambda: action(page))
    wait_rows(page, expected)


def test_normalized_switch_reorders_and_relabels(page, catalog):
    page.goto(page.base + "/")
    wait_rows(page, VISIBLE)
    settle(page, lambda: page.check("#f-normalized"))
    assert "scores normalized to chance" in page.inner_text("#ranking-count")
    assert "normalized=1" in page.url


def test_flagged_toggle_reveals_hidden_rows_with_badges(page, catalog):
    page.goto(page.base + "/")
    wait_rows(page, VISIBLE)
    note = page.inner_text("#hidden-note")
    assert note.startswith("2 hidden: 1 flagged (show flagged), 1 tainted")

    settle(page, lambda: page.check("#f-show-flagged"))
    wait_rows(page, ["evil/contaminated", *VISIBLE])
    badge = page.locator('tr[data-model="evil/contaminated"] td.lineage .badge')
    assert (badge.inner_text(), badge.get_attribute("class")) == ("flagged", "badge flagged")
    report = page.locator('tr[data-model="evil/contaminated"] td.model .badge.flagged')
    assert report.inner_text() == "contamination"

    settle(page, lambda: page.click("#reveal-tainted"))
    wait_rows(page, ["evil/contaminated", "evil/child", *VISIBLE])
    tainted = page.locator('tr[data-model="evil/child"] td.lineage .badge.tainted')
    assert tainted.get_attribute("title").startswith(
        "evil/child ← evil/contaminated (contamination"
    )
    # The path is a disclosure: reached by keyboard (and touch), not only by hovering.
    path = page.locator('tr[data-model="evil/child"] td.lineage .path')
    assert not path.is_visible()
    tainted.focus()
    page.keyboard.press("Enter")
    assert path.is_visible()
    assert path.inner_text().startswith("evil/child ← evil/contaminated (contamination")
    # At 1,400 px the page never scrolls sideways: a wide table scrolls inside its box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    assert page.is_checked("#f-show-flagged") and page.is_checked("#f-show-tainted")
    assert page.locator("#hidden-note").count() == 0


def test_a_permalink_reproduces_the_view(page, browser, catalog):
    page.goto(page.base + "/")
    wait_rows(page, VISIBLE)
    settle(page, lambda: page.check('input[name="model_type"][value="pretrained"]'))
    settle(page, lambda: page.click('th[data-sort="parameters"] a'))
    settle(page, lambda: page.check("#f-show-flagged"))
    expected = ["delta/big", "acme/base-7b", "evil/contaminated", "acme/tiny"]
    wait_rows(page, expected)
    permalink = page.url
    assert "model_type=pretrained" in permalink and "sort=parameters" in permalink
    assert "&min_params=" not in permalink  # empty inputs are not carried

    other = browser.new_context().new_page()
    other.goto(permalink)
    wait_rows(other, expected)
    assert other.is_checked('input[name="model_type"][value="pretrained"]')
    assert other.is_checked("#f-show-flagged")
    assert other.locator('th[data-sort="parameters"]').get_attribute("class") == "num sorted"
    other.context.close()


def test_model_page_shows_scores_and_lineage_graph(page, catalog):
    page.goto(page.base + "/models/evil/child/")
    page.wait_for_selector("#plot-scores.js-plotly-plot")
    page.wait_for_selector("#plot-lineage.js-plotly-plot")
    assert page.locator("#task-scores tbody tr").count() == 4
    assert page.inner_text('#task-scores tr[data-task="mmlu"] td:nth-child(5)') == "85.00 ± 1.00"
    # Bars with stderr, and the lineage graph's nodes: the model and its flagged parent.
    assert page.locator("#plot-scores .bars .point").count() == 4
    lineage = page.eval_on_selector(
        "#plot-lineage", "el => el.data.flatMap(t => t.text || []).filter(Boolean)"
    )
    assert {"evil/child", "evil/contaminated"} <= set(lineage)
    assert "Tainted through" in page.inner_text("#integrity")


@pytest.fixture
def at_scale(django_user_model: Any) -> None:
    """400 synthetic models; two of the best flagged, a third reported, and three more flagged
    among the earliest (their descendants tainted)."""
    from leaderboard.demo.synthetic import flag_some, seed
    from leaderboard.public.models import RankingEntry
    from tests.factories import report

    seed(400)
    maintainer = django_user_model.objects.create_superuser("root", "root@example.org", "pw")
    best = [
        entry.repository
        for entry in RankingEntry.objects.filter(suite_name=SUITE).order_by("-average_key")[:5]
    ]
    flag(best[1], maintainer)
    flag(best[3], maintainer)
    report(best[4])
    flag_some(3, maintainer)


def test_ranking_and_model_pages_at_scale(page, at_scale):
    """Pagination over a larger catalog, a tainted model's page; the README's screenshots."""
    from leaderboard.catalog.models import Repository

    page.set_viewport_size({"width": 1720, "height": 1000})
    page.goto(page.base + "/?show_tainted=1&show_flagged=1")
    page.wait_for_selector("#ranking-table tbody tr[data-model]")
    assert page.inner_text("#ranking-count").startswith("Showing 1\u201350 of 400 rows")
    first_page = rows(page)
    assert len(first_page) == 50
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "ranking.png"), full_page=False)
    settle(page, lambda: page.click("#page-next"))
    # CI once read the count before the swap showed page 2 (URL unchanged): wait for it.
    page.wait_for_function(
        "() => document.querySelector('#ranking-count').innerText.startsWith('Showing 51')"
    )
    assert page.inner_text("#ranking-count").startswith("Showing 51\u2013100 of 400 rows")
    assert not set(rows(page)) & set(first_page)
    assert "page=2" in page.url

    tainted = Repository.objects.filter(is_synthetic=True, status="tainted").order_by("id").first()
    assert tainted is not None
    page.goto(page.base + f"/models/{tainted.repo_id}/")
    page.wait_for_selector("#plot-scores.js-plotly-plot")
    page.wait_for_selector("#plot-lineage.js-plotly-plot")
    assert "Tainted through" in page.inner_text("#integrity")
    assert page.inner_text("#card h1") == tainted.repo_id.split("/", 1)[1]
    page.screenshot(path=str(SCREENSHOTS / "model.png"), full_page=True)
    page.locator("#lineage").screenshot(path=str(SCREENSHOTS / "lineage.png"))


def test_plots_page_renders_every_chart(page):
    from leaderboard.demo.synthetic import seed

    seed(150)
    page.goto(page.base + "/plots/")
    for name in ("size", "correlation", "types", "merges", "time"):
        page.wait_for_selector(f"#plot-{name}.js-plotly-plot")
    assert page.locator(".js-plotly-plot").count() == 5
    assert page.locator("#plot-size .scatterlayer .point").count() > 100
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "plots.png"), full_page=True)

    settle(page, lambda: page.check('input[name="model_type"][value="chat"]'))
    # The swapped-in chart is drawn after htmx settles: wait for public.js to mark it done.
    page.wait_for_selector("#plot-types.js-plotly-plot[data-rendered]")
    names = page.eval_on_selector("#plot-types", "el => el.data.map(t => t.name)")
    assert len(names) == 1 and names[0].startswith("chat (")
