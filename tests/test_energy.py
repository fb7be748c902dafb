"""Energy and carbon per evaluation (issue 14): the worker's meter reads NVML, then RAPL, else
estimates from duration x rated power, always naming its method; the web side stores the energy
and turns it into carbon with TRELLIS_CARBON_INTENSITY, shown per run, in the queue and in
the run's JSON."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from evaluator import energy
from evaluator.messages import ResultPayload
from leaderboard import flow
from leaderboard.evaluations.models import EvaluationRun
from tests.factories import RunFactory, quick_payload


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(energy.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails: no NVIDIA library


def rapl_package(root: Path, index: int, uj: int, max_uj: int = 262_143_328_850) -> Path:
    domain = root / f"intel-rapl:{index}"
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text(f"{uj}\n")
    (domain / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (domain / f"intel-rapl:{index}:0").mkdir()  # a core sub-domain: counted in its package
    (domain / f"intel-rapl:{index}:0" / "energy_uj").write_text("5\n")
    return domain


def test_without_counters_the_energy_is_estimated_from_the_rated_power(
    tmp_path, clock, no_nvml, monkeypatch
):
    monkeypatch.delenv("TRELLIS_RATED_POWER_WATTS", raising=False)
    meter = energy.EnergyMeter(powercap=tmp_path / "absent").start()
    clock[0] += 360.0
    assert meter.reading("cpu") == {
        "duration_seconds": 360.0,
        "device": "cpu",
        "wh": 6.5,  # 65 W for 0.1 h
        "method": "estimate",
        "detail": "360.0 s x 65 W rated power of the cpu (no readable NVML or RAPL counter)",
    }
    monkeypatch.setenv("TRELLIS_RATED_POWER_WATTS", "120")
    assert meter.reading("cpu")["wh"] == 12.0
    monkeypatch.setenv("TRELLIS_RATED_POWER_WATTS", "lots")
    with pytest.raises(ValueError, match="TRELLIS_RATED_POWER_WATTS='lots' is not a number"):
        meter.reading("cpu")


def test_rapl_package_counters_are_read_and_a_wrap_is_unwound(tmp_path, clock, no_nvml):
    first = rapl_package(tmp_path, 0, 1_000_000)
    second = rapl_package(tmp_path, 1, 999_000_000, max_uj=1_000_000_000)
    meter = energy.EnergyMeter(powercap=tmp_path).start()
    clock[0] += 10.0
    (first / "energy_uj").write_text("7201000000\n")  # +7200 J
    (second / "energy_uj").write_text("2600000\n")  # wrapped: +3.6 J
    reading = meter.reading("cpu")
    assert (reading["method"], reading["wh"]) == ("rapl", 2.001)
    assert reading["detail"] == "RAPL package counters (2 package(s), whole package)"


def test_nvml_counters_win_on_a_gpu(tmp_path, clock, monkeypatch):
    counters = {0: 5_000_000, 1: 9_000_000}  # mJ
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: counters[handle],
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    rapl_package(tmp_path, 0, 0)
    meter = energy.EnergyMeter(powercap=tmp_path).start()
    counters[0] += 3_600_000  # 1 Wh
    counters[1] += 1_800_000  # 0.5 Wh
    reading = meter.reading("cuda")
    assert (reading["method"], reading["wh"]) == ("nvml", 1.5)
    assert reading["detail"] == "NVML energy counters of 2 GPU(s)"
    # On the CPU the GPUs' counters say nothing: the package counter is read instead.
    assert meter.reading("cpu")["method"] == "rapl"


def test_the_payload_schema_takes_energy_or_none():
    base = {
        k: v for k, v in quick_payload(1, Path("/tmp/h-energy-artifacts")).items() if k != "energy"
    }
    assert ResultPayload.model_validate(base).energy is None
    with_energy = base | {
        "energy": {"wh": 1.0, "method": "estimate", "detail": "x", "duration_seconds": 2.0}
    }
    assert ResultPayload.model_validate(with_energy).energy.wh == 1.0  # type: ignore[union-attr]


@pytest.mark.django_db
def test_ingest_stores_energy_and_carbon_shown_in_the_run_json(
    artifact_root, settings, anonymous_client
):
    settings.TRELLIS_CARBON_INTENSITY = 400.0
    run = RunFactory(state="running", attempt=1)
    payload = quick_payload(run.pk, artifact_root) | {
        "energy": {
            "wh": 2.5,
            "method": "estimate",
            "detail": "138.5 s x 65 W rated power of the cpu (no readable NVML or RAPL counter)",
            "duration_seconds": 138.5,
        }
    }
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    stored = EvaluationRun.objects.get(pk=run.pk)
    assert (stored.energy_wh, stored.energy_method, stored.co2_grams) == (2.5, "estimate", 1.0)
    body = anonymous_client.get(f"/api/v1/submissions/{run.submission_id}").json()
    assert body["runs"][0]["energy"] == {
        "wh": 2.5,
        "co2_grams": 1.0,
        "method": "estimate",
        "detail": "138.5 s x 65 W rated power of the cpu (no readable NVML or RAPL counter)",
    }
    page = anonymous_client.get(f"/submissions/{run.submission_id}/").content.decode()
    assert "2.50 Wh" in page and "1.00 g CO₂e" in page and "estimate" in page


@pytest.mark.django_db
def test_the_ranking_shows_each_rows_energy_with_its_method(anonymous_client):
    from leaderboard.public.projection import refresh_entries_for
    from tests.factories import ranked

    measured = ranked("acme/measured", 0.6)
    ranked("acme/older-worker", 0.5)
    EvaluationRun.objects.filter(submission=measured).update(
        energy_wh=2.5, co2_grams=1.1875, energy_method="rapl"
    )
    refresh_entries_for([measured.pk])
    rows = anonymous_client.get("/api/v1/leaderboard", {"suite": "open-llm-v1"}).json()["rows"]
    assert [(r["model"], r["energy_wh"], r["co2_grams"], r["energy_method"]) for r in rows] == [
        ("acme/measured", 2.5, 1.1875, "rapl"),
        ("acme/older-worker", None, None, None),
    ]
    html = anonymous_client.get("/", {"suite": "open-llm-v1"}).content.decode()
    assert '<td class="num energy" title="rapl: 1.19 g CO2e">2.50 Wh</td>' in html
    csv = anonymous_client.get("/export.csv", {"suite": "open-llm-v1"}).content.decode()
    assert csv.splitlines()[0].split(",")[18:22] == [
        "verified",
        "energy_wh",
        "co2_grams",
        "energy_method",
    ]


def test_the_real_nvml_library_without_a_driver_falls_back(tmp_path, clock, monkeypatch):
    # nvidia-ml-py is installed (the worker extra), but this machine has no NVIDIA driver.
    pytest.importorskip("pynvml")
    monkeypatch.delenv("TRELLIS_RATED_POWER_WATTS", raising=False)
    meter = energy.EnergyMeter(powercap=tmp_path).start()
    clock[0] += 36.0
    assert (meter.reading("cuda")["method"], meter.reading("cuda")["wh"]) == ("estimate", 3.0)
