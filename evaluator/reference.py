"""Reference sets for the contamination signals, scored with the evaluation's own model object.

For each suite task the worker scores, beside the benchmark items it evaluated:

- **perturbed** copies of the same items that keep their meaning: the prompt rewritten by a
  template (`Q:`/`A:` instead of `Question:`/`Answer:` and the like), one solved example from
  outside the evaluated items put in front (the few-shot example replaced), and for MMLU the
  answer options reordered (the gold letter follows its option). Paired item by item with the
  benchmark items;
- a **sibling** benchmark of the same skill where the offline data has one (ARC-Easy for
  ARC-Challenge and back, PIQA for HellaSwag), taken from the end of its split so a suite that
  evaluates the first documents never overlaps it.

Each item is scored as lm-eval scores a multiple-choice document (one loglikelihood request per
choice through `lm.loglikelihood`, accuracy by plain or length-normalised likelihood), and each
item's text (prompt + gold answer) gets its mean token log-probability and its Min-K%++ score
from one forward pass of `lm.model`. `evaluator.contamination` turns these numbers into signals.

Importing this module imports neither torch nor lm-eval.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator.contamination import min_k_plus_plus

# Per task, at most this many evaluated items get a perturbed copy and as many sibling items are
# scored: enough for a test at the 0.01 level, a bounded extra cost per evaluation.
DEFAULT_MAX_ITEMS = 100
MIN_K_SHARE = 0.2
TEXT_BATCH = 8
MAX_TEXT_TOKENS = 512
# Decimals kept in the payload: log-probabilities and scores differ far beyond these.
DECIMALS = 4

Doc = dict[str, Any]


@dataclass(frozen=True)
class Item:
    """One multiple-choice question as lm-eval scores it: a request per choice, either
    (context, delimiter + choice) or, for tasks whose choices are contexts (Winogrande),
    (choice, delimiter + continuation)."""

    context: str
    choices: tuple[str, ...]
    gold: int
    continuation: str = ""  # set only when the choices are contexts
    delimiter: str = " "

    @property
    def multiple_input(self) -> bool:
        return bool(self.continuation)

    def requests(self) -> list[tuple[str, str]]:
        if self.multiple_input:
            return [(choice, self.delimiter + self.continuation) for choice in self.choices]
        return [(self.context, self.delimiter + choice) for choice in self.choices]

    def text(self) -> str:
        """Prompt and gold answer, the string a model trained on the item has seen."""
        if self.multiple_input:
            return self.choices[self.gold] + self.delimiter + self.continuation
        return self.context + self.delimiter + self.choices[self.gold]

    def lengths(self) -> list[float]:
        """What acc_norm divides by: each choice's length in characters, as lm-eval does."""
        return [float(len(self.continuation if self.multiple_input else c)) for c in self.choices]


# --- The tasks' items -------------------------------------------------------------------------

# Surface rewrites of a prompt: the same question under another template.
ARC_TEMPLATES = (
    "Q: {q}\nA:",
    "{q}\nThe answer is",
    "Science question: {q}\nCorrect answer:",
)
HELLASWAG_TEMPLATES = ("{ctx}", "In a video about {activity}: {ctx}", "{activity}. {ctx}")
MMLU_TEMPLATES = (
    "Question: {q}\n{options}\nAnswer:",
    "{q}\n{options}\nThe correct option is",
    "Q: {q}\n{options}\nA:",
)
WINOGRANDE_TEMPLATES = ("{s}", "Fill in the blank: {s}", "In this sentence, {s}")


def _hellaswag_clean(text: str) -> str:
    # lm-eval's HellaSwag preprocessing: WikiHow bracket artefacts out.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def arc_item(doc: Doc) -> Item:
    return Item(
        f"Question: {doc['question']}\nAnswer:",
        tuple(doc["choices"]["text"]),
        list(doc["choices"]["label"]).index(doc["answerKey"]),
    )


def arc_perturbed(doc: Doc, shot: Doc, rng: random.Random) -> Item:
    template = rng.choice(ARC_TEMPLATES)
    solved = arc_item(shot)
    example = template.format(q=shot["question"]) + " " + solved.choices[solved.gold]
    item = arc_item(doc)
    context = example + "\n\n" + template.format(q=doc["question"])
    return Item(context, item.choices, item.gold)


def hellaswag_item(doc: Doc) -> Item:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return Item(
        _hellaswag_clean(doc["activity_label"] + ": " + ctx),
        tuple(_hellaswag_clean(e) for e in doc["endings"]),
        int(doc["label"]),
    )


def hellaswag_perturbed(doc: Doc, shot: Doc, rng: random.Random) -> Item:
    template = rng.choice(HELLASWAG_TEMPLATES)

    def prompt(d: Doc) -> str:
        ctx = _hellaswag_clean(d["ctx_a"] + " " + d["ctx_b"].capitalize()).strip()
        return template.format(ctx=ctx, activity=d["activity_label"].lower())

    solved = hellaswag_item(shot)
    context = prompt(shot) + " " + solved.choices[solved.gold] + "\n\n" + prompt(doc)
    item = hellaswag_item(doc)
    return Item(context, item.choices, item.gold)


def _mmlu_options(choices: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", choices, strict=False))


def mmlu_item(doc: Doc) -> Item:
    context = f"{doc['question'].strip()}\n{_mmlu_options(doc['choices'])}\nAnswer:"
    return Item(context, ("A", "B", "C", "D"), int(doc["answer"]))


def mmlu_perturbed(doc: Doc, shot: Doc, rng: random.Random) -> Item:
    template = rng.choice(MMLU_TEMPLATES)

    def reordered(d: Doc) -> tuple[list[str], int]:
        order = list(range(len(d["choices"])))
        rng.shuffle(order)
        return [d["choices"][i] for i in order], order.index(int(d["answer"]))

    shot_choices, shot_gold = reordered(shot)
    example = template.format(q=shot["question"].strip(), options=_mmlu_options(shot_choices))
    choices, gold = reordered(doc)
    question = template.format(q=doc["question"].strip(), options=_mmlu_options(choices))
    return Item(example + " " + "ABCD"[shot_gold] + "\n\n" + question, ("A", "B", "C", "D"), gold)


def winogrande_item(doc: Doc) -> Item:
    blank = doc["sentence"].index("_")
    return Item(
        "",
        tuple(doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])),
        {"1": 0, "2": 1}[str(doc["answer"])],
        continuation=doc["sentence"][blank + 1 :].strip(),
    )


def winogrande_perturbed(doc: Doc, shot: Doc, rng: random.Random) -> Item:
    template = rng.choice(WINOGRANDE_TEMPLATES)
    shot_item = winogrande_item(shot)
    example = template.format(s=shot_item.text())
    item = winogrande_item(doc)
    prefix = example + "\n\n" + template.format(s="")
    return Item("", tuple(prefix + choice for choice in item.choices), item.gold, item.continuation)


def piqa_item(doc: Doc) -> Item:
    return Item(f"Question: {doc['goal']}\nAnswer:", (doc["sol1"], doc["sol2"]), int(doc["label"]))


@dataclass(frozen=True)
class TaskItems:
    """How to read one lm-eval task's documents as items, and its reference sets."""

    item: Callable[[Doc], Item]
    perturbed: Callable[[Doc, Doc, random.Random], Item]
    sibling: str | None  # a key of SIBLINGS


@dataclass(frozen=True)
class Sibling:
    name: str
    mirror: str  # folder of its split under the mirror root
    item: Callable[[Doc], Item]


SIBLINGS: dict[str, Sibling] = {
    "arc_easy": Sibling("arc_easy", "ai2_arc/ARC-Easy/validation", arc_item),
    "arc_challenge": Sibling("arc_challenge", "ai2_arc/ARC-Challenge/validation", arc_item),
    "piqa": Sibling("piqa", "piqa/plain_text/validation", piqa_item),
}

TASK_ITEMS: dict[str, TaskItems] = {
    "arc_easy": TaskItems(arc_item, arc_perturbed, "arc_challenge"),
    "arc_challenge": TaskItems(arc_item, arc_perturbed, "arc_easy"),
    "hellaswag": TaskItems(hellaswag_item, hellaswag_perturbed, "piqa"),
    "mmlu": TaskItems(mmlu_item, mmlu_perturbed, None),
    "winogrande": TaskItems(winogrande_item, winogrande_perturbed, None),
}


def mirror_docs(folder: Path, start: int | None = None, count: int | None = None) -> list[Doc]:
    """Rows of one split of the local mirror (a `datasets` save-to-disk folder); `start` < 0
    counts from the end."""
    import datasets

    rows = datasets.load_from_disk(str(folder))
    n = len(rows)
    first = 0 if start is None else (start if start >= 0 else max(0, n + start))
    last = n if count is None else min(n, first + count)
    return [dict(rows[i]) for i in range(first, last)]


def perturbed_items(
    task: str, docs: Sequence[Doc], shots: Sequence[Doc], seed: int = 0
) -> list[Item]:
    """A perturbed copy of each doc, its example taken in turn from `shots` (documents that are
    not evaluated); deterministic for a seed."""
    if not shots:
        raise ValueError("perturbed copies need at least one document outside the evaluated ones")
    spec = TASK_ITEMS[task]
    rng = random.Random(seed)
    return [spec.perturbed(doc, shots[i % len(shots)], rng) for i, doc in enumerate(docs)]


def sibling_items(task: str, mirror_root: Path, count: int) -> tuple[str, list[Item]] | None:
    """The sibling benchmark's last `count` items, or None when the task has none offline."""
    name = TASK_ITEMS[task].sibling
    if name is None:
        return None
    sibling = SIBLINGS[name]
    folder = mirror_root / sibling.mirror
    if not folder.is_dir():
        return None
    return name, [sibling.item(doc) for doc in mirror_docs(folder, -count, count)]


# --- Scoring with the evaluation's model --------------------------------------------------------


@dataclass(frozen=True)
class ItemScore:
    loglikelihoods: tuple[float, ...]
    correct: bool  # under the task's metric


def score_items(lm: Any, items: Sequence[Item], metric: str = "acc") -> list[ItemScore]:
    """Score `items` through `lm.loglikelihood` (lm-eval's request path, batched and cached as
    the evaluation's are); `metric` acc or acc_norm picks the prediction as lm-eval does."""
    from lm_eval.api.instance import Instance

    requests = []
    for index, item in enumerate(items):
        for choice, (context, continuation) in enumerate(item.requests()):
            requests.append(
                Instance(
                    request_type="loglikelihood",
                    doc={},
                    arguments=(context, continuation),
                    idx=choice,
                    metadata=("trellis-reference", index, 1),
                )
            )
    responses = lm.loglikelihood(requests, disable_tqdm=True) if requests else []
    scores: list[ItemScore] = []
    position = 0
    for item in items:
        lls = tuple(float(r[0]) for r in responses[position : position + len(item.choices)])
        position += len(item.choices)
        if metric == "acc_norm":
            ranked = [ll / length for ll, length in zip(lls, item.lengths(), strict=True)]
        else:
            ranked = list(lls)
        scores.append(ItemScore(lls, max(range(len(ranked)), key=ranked.__getitem__) == item.gold))
    return scores


@dataclass(frozen=True)
class TextScore:
    mean_logprob: float  # mean log-probability of the text's tokens
    tokens: int
    min_k_pp: float  # Min-K%++ at MIN_K_SHARE


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = TEXT_BATCH,
    k: float = MIN_K_SHARE,
) -> list[TextScore]:
    """Per text, from one forward pass: the mean token log-probability and Min-K%++ (which
    needs, at each position, the mean and variance of log p over the whole vocabulary).

    The first token is scored after the tokenizer's BOS (or EOS) token, so every token of the
    text counts."""
    import torch

    device = next(model.parameters()).device
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    encoded = [
        [start, *tokenizer(text, add_special_tokens=False)["input_ids"][: MAX_TEXT_TOKENS - 1]]
        for text in texts
    ]
    out: list[TextScore] = []
    for first in range(0, len(encoded), batch_size):
        batch = encoded[first : first + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            probs = logp.exp()
            mu = (probs * logp).sum(-1)
            # Centred before squaring: E[x^2] - E[x]^2 cancels to noise when p is near uniform.
            var = (probs * (logp - mu.unsqueeze(-1)).square()).sum(-1)
            target = ids[:, 1:].to(device)
            token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for row, seq in enumerate(batch):
            n = len(seq) - 1
            lp = token_logp[row, :n].cpu().numpy()
            out.append(
                TextScore(
                    mean_logprob=float(lp.mean()),
                    tokens=n,
                    min_k_pp=min_k_plus_plus(
                        lp, mu[row, :n].cpu().numpy(), var[row, :n].cpu().numpy(), k
                    ),
                )
            )
    return out


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(float(v), DECIMALS) for v in values]


def score_set(lm: Any, items: Sequence[Item], metric: str) -> dict[str, Any]:
    """Per-item correctness and text scores of one set of items, as the payload carries them."""
    scores = score_items(lm, items, metric)
    texts = score_texts(lm.model, lm.tokenizer, [item.text() for item in items])
    return {
        "n": len(items),
        "accuracy": round(sum(s.correct for s in scores) / len(scores), DECIMALS)
        if scores
        else None,
        "correct": [int(s.correct) for s in scores],
        "text_logprob": _rounded(t.mean_logprob for t in texts),
        "min_k_pp": _rounded(t.min_k_pp for t in texts),
    }


def score_task_references(
    lm: Any,
    task: str,
    metric: str,
    docs: Sequence[Doc],
    shots: Sequence[Doc],
    mirror_root: Path | None,
    max_items: int = DEFAULT_MAX_ITEMS,
    benchmark: bool = False,
) -> dict[str, Any]:
    """The reference numbers of one task: text scores of its first `max_items` evaluated
    documents (`docs`, in evaluation order), their perturbed copies (examples from `shots`) and
    the sibling benchmark. With `benchmark`, the evaluated items are also scored for accuracy
    here (the bench's way; the worker takes their correctness from the evaluation itself)."""
    docs = list(docs)[:max_items]
    items = [TASK_ITEMS[task].item(doc) for doc in docs]
    if benchmark:
        bench = score_set(lm, items, metric)
    else:
        texts = score_texts(lm.model, lm.tokenizer, [item.text() for item in items])
        bench = {
            "n": len(items),
            "text_logprob": _rounded(t.mean_logprob for t in texts),
            "min_k_pp": _rounded(t.min_k_pp for t in texts),
        }
    result: dict[str, Any] = {
        "task": task,
        "metric": metric,
        "benchmark": bench,
        "perturbed": score_set(lm, perturbed_items(task, docs, shots), metric),
        "sibling": None,
    }
    found = sibling_items(task, mirror_root, max_items) if mirror_root is not None else None
    if found is not None:
        name, sibling = found
        result["sibling"] = {"name": name, **score_set(lm, sibling, metric)}
    return result


def suite_references(
    lm: Any,
    tasks: Sequence[tuple[str, str, str]],
    docs: dict[str, list[Doc]],
    correct: dict[str, list[bool]],
    mirror_root: Path | None,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[dict[str, Any]]:
    """The reference numbers of a whole evaluation, one entry per suite task with a reference
    set: `tasks` are (key, lm-eval task, metric) in suite order, `docs[key]` the evaluated
    documents in evaluation order (as lm-eval read them), `correct[key]` the evaluation's own
    per-item verdicts in the same order. Each document's perturbed copy takes the next evaluated
    document as its solved example (documents are never their own example)."""
    out = []
    for key, lm_eval_task, metric in tasks:
        evaluated = docs.get(key) or []
        if lm_eval_task not in TASK_ITEMS or len(evaluated) < 2:
            continue
        first = evaluated[:max_items]
        shots = [evaluated[(i + 1) % len(evaluated)] for i in range(len(first))]
        spec = TASK_ITEMS[lm_eval_task]
        rng = random.Random(0)
        copies = [spec.perturbed(doc, shot, rng) for doc, shot in zip(first, shots, strict=True)]
        items = [spec.item(doc) for doc in first]
        texts = score_texts(lm.model, lm.tokenizer, [item.text() for item in items])
        verdicts = [int(bool(v)) for v in correct.get(key, [])[: len(first)]]
        entry: dict[str, Any] = {
            "task": key,
            "lm_eval_task": lm_eval_task,
            "metric": metric,
            "benchmark": {
                "n": len(first),
                "accuracy": round(sum(verdicts) / len(verdicts), DECIMALS) if verdicts else None,
                "correct": verdicts,
                "text_logprob": _rounded(t.mean_logprob for t in texts),
                "min_k_pp": _rounded(t.min_k_pp for t in texts),
            },
            "perturbed": score_set(lm, copies, metric),
            "sibling": None,
        }
        found = sibling_items(lm_eval_task, mirror_root, max_items) if mirror_root else None
        if found is not None:
            name, sibling = found
            entry["sibling"] = {"name": name, **score_set(lm, sibling, metric)}
        out.append(entry)
    return out


def evaluated_documents(
    leaves: Sequence[Any], rows: Sequence[Mapping[str, Any]], max_items: int
) -> tuple[list[Doc], list[bool]]:
    """Up to `max_items` documents a task evaluated, as lm-eval read them, with the evaluation's
    verdict on each (from the details rows: `lm_eval_task`, `doc_id`, `correct`). A group's
    subtasks are taken in turn (one document of each, then the next), so every subject counts."""
    verdict = {(str(r["lm_eval_task"]), int(r["doc_id"])): bool(r["correct"]) for r in rows}
    queues = [
        [(leaf, i) for i in range(len(leaf.eval_docs)) if (leaf.task_name, i) in verdict]
        for leaf in leaves
    ]
    docs: list[Doc] = []
    correct: list[bool] = []
    depth = 0
    while len(docs) < max_items and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(docs) < max_items:
                leaf, index = queue[depth]
                docs.append(dict(leaf.eval_docs[index]))
                correct.append(verdict[(leaf.task_name, index)])
        depth += 1
    return docs, correct


def run_references(
    lm: Any,
    tasks: Sequence[tuple[str, str, str]],
    leaves: Mapping[str, Sequence[Any]],
    rows: Sequence[Mapping[str, Any]],
    data_root: str | None,
) -> list[dict[str, Any]]:
    """The `references` of a result payload: for each suite task (key, lm-eval task, metric),
    its evaluated documents (from lm-eval's loaded `leaves`) with the evaluation's verdicts
    (the details `rows`), scored by `suite_references`. `TRELLIS_REFERENCE_ITEMS` (worker
    side, default 100) caps the items per task; 0 turns the reference sets off."""
    from evaluator.config import env_int

    max_items = env_int("TRELLIS_REFERENCE_ITEMS", DEFAULT_MAX_ITEMS, minimum=0)
    if max_items == 0:
        return []
    mirror: Path | None = Path(data_root) if data_root else None
    if mirror is None:
        from evaluator.data import DataMissing, default_mirror_root

        try:
            mirror = default_mirror_root()
        except DataMissing:
            mirror = None
    docs: dict[str, list[Doc]] = {}
    correct: dict[str, list[bool]] = {}
    for key, _, _ in tasks:
        task_rows = [row for row in rows if row["task"] == key]
        docs[key], correct[key] = evaluated_documents(leaves.get(key, []), task_rows, max_items)
    return suite_references(lm, tasks, docs, correct, mirror, max_items)
