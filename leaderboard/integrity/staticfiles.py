"""A static-files finder that serves the Plotly bundle shipped inside the `plotly` package.

The app must work offline (no CDN) and the repository must not carry a 4.6 MB copy, so the
one file `plotly/plotly.min.js` is served straight from `plotly/package_data/`: by `runserver`
and WhiteNoise through the finders, and copied by `collectstatic` for real deployments.
Only that file is exposed, not the rest of `package_data/` (widget bundle, sample datasets).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

PLOTLY_PREFIX = "plotly"
PLOTLY_FILE = "plotly.min.js"
PLOTLY_STATIC_PATH = f"{PLOTLY_PREFIX}/{PLOTLY_FILE}"


def plotly_package_data() -> Path:
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data"


class PlotlyFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.location = plotly_package_data()
        self.storage = FileSystemStorage(location=str(self.location))
        # WhiteNoise and collectstatic read `prefix` to place the file under plotly/.
        self.storage.prefix = PLOTLY_PREFIX  # type: ignore[attr-defined]
        super().__init__(*args, **kwargs)

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        if not (self.location / PLOTLY_FILE).is_file():
            return [
                Error(
                    f"{self.location / PLOTLY_FILE} is missing.",
                    hint="Reinstall the `plotly` package (pip install plotly).",
                    id="integrity.E001",
                )
            ]
        return []

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> Any:
        if path != PLOTLY_STATIC_PATH:
            return [] if find_all else ""
        match = str(self.location / PLOTLY_FILE)
        return [match] if find_all else match

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        yield PLOTLY_FILE, self.storage
