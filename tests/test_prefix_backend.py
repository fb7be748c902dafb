"""Trellis's prefix-sharing loglikelihood backend (`trellis-prefix`) against stock lm-eval HFLM
on a tiny random-weight Llama: the same loglikelihoods (to 1e-4 in float32) and the same
is_greedy for single-token, multi-token, Winogrande-style and truncated requests; each shared
token forwarded once; the worker's choice of backend and what the payload says about it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.tiny_model import build_tiny_repo

REPO_ID = "trellis-tests/tiny-llama"
MAX_LENGTH = 40  # short, so the long requests below are left-truncated

SHOTS = "Q: Is the sky blue?\nA: yes\n\nQ: Is fire cold?\nA: no\n\n"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("prefix-models"), REPO_ID)


@pytest.fixture(scope="module")
def models(tiny_repo: Path) -> tuple[Any, Any]:
    from lm_eval.models.huggingface import HFLM

    from evaluator.prefix_lm import PrefixHFLM

    args = {
        "pretrained": str(tiny_repo),
        "dtype": "float32",
        "device": "cpu",
        "batch_size": 3,  # smaller than most groups of siblings, so batches split
        "max_length": MAX_LENGTH,
    }
    return HFLM(**args), PrefixHFLM(**args)


def instance(context: str, continuation: str) -> Any:
    from lm_eval.api.instance import Instance

    return Instance("loglikelihood", {}, (context, continuation), 0)


def assert_same(stock: list[tuple[float, bool]], mine: list[tuple[float, bool]]) -> None:
    assert len(mine) == len(stock)
    for (stock_ll, stock_greedy), (ll, greedy) in zip(stock, mine, strict=True):
        assert ll == pytest.approx(stock_ll, abs=1e-4)
        assert greedy is stock_greedy


def unique_tokens(sequences: list[list[int]]) -> int:
    """Distinct non-empty prefixes: the tokens a prefix tree holds, counted without one."""
    return len({tuple(seq[: i + 1]) for seq in sequences for i in range(len(seq))})


@pytest.mark.slow
def test_the_backend_is_registered_with_lm_evals_model_registry():
    from lm_eval.api.registry import get_model

    from evaluator.prefix_lm import PrefixHFLM

    assert get_model("trellis-prefix") is PrefixHFLM


@pytest.mark.slow
def test_text_requests_score_as_stock_hflm_and_each_shared_token_is_forwarded_once(models):
    stock, mine = models
    requests = [
        # Multi-token choices after one shared context (ARC, HellaSwag).
        *(instance("Question: which is a mammal?\nAnswer:", c) for c in (" dog", " a red fish")),
        # Single-token choices after shared few-shot prefix (MMLU): one forward per question.
        *(instance(SHOTS + "Q: Is grass green?\nA:", c) for c in (" yes", " no")),
        *(instance(SHOTS + "Q: Is snow hot?\nA:", c) for c in (" yes", " no", " maybe")),
        # Winogrande: the choice is in the context, the scored ending is shared.
        *(instance(f"The cup fell because {who}", " was not careful.") for who in ("Ann", "Bob")),
        # Trailing whitespace of the context moves to the continuation.
        instance("The answer is ", "yes"),
        # An empty context is scored after the prefix token.
        instance("", "hello there"),
        # Longer than the model: left-truncated to the last MAX_LENGTH tokens read.
        instance(" ".join(["word"] * 60), " and the end"),
        instance(" ".join(["word"] * 61), " and the end"),
    ]
    assert_same(stock.loglikelihood(requests), mine.loglikelihood(requests))

    # The tokens forwarded are the unique-token bound exactly (every request's input, as HFLM
    # builds it, in one prefix tree); stock forwards every request's input whole.
    captured: list[Any] = []
    score = mine._loglikelihood_tokens
    mine._loglikelihood_tokens = lambda reqs, **kw: captured.extend(reqs) or score(reqs, **kw)
    mine.forward_stats.tokens = 0
    try:
        mine.loglikelihood(requests)
    finally:
        del mine._loglikelihood_tokens
    sequences = [(c + x)[-(MAX_LENGTH + 1) :][:-1] for _, c, x in captured]
    assert max(len(s) for s in sequences) == MAX_LENGTH
    assert mine.forward_stats.tokens == unique_tokens(sequences)
    assert mine.forward_stats.tokens < sum(len(s) for s in sequences) * 0.7


@pytest.mark.slow
def test_token_requests_keep_stocks_is_greedy_truncation_and_order(models):
    """Through `_loglikelihood_tokens` directly: continuations that are the model's own greedy
    tokens (is_greedy true), the same with the last token changed (false), single-token
    continuations sharing an input, and a continuation as long as the model."""
    import torch

    stock, mine = models
    context = stock.tok_encode("Q: Is water wet?\nA:")
    greedy = []
    with torch.no_grad():
        for _ in range(4):
            logits = stock.model(torch.tensor([context + greedy])).logits
            greedy.append(int(logits[0, -1].argmax()))
    other = (greedy[-1] + 1) % stock.vocab_size
    requests = [
        (("a", "b"), context, greedy),
        (("a", "c"), context, [*greedy[:-1], other]),
        (("a", "d"), context, greedy[:1]),
        (("a", "e"), context, [other]),
        (("a", "f"), context[-5:], greedy[:2]),
        (("a", "g"), context, list(range(5, 5 + MAX_LENGTH))),
        (("a", "h"), context[:3], greedy),
    ]
    expected = stock._loglikelihood_tokens(requests)
    assert [g for _, g in expected[:4]] == [True, False, True, False]
    assert_same(expected, mine._loglikelihood_tokens(requests))


@pytest.mark.slow
def test_every_request_is_reported_to_lm_evals_cache_hook_once(models):
    _, mine = models
    seen: list[tuple[str, str]] = []

    class Hook:
        def add_partial(self, attr: str, req: Any, res: Any) -> None:
            assert attr == "loglikelihood"
            seen.append(req)

    requests = [instance(SHOTS + "Q: Is it?\nA:", c) for c in (" yes", " no", " yes or no")]
    hook, mine.cache_hook = mine.cache_hook, Hook()
    try:
        mine.loglikelihood(requests)
    finally:
        mine.cache_hook = hook
    assert sorted(seen) == sorted(r.args for r in requests)


def test_the_worker_scores_with_the_prefix_backend_by_default_and_stock_one_setting_away(
    tiny_repo, tmp_path, monkeypatch
):
    from evaluator.messages import EvaluationJob
    from evaluator.run import EvaluationFailure, _model_class, eval_backend

    fields: dict[str, Any] = {
        "run_id": 1,
        "attempt": 1,
        "repo_id": REPO_ID,
        "revision": "local",
        "precision": "float32",
        "suite_name": "quick",
        "suite_version": "1",
        "model_source": "local",
        "model_path": str(tiny_repo),
        "artifact_store": str(tmp_path),
    }
    job = EvaluationJob.model_validate(fields)
    monkeypatch.delenv("TRELLIS_EVAL_BACKEND", raising=False)
    assert eval_backend(job) == "trellis-prefix"
    monkeypatch.setenv("TRELLIS_EVAL_BACKEND", "hf")
    assert eval_backend(job) == "hf"
    assert eval_backend(EvaluationJob.model_validate(fields | {"backend": "trellis-prefix"})) == (
        "trellis-prefix"
    )
    monkeypatch.setenv("TRELLIS_EVAL_BACKEND", "vllm")
    with pytest.raises(EvaluationFailure) as failure:
        eval_backend(job)
    assert failure.value.reason == "error"
    assert failure.value.message == (
        "TRELLIS_EVAL_BACKEND='vllm' on this worker is not one of trellis-prefix, hf: set it "
        "to one of those (or unset it)."
    )
    from lm_eval.models.huggingface import HFLM

    from evaluator.prefix_lm import PrefixHFLM

    assert _model_class("trellis-prefix").__mro__[1] is PrefixHFLM
    assert _model_class("hf").__mro__[1] is HFLM
