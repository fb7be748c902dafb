"""A tiny random-weight Llama with a real (small, trained offline) BPE tokenizer and a proper
model card: a repository that passes the submission checks and evaluates in seconds on CPU."""

from __future__ import annotations

import hashlib
import shutil
from functools import cache
from importlib import metadata
from pathlib import Path

from tests.builders import card_text, default_card

TINY_REPO_ID = "trellis-tests/tiny-llama"
# Built weights and tokenizer, reused by every test process and run on this machine: training the
# tokenizer and building the model took 6-12 s of each module that needed one. Keyed by this
# file, evaluator/family.py and the versions that shape the files: a change builds anew.
ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = ROOT / "var" / "test-cache"
FAMILY_SOURCE = ROOT / "evaluator" / "family.py"


def build_tiny_repo(model_root: Path, repo_id: str = TINY_REPO_ID) -> Path:
    """`<model_root>/<repo_id>/`: safetensors weights, config, tokenizer and a pretrained
    model's card (license, no parents needed). A copy: tests may change their repository."""
    path = model_root / repo_id
    path.mkdir(parents=True, exist_ok=True)
    for built in _built_weights().iterdir():
        shutil.copy2(built, path / built.name)
    card = default_card(repo_id, tags=["text-generation", "llama"])
    (path / "README.md").write_text(card_text(card, name=repo_id))
    return path


@cache
def _built_weights() -> Path:
    from filelock import FileLock

    versions = [metadata.version(name) for name in ("torch", "transformers", "tokenizers")]
    sources = [Path(__file__), FAMILY_SOURCE]  # this recipe and the tokenizer's
    key = hashlib.sha256("\n".join([*(p.read_text() for p in sources), *versions]).encode())
    folder = CACHE_ROOT / f"tiny-llama-{key.hexdigest()[:16]}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's processes ask at the same time: one builds, the others wait for it.
    with FileLock(str(folder) + ".lock"):
        if not (folder / "model.safetensors").is_file():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _build_weights(partial)
            partial.rename(folder)
    return folder


def _build_weights(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True)
    from evaluator.data import default_mirror_root
    from evaluator.family import train_tokenizer

    tokenizer = train_tokenizer(path, default_mirror_root())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
