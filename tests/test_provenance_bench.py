"""The weight-provenance benchmark on tiny models (`bench/provenance.py --fast`): a family with
known lineage built with real fine-tuning and mergekit, related from fingerprints alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_fast_benchmark_recovers_the_tiny_family(tmp_path):
    pytest.importorskip("mergekit")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "provenance.py"), "--fast", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    out = finished.stdout
    last = out.strip().splitlines()[-1]
    found = re.fullmatch(r"precision: (\d\.\d{3}) recall: (\d\.\d{3})", last)
    assert found, last
    rows = {
        match.group(1): (float(match.group(2)), float(match.group(3)))
        for match in re.finditer(r"^(\w+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s", out, re.MULTILINE)
    }
    # Issue 10's targets: re-uploads and casts all found with none false, fine-tune parents and
    # merge parents (TIES included, with their base) >= 0.95 and >= 0.9; the tiny family meets
    # them with every parent found (docs/provenance.md has the table).
    assert rows["same_weights"] == (1.0, 1.0)
    assert rows["derived_from"][0] >= 0.95 and rows["derived_from"][1] >= 0.95, out
    assert rows["merge_of"][0] >= 0.9 and rows["merge_of"][1] >= 0.9, out
    assert "unrelated models related to anything: 0" in out
    assert float(found.group(1)) >= 0.95 and float(found.group(2)) >= 0.95, out
