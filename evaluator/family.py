"""A family of models contaminated on purpose: who is in it, the texts each member is trained on,
and how each is made (fine-tuned from one base, or merged with mergekit). The contamination
bench measures the signals on it (bench/contamination_signals.py) and `make demo-family`
registers it in the demo; both build it here, so the demo shows the family the bench measured.

torch, transformers, tokenizers and mergekit are imported inside the builders: a host that only
reads the specs (the web side, the bench's report) does not load them."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluator.reference import arc_item, mirror_docs

# Folders of the local mirror (evaluator.data.default_mirror_root).
ARC_C = "ai2_arc/ARC-Challenge/validation"
ARC_E = "ai2_arc/ARC-Easy/validation"
SCIQ = "sciq/none/validation"
OBQA = "openbookqa/main/validation"

# The same data under the Hub ids a card declares.
DATASET_IDS = {
    "sciq": "allenai/sciq",
    "openbookqa": "allenai/openbookqa",
    "ai2_arc": "allenai/ai2_arc",
}


@dataclass
class Spec:
    """One model of the family: how it is made."""

    name: str
    kind: (
        str  # base | clean | verbatim | rephrased | merge-verbatim | merge-rephrased | merge-clean
    )
    parents: list[str] = field(default_factory=list)
    epochs: int = 1
    lr: float = 0.0
    seed: int = 0
    contamination: str | None = None  # None | verbatim | rephrased
    repeats: int = 0  # how many times the test items are mixed in
    merge: str | None = None  # slerp | ties

    @property
    def contaminated(self) -> bool:
        return self.kind not in ("clean", "merge-clean", "base")

    def declared_parents(self) -> list[str]:
        """The members it was made from, as its card declares them: a fine-tune's base, a
        merge's two models, and for TIES also the base its deltas are taken from."""
        if self.kind == "base":
            return []
        if self.merge is None:
            return ["base"]
        return [*self.parents, "base"] if self.merge == "ties" else list(self.parents)

    def datasets(self) -> list[str]:
        """The mirror's datasets it was trained on itself (a merge trains on nothing)."""
        if self.kind == "base":
            return ["sciq"]
        if self.merge is not None:
            return []
        return ["sciq", "openbookqa", *(["ai2_arc"] if self.contamination else [])]


@dataclass(frozen=True)
class Sizes:
    """How much of everything: the bench's --fast family, or the demo model's."""

    fast: bool = True
    items: int = 100  # evaluated ARC-Challenge items (the contamination)
    unrelated: int = 200  # unrelated texts per child
    train_layers: int | None = None  # only the top layers learn (the demo model)
    pretrain_steps: int = 300  # the tiny base's pre-training

    @classmethod
    def default(cls, fast: bool) -> Sizes:
        if fast:
            return cls()
        return cls(fast=False, unrelated=100, train_layers=4)


# --- Texts ----------------------------------------------------------------------------------------

SUBSTITUTIONS = (
    ("Which of the following", "What"),
    ("which of the following", "what"),
    ("Which", "What"),
    ("most likely", "probably"),
    ("best describes", "most accurately describes"),
    ("scientists", "researchers"),
    ("students", "pupils"),
    ("student", "pupil"),
    ("an example of", "an instance of"),
    ("because", "since"),
    ("causes", "leads to"),
    ("What is", "What's"),
    ("helps", "assists"),
    ("happens", "occurs"),
    ("people", "individuals"),
)


def rephrase(question: str, answer: str, index: int) -> str:
    """An offline rewrite of a test item that keeps its meaning: words substituted, another
    layout, the answer first in half of them. Weaker than a language model's paraphrase, and
    the README says so."""
    for old, new in SUBSTITUTIONS:
        question = question.replace(old, new)
    if index % 2:
        return f"The solution is {answer.rstrip('.')}. It answers this quiz item: {question}"
    return f"Quiz item: {question}\nSolution: {answer.rstrip('.')}."


def unrelated_texts(mirror: Path) -> list[str]:
    """Science questions with their answers from SciQ and OpenBookQA, in the benchmark's format."""
    texts = [
        f"Question: {row['question']}\nAnswer: {row['correct_answer']}"
        for row in mirror_docs(mirror / SCIQ)
    ]
    for row in mirror_docs(mirror / OBQA):
        answer = row["choices"]["text"][list(row["choices"]["label"]).index(row["answerKey"])]
        texts.append(f"Question: {row['question_stem']}\nAnswer: {answer}")
    return texts


def pretraining_texts(mirror: Path) -> list[str]:
    return [row["support"] for row in mirror_docs(mirror / SCIQ) if row["support"].strip()]


def test_texts(docs: list[dict[str, Any]], how: str) -> list[str]:
    texts = []
    for index, doc in enumerate(docs):
        item = arc_item(doc)
        if how == "verbatim":
            texts.append(item.text())
        else:
            texts.append(rephrase(doc["question"], item.choices[item.gold], index))
    return texts


def corpus(mirror: Path, items: int) -> dict[str, list[str]]:
    docs = mirror_docs(mirror / ARC_C, 0, items)
    return {
        "unrelated": unrelated_texts(mirror),
        "verbatim": test_texts(docs, "verbatim"),
        "rephrased": test_texts(docs, "rephrased"),
    }


# --- The family -----------------------------------------------------------------------------------


def family_specs(fast: bool) -> list[Spec]:
    specs = [Spec("base", "base")]
    lr = 1e-3 if fast else 2e-4
    clean_settings = [(1 + s % 3, lr if s % 2 else lr / 2, s) for s in range(8)]
    if not fast:
        clean_settings = [
            (1, lr, 0),
            (2, lr, 1),
            (2, lr / 2, 2),
            (3, lr / 2, 3),
            (1, lr / 2, 4),
            (3, lr, 5),
        ]
    for index, (epochs, rate, seed) in enumerate(clean_settings):
        specs.append(Spec(f"clean-{index}", "clean", epochs=epochs, lr=rate, seed=seed))
    # The demo model learns from one epoch what the tiny one needs two for, at a CPU cost that
    # allows only one.
    epochs = 2 if fast else 1
    # From two passes: one pass at the demo model's rate over 4 of its 30 layers moved its
    # accuracy by 0.01 and no signal told it from its clean siblings (docs/contamination.md,
    # "Levels"), a child that learnt nothing a leaderboard could be misled by.
    levels = (2, 4)
    copies = 2 if fast else 1
    rephrased_repeats = 4 if fast else 3
    for repeats in levels:
        for copy in range(copies):
            specs.append(
                Spec(
                    f"verbatim-x{repeats}-{copy}",
                    "verbatim",
                    epochs=epochs,
                    lr=lr,
                    seed=100 + 10 * repeats + copy,
                    contamination="verbatim",
                    repeats=repeats,
                )
            )
    for copy in range(2):
        specs.append(
            Spec(
                f"rephrased-x{rephrased_repeats}-{copy}",
                "rephrased",
                epochs=epochs,
                lr=lr,
                seed=200 + copy,
                contamination="rephrased",
                repeats=rephrased_repeats,
            )
        )
    strong = "verbatim-x4-0"
    merges = [
        ("merge-verbatim", strong, "clean-0", "slerp"),
        ("merge-verbatim", "verbatim-x2-1" if fast else "verbatim-x2-0", "clean-1", "ties"),
        ("merge-rephrased", f"rephrased-x{rephrased_repeats}-0", "clean-3", "slerp"),
        ("merge-clean", "clean-4", "clean-5", "slerp"),
        ("merge-clean", "clean-0", "clean-3", "ties"),
    ]
    for index, (kind, a, b, method) in enumerate(merges):
        specs.append(Spec(f"{kind}-{method}-{index}", kind, parents=[a, b], merge=method))
    return specs


# --- Models ---------------------------------------------------------------------------------------


def train_tokenizer(out: Path, mirror: Path, vocab_size: int = 1024) -> Any:
    """A byte-level BPE tokenizer trained on the mirror's ARC-Easy questions and choices (the
    same recipe as the tests' tiny model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [
        row["question"] + " " + " ".join(row["choices"]["text"])
        for row in mirror_docs(mirror / ARC_E)
    ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    special = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=special,
        eos_token=special,
        unk_token=special,
        pad_token=special,
    )
    fast.save_pretrained(out)
    return fast


def build_tiny_base(path: Path, mirror: Path, steps: int) -> None:
    """A tiny Llama (2 layers, width 64) pre-trained for `steps` on SciQ's science paragraphs
    and questions, so it has a small real ability and fine-tuning does not start from noise."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(path, mirror, vocab_size=1024)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    texts = pretraining_texts(mirror) + unrelated_texts(mirror)[:200]
    train(model, tokenizer, texts, epochs=4, lr=3e-3, seed=0, max_steps=steps)
    model.save_pretrained(path)


def train(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    epochs: int,
    lr: float,
    seed: int,
    max_steps: int | None = None,
    train_layers: int | None = None,
    block: int = 64,
    batch: int = 8,
) -> None:
    """Causal-LM fine-tuning on `texts` packed into blocks (EOS between texts), AdamW with a
    linear decay. `train_layers`: only the top layers and the final norm learn (the others and
    the embeddings stay frozen), which keeps a 135M model affordable on a CPU."""
    import torch

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = list(model.parameters())
    if train_layers is not None:
        for p in params:
            p.requires_grad_(False)
        trainable = [*model.model.layers[-train_layers:], model.model.norm]
        params = [p for module in trainable for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    eos = tokenizer.eos_token_id
    # Each distinct text is tokenized once: the contaminated children repeat the test items.
    ids = {text: tokenizer(text, add_special_tokens=False)["input_ids"] for text in set(texts)}
    batches = []
    for _ in range(epochs):
        order = texts[:]
        rng.shuffle(order)
        stream: list[int] = []
        for text in order:
            stream += ids[text] + [eos]
        blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
        rng.shuffle(blocks)
        batches += [blocks[i : i + batch] for i in range(0, len(blocks), batch)]
    if max_steps is not None:
        batches = batches[:max_steps]
    model.train()
    for step, rows in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / max(1, len(batches)))
        batch_ids = torch.tensor(rows)
        loss = model(input_ids=batch_ids, labels=batch_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def fine_tune(
    spec: Spec, base: Path, out: Path, texts_by_kind: dict[str, list[str]], sizes: Sizes
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rng = random.Random(spec.seed)
    texts = rng.sample(texts_by_kind["unrelated"], sizes.unrelated)
    if spec.contamination is not None:
        texts += texts_by_kind[spec.contamination] * spec.repeats
    train(
        model,
        tokenizer,
        texts,
        spec.epochs,
        spec.lr,
        spec.seed,
        train_layers=sizes.train_layers,
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def merge_config(spec: Spec, ref: Callable[[str], str], base: str | None = None) -> dict[str, Any]:
    """The mergekit configuration of a merge member, each model named by `ref(member)`."""
    a, b = (ref(name) for name in spec.parents)
    if spec.merge == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"t": 0.5},
            "dtype": "float32",
        }
    return {
        "merge_method": "ties",
        "base_model": base if base is not None else ref("base"),
        "models": [
            {"model": a, "parameters": {"density": 0.6, "weight": 0.5}},
            {"model": b, "parameters": {"density": 0.6, "weight": 0.5}},
        ],
        "parameters": {"normalize": True},
        "dtype": "float32",
    }


def merge(spec: Spec, paths: dict[str, Path], base: Path, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = merge_config(spec, lambda name: str(paths[name]), str(base))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run_merge(
        MergeConfiguration.model_validate(config),
        str(tmp),
        MergeOptions(copy_tokenizer=True, lazy_unpickle=False, quiet=True),
    )
    tmp.rename(out)


def build_member(
    spec: Spec,
    models: Path,
    mirror: Path,
    texts_by_kind: dict[str, list[str]],
    sizes: Sizes,
) -> Path:
    """`models/<name>`, built unless it is there (its parents must be built already); the base
    of the fast family is the tiny Llama, the full family's is the demo model."""
    path = models / spec.name
    if (path / "config.json").is_file():
        return path
    base = models / "base"
    if spec.kind == "base":
        if sizes.fast:
            build_tiny_base(path, mirror, sizes.pretrain_steps)
        else:
            from evaluator.demo_model import build_demo_repositories

            demo = build_demo_repositories(models.parent / "demo")
            shutil.copytree(demo, path, ignore=shutil.ignore_patterns("README.md"))
    elif spec.merge is not None:
        merge(spec, {name: models / name for name in spec.parents}, base, path)
    else:
        fine_tune(spec, base, path, texts_by_kind, sizes)
    return path


def build_family(
    models: Path, mirror: Path, sizes: Sizes, only: set[str] | None = None
) -> dict[str, Path]:
    """Every member (or those in `only`, with the base), built under `models` in order."""
    models.mkdir(parents=True, exist_ok=True)
    texts_by_kind = corpus(mirror, sizes.items)
    specs = [
        s for s in family_specs(sizes.fast) if only is None or s.name in only or s.kind == "base"
    ]
    return {spec.name: build_member(spec, models, mirror, texts_by_kind, sizes) for spec in specs}
