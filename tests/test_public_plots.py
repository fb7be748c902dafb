"""The figures the pages send (public/plots.py builds them as plain dicts): each one is valid
for Plotly's schema, the size scatter of many rows is thinned to a grid but keeps every outlier,
and the boxes carry the statistics Plotly would compute from every score."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest

from leaderboard.public import plots
from leaderboard.public.suites import forget_stored_versions
from tests.factories import SUITE, ranked

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _default_suite(settings):
    settings.TRELLIS_DEFAULT_SUITE = SUITE
    forget_stored_versions()


def figures(html: str) -> dict[str, dict]:
    found = {}
    for part in html.split('<script type="application/json" id="figure-')[1:]:
        name, rest = part.split('">', 1)
        found[name] = json.loads(rest.split("</script>", 1)[0])
    return found


def test_every_figure_of_the_pages_is_valid_for_plotly(anonymous_client):
    for index in range(8):
        merge = index % 2 == 1
        ranked(
            f"org/model-{index}",
            0.3 + index / 20,
            parameter_count=(index + 1) * 10**9,
            merge_method="ties" if merge else "",
            model_type="merge" if merge else "chat",
        )
    pages = {
        "/plots/": {"size", "correlation", "types", "merges", "time"},
        "/plots/?q=nothing": {"size", "correlation", "types", "merges", "time"},
        "/models/org/model-3/": {"scores", "lineage"},
        "/models/org/model-3/?normalized=1": {"scores", "lineage"},
        "/compare/?models=org/model-1,org/model-2": {"compare"},
    }
    for url, names in pages.items():
        found = figures(anonymous_client.get(url).content.decode())
        assert set(found) == names, url
        for name, figure in found.items():
            go.Figure(figure)  # raises ValueError on a property Plotly does not know
            assert figure["layout"]["template"]["layout"]["plot_bgcolor"], (url, name)


def test_the_size_scatter_of_many_rows_draws_one_row_per_cell_and_every_outlier(
    anonymous_client, monkeypatch
):
    monkeypatch.setattr(plots, "SCATTER_POINTS", 9)
    for index in range(40):
        ranked(f"org/row-{index:02d}", 0.40 + (index % 7) / 100, parameter_count=7 * 10**9 + index)
    ranked("org/jump", 0.95, parameter_count=7 * 10**9 + 99)
    size = figures(anonymous_client.get("/plots/").content.decode())["size"]
    rows, _unscored, outliers = size["data"]
    assert len(rows["x"]) <= 9
    assert rows["name"] == f"rows ({len(rows['x'])} of 40 drawn, one per grid cell)"
    assert outliers["customdata"] == ["org/jump"]
    # Each drawn row is a real one, with its own size and score.
    assert set(rows["customdata"]) <= {f"org/row-{index:02d}" for index in range(40)}


def test_the_listed_outliers_carry_the_ranking_rows_badges(anonymous_client):
    for index in range(12):
        ranked(f"org/row-{index:02d}", 0.40 + (index % 5) / 100, parameter_count=7 * 10**9)
    ranked(
        "org/jump<b>",
        0.95,
        parameter_count=7 * 10**9,
        merge_method="ties & more",
        model_type="merge",
    )
    html = anonymous_client.get("/plots/").content.decode()
    listed = html.split("org/jump&lt;b&gt;</a>", 1)[1].split("</td>", 1)[0]
    assert listed == '<span class="badge merge" title="Merge (ties &amp; more)">merge</span>'


def test_a_box_carries_the_statistics_plotly_would_compute():
    box = plots._box("chat (5 rows)", [3.0, 1.0, 4.0, 100.0, 2.0])
    assert {
        key: box[key] for key in ("q1", "median", "q3", "lowerfence", "upperfence", "mean")
    } == {
        "q1": [2.0],
        "median": [3.0],
        "q3": [4.0],
        "lowerfence": [1.0],
        "upperfence": [4.0],  # 100 is beyond q3 + 1.5 IQR
        "mean": [22.0],
    }
    assert plots._box("one (1 row)", [5.0])["median"] == [5.0]
