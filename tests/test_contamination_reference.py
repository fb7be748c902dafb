"""The reference sets: items read exactly as lm-eval reads them, perturbed copies that keep the
answer, sibling items off the evaluated range, and scores taken through the evaluation's own
model object (a tiny Llama with a real tokenizer)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from evaluator.data import default_mirror_root, prepare_task_data
from evaluator.reference import (
    TASK_ITEMS,
    evaluated_documents,
    mirror_docs,
    mmlu_perturbed,
    perturbed_items,
    score_items,
    score_task_references,
    score_texts,
    sibling_items,
    suite_references,
)
from tests.tiny_model import build_tiny_repo

MIRROR = default_mirror_root()
FOLDERS = {
    "arc_challenge": ("arc_challenge", MIRROR / "ai2_arc/ARC-Challenge/validation"),
    "hellaswag": ("hellaswag", MIRROR / "hellaswag/none/validation"),
    "winogrande": ("winogrande", MIRROR / "winogrande/winogrande_xl/validation"),
    "mmlu": ("mmlu_anatomy", MIRROR / "hails/mmlu_no_train/anatomy/test"),
}


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    from evaluator.run import _model_class

    path = build_tiny_repo(tmp_path_factory.mktemp("reference-models"))
    return _model_class().create_from_arg_obj(
        {"pretrained": str(path), "dtype": "float32"}, {"batch_size": 4, "device": "cpu"}
    )


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory: pytest.TempPathFactory):
    from lm_eval.tasks import TaskManager

    data = prepare_task_data(
        ["arc_challenge", "hellaswag", "winogrande", "mmlu"],
        "local",
        None,
        tmp_path_factory.mktemp("reference-tasks"),
    )
    manager = TaskManager(include_path=[str(p) for p in data.include_path], include_defaults=False)
    return manager.load([leaf for leaf, _ in FOLDERS.values()])["tasks"]


@pytest.mark.parametrize("task", sorted(FOLDERS))
def test_benchmark_items_are_the_requests_lm_eval_makes(task, lm_eval_tasks):
    leaf_name, folder = FOLDERS[task]
    leaf = lm_eval_tasks[leaf_name]
    docs = mirror_docs(folder, 0, 3)
    for doc, lm_doc in zip(docs, list(leaf.eval_docs)[:3], strict=True):
        item = TASK_ITEMS[task].item(doc)
        # Zero-shot, lm-eval's context is the prompt, or the list of contexts (Winogrande).
        context = leaf.doc_to_choice(lm_doc) if leaf.multiple_input else leaf.doc_to_text(lm_doc)
        requests = leaf.construct_requests(lm_doc, context, metadata=(task, 0, 1))
        assert item.requests() == [tuple(r.arguments) for r in requests]
        gold = leaf.doc_to_text(lm_doc) if leaf.multiple_input else leaf.doc_to_target(lm_doc)
        assert item.gold == (gold if isinstance(gold, int) else int(gold))


def test_perturbed_copies_keep_each_answer_and_change_the_prompt():
    docs = mirror_docs(MIRROR / "ai2_arc/ARC-Challenge/validation", 0, 5)
    shots = mirror_docs(MIRROR / "ai2_arc/ARC-Challenge/validation", 5, 2)
    for doc, copy in zip(docs, perturbed_items("arc_challenge", docs, shots), strict=True):
        original = TASK_ITEMS["arc_challenge"].item(doc)
        assert copy.choices[copy.gold] == original.choices[original.gold]
        assert copy.context != original.context
        assert doc["question"] in copy.context
        # The example in front is a solved document from outside the evaluated ones.
        assert any(shot["question"] in copy.context for shot in shots)


def test_mmlu_copies_reorder_the_options_and_the_gold_letter_follows():
    doc = {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1}
    shot = {"question": "1 + 1 = ?", "choices": ["2", "0", "1", "3"], "answer": 0}
    seen_golds = set()
    for seed in range(8):
        item = mmlu_perturbed(doc, shot, random.Random(seed))
        question = item.context.split("\n\n")[-1]
        options = dict(line.split(". ", 1) for line in question.splitlines()[1:5])
        assert options["ABCD"[item.gold]] == "4"
        seen_golds.add(item.gold)
    assert len(seen_golds) > 1


def test_siblings_come_from_the_end_of_their_split_and_only_where_one_exists():
    name, items = sibling_items("arc_challenge", MIRROR, 5)
    last = mirror_docs(MIRROR / "ai2_arc/ARC-Easy/validation")[-5:]
    assert name == "arc_easy"
    assert [item.context for item in items] == [f"Question: {d['question']}\nAnswer:" for d in last]
    assert sibling_items("mmlu", MIRROR, 5) is None
    assert sibling_items("hellaswag", MIRROR, 3)[0] == "piqa"


@pytest.mark.slow
def test_item_scores_are_lm_eval_loglikelihoods_and_its_prediction(lm):
    docs = mirror_docs(MIRROR / "ai2_arc/ARC-Easy/validation", 0, 4)
    items = [TASK_ITEMS["arc_easy"].item(doc) for doc in docs]
    scores = score_items(lm, items, "acc_norm")
    from lm_eval.api.instance import Instance

    for item, score in zip(items, scores, strict=True):
        direct = lm.loglikelihood(
            [Instance("loglikelihood", {}, args, 0) for args in item.requests()], disable_tqdm=True
        )
        assert score.loglikelihoods == pytest.approx([ll for ll, _ in direct])
        normed = [ll / n for ll, n in zip(score.loglikelihoods, item.lengths(), strict=True)]
        assert score.correct == (normed.index(max(normed)) == item.gold)


@pytest.mark.slow
def test_text_scores_match_the_models_own_loss_and_a_hand_computed_min_k(lm):
    import torch

    text = "Question: Which gas do plants take in?\nAnswer: carbon dioxide"
    (score,) = score_texts(lm.model, lm.tokenizer, [text], k=0.2)
    ids = [lm.tokenizer.eos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]
    tensor = torch.tensor([ids])
    with torch.no_grad():
        logits = lm.model(input_ids=tensor).logits[0, :-1].float()
        loss = lm.model(input_ids=tensor, labels=tensor).loss
    assert score.tokens == len(ids) - 1
    assert score.mean_logprob == pytest.approx(-float(loss), abs=1e-4)
    logp = torch.log_softmax(logits, -1)
    token = logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    mu = (logp.exp() * logp).sum(-1)
    sigma = (logp.exp() * (logp - mu[:, None]).square()).sum(-1).sqrt()
    standardised = sorted(((token - mu) / sigma).tolist())
    lowest = standardised[: max(1, math.floor(0.2 * len(standardised)))]
    assert score.min_k_pp == pytest.approx(sum(lowest) / len(lowest), abs=1e-4)
    # Padding in a batch changes nothing.
    batched = score_texts(lm.model, lm.tokenizer, [text, "A much longer text " * 5], k=0.2)
    assert batched[0].mean_logprob == pytest.approx(score.mean_logprob, abs=1e-4)


@pytest.mark.slow
def test_task_references_carry_every_list_per_item(lm):
    docs = mirror_docs(MIRROR / "ai2_arc/ARC-Challenge/validation", 0, 6)
    shots = mirror_docs(MIRROR / "ai2_arc/ARC-Challenge/validation", 6, 2)
    result = score_task_references(lm, "arc_challenge", "acc_norm", docs, shots, MIRROR, 5)
    assert result["task"] == "arc_challenge"
    assert set(result["benchmark"]) == {"n", "text_logprob", "min_k_pp"}
    assert result["benchmark"]["n"] == 5
    for part in ("perturbed", "sibling"):
        assert result[part]["n"] == 5
        assert len(result[part]["correct"]) == len(result[part]["text_logprob"]) == 5
        assert result[part]["accuracy"] == sum(result[part]["correct"]) / 5
    assert result["sibling"]["name"] == "arc_easy"
    without = score_task_references(lm, "mmlu", "acc", [], [{"question": "q"}], Path("/nowhere"), 5)
    assert without["sibling"] is None and without["perturbed"]["n"] == 0


class _Leaf:
    def __init__(self, name: str, docs: list[dict]) -> None:
        self.task_name = name
        self.eval_docs = docs


def test_evaluated_documents_follow_the_rows_and_take_subtasks_in_turn():
    a = _Leaf("mmlu_a", [{"q": f"a{i}"} for i in range(3)])
    b = _Leaf("mmlu_b", [{"q": f"b{i}"} for i in range(3)])
    rows = [
        {"lm_eval_task": "mmlu_a", "doc_id": 0, "correct": True},
        {"lm_eval_task": "mmlu_a", "doc_id": 1, "correct": False},
        {"lm_eval_task": "mmlu_b", "doc_id": 0, "correct": False},
        {"lm_eval_task": "mmlu_b", "doc_id": 1, "correct": True},
        {"lm_eval_task": "mmlu_b", "doc_id": 2, "correct": True},
    ]
    docs, correct = evaluated_documents([a, b], rows, 4)
    assert [d["q"] for d in docs] == ["a0", "b0", "a1", "b1"]
    assert correct == [True, False, False, True]
    docs, _ = evaluated_documents([a, b], rows, 10)
    assert [d["q"] for d in docs] == ["a0", "b0", "a1", "b1", "b2"]


@pytest.mark.slow
def test_suite_references_carry_the_evaluations_verdicts_and_skip_tasks_without_items(lm):
    docs = mirror_docs(MIRROR / "ai2_arc/ARC-Challenge/validation", 0, 4)
    out = suite_references(
        lm,
        [("arc_challenge", "arc_challenge", "acc_norm"), ("winogrande", "winogrande", "acc")],
        {"arc_challenge": docs, "winogrande": []},
        {"arc_challenge": [True, False, False, True]},
        MIRROR,
        max_items=3,
    )
    (entry,) = out
    assert entry["task"] == "arc_challenge" and entry["metric"] == "acc_norm"
    assert entry["benchmark"]["correct"] == [1, 0, 0]
    assert entry["benchmark"]["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert len(entry["benchmark"]["text_logprob"]) == entry["perturbed"]["n"] == 3
    assert entry["sibling"]["name"] == "arc_easy" and entry["sibling"]["n"] == 3


@pytest.mark.slow
def test_an_evaluation_carries_its_reference_sets_in_the_result(tmp_path, monkeypatch):
    import gzip
    import json

    from evaluator.messages import EvaluationJob, Result, parse
    from evaluator.run import run_job

    monkeypatch.setenv("TRELLIS_REFERENCE_ITEMS", "2")
    build_tiny_repo(tmp_path / "models")
    job = EvaluationJob.model_validate(
        {
            "run_id": 3,
            "attempt": 1,
            "repo_id": "trellis-tests/tiny-llama",
            "revision": "0123456789abcdef0123456789abcdef01234567",
            "precision": "float32",
            "suite_name": "quick",
            "suite_version": "1",
            "model_source": "local",
            "model_path": str(tmp_path / "models"),
            "artifact_store": str(tmp_path / "artifacts"),
            "limit": 2,
        }
    )
    payload = run_job(job)
    references = payload["references"]
    assert [r["task"] for r in references] == [
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "mmlu",
        "winogrande",
    ]
    with gzip.open(tmp_path / "artifacts" / payload["artifact"]["path"], "rt") as handle:
        rows = [json.loads(line) for line in handle]
    arc = references[1]
    verdicts = [int(r["correct"]) for r in rows if r["task"] == "arc_challenge"]
    assert arc["benchmark"]["correct"] == verdicts
    assert arc["sibling"]["name"] == "arc_easy" and arc["sibling"]["n"] == 2
    # MMLU's two items come from two subjects, not two questions of the first one.
    assert references[3]["benchmark"]["n"] == 2
    assert references[4]["sibling"] is None
    # The result message, as the web side reads it, accepts them.
    message = parse(Result, {"run_id": 3, "attempt": 1, "payload": payload})
    assert message.payload.references[1].perturbed.n == 2
