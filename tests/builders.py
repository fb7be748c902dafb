"""Builders of on-disk model and dataset repositories shaped like real Hugging Face ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import save_file

CARD_BODY = """
# {name}

{name} is a {kind} language model. This card describes how it was trained, what data it saw,
and how it should be used.

## Training procedure

Trained with a cosine schedule for three epochs on the declared datasets.

## Evaluation

See the model-index in the front matter.

## Limitations

It can produce wrong or biased text; do not use it for decisions about people.
"""


def card_text(metadata: dict[str, Any] | None, body: str | None = None, name: str = "model") -> str:
    """README.md with YAML front matter, like the Hub's model cards."""
    text_body = body if body is not None else CARD_BODY.format(name=name, kind="causal")
    if metadata is None:
        return text_body
    front = yaml.safe_dump(metadata, sort_keys=False)
    return f"---\n{front}---\n{text_body}"


def default_card(repo_id: str, **overrides: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "license": "apache-2.0",
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["text-generation"],
        "model-index": [
            {
                "name": repo_id.split("/")[-1],
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Text Generation"},
                        "dataset": {"name": "AI2 Reasoning Challenge (25-Shot)", "type": "ai2_arc"},
                        "metrics": [
                            {"type": "acc_norm", "value": 41.3, "name": "normalized accuracy"}
                        ],
                    }
                ],
            }
        ],
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def write_safetensors(path: Path, hidden: int = 8, layers: int = 2, vocab: int = 32) -> int:
    """A small llama-shaped safetensors file; returns its parameter count."""
    tensors = {"model.embed_tokens.weight": np.zeros((vocab, hidden), dtype=np.float32)}
    for i in range(layers):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = np.zeros(
            (hidden, hidden), np.float32
        )
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = np.zeros((hidden * 2, hidden), np.float32)
    save_file(tensors, str(path))
    return sum(int(np.prod(t.shape)) for t in tensors.values())


def make_model_repo(
    root: Path,
    repo_id: str,
    *,
    card: dict[str, Any] | str | None = "default",
    body: str | None = None,
    weights: str = "safetensors",
    config: dict[str, Any] | None = None,
    mergekit: dict[str, Any] | None = None,
    adapter: dict[str, Any] | None = None,
    git: bool = False,
) -> Path:
    """Create `<root>/<org>/<name>/` with README.md, config.json and weights.

    card="default" writes a realistic card; a dict writes that front matter; None writes no
    README at all; a str writes it verbatim. weights: "safetensors", "bin", "both" or "none".
    """
    path = root / repo_id
    path.mkdir(parents=True, exist_ok=True)
    if card == "default":
        (path / "README.md").write_text(card_text(default_card(repo_id), body, repo_id))
    elif isinstance(card, dict):
        (path / "README.md").write_text(card_text(card, body, repo_id))
    elif isinstance(card, str):
        (path / "README.md").write_text(card)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "num_hidden_layers": 2,
        "vocab_size": 32,
        "torch_dtype": "float32",
    }
    cfg.update(config or {})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if weights in ("safetensors", "both"):
        write_safetensors(path / "model.safetensors")
    if weights in ("bin", "both"):
        (path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 pickle payload")
    if mergekit is not None:
        (path / "mergekit_config.yml").write_text(yaml.safe_dump(mergekit, sort_keys=False))
    if adapter is not None:
        (path / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    if git:
        run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True)  # noqa: E731
        run("init", "-q")
        run("add", "-A")
        run("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-qm", "init")
    return path


def make_dataset_repo(root: Path, repo_id: str, license: str = "cc-by-4.0") -> Path:
    path = root / "datasets" / repo_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(
        card_text({"license": license, "task_categories": ["text-generation"]}, "# data\n")
    )
    (path / "data.jsonl").write_text('{"text": "hello"}\n')
    return path
