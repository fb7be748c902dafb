"""The contamination bench's fast mode as a test: a tiny model's family, contaminated on purpose,
must be found by the combined signals, and its clean members left alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Below what the fast bench measures (docs/contamination.md: detection 1.00, fpr 0.00), with room
# for one miss among the 9 contaminated models (8/9 = 0.89) and one false positive among the 11
# clean ones (1/11 = 0.09); two of either fail.
MIN_DETECTION = 0.85
MAX_FPR = 0.1
SUMMARY = re.compile(r"detection: (\d\.\d\d) fpr: (\d\.\d\d) auc: (\d\.\d{3})")


@pytest.mark.slow
def test_fast_bench_finds_the_contaminated_children_and_spares_the_clean_ones(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "contamination_signals.py"),
            "--fast",
            "--work",
            str(tmp_path),
            "--min-detection",
            str(MIN_DETECTION),
            "--max-fpr",
            str(MAX_FPR),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    summary = SUMMARY.fullmatch(lines[-1])
    assert summary is not None, result.stdout[-3000:]
    detection, fpr, auc = (float(x) for x in summary.groups())
    assert result.returncode == 0, result.stdout[-3000:]
    assert detection >= MIN_DETECTION
    assert fpr <= MAX_FPR
    assert auc >= 0.9
