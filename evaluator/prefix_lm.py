"""Trellis's loglikelihood backend for lm-eval, registered as `trellis-prefix`: lm-eval's
Hugging Face class (HFLM) with the same loading, tokenization, truncation and scoring rules, but
every token the requests share is forwarded once.

The token sequences the model reads (each request's context and continuation without its last
token, left-truncated to the model's length exactly as HFLM does) form a radix tree: few-shot
prefixes shared across questions, each question's context shared by its choices, and the shared
beginning of Winogrande-style requests whose contexts differ. Each node's tokens are forwarded
once, against the key/value cache of its ancestors; the children of a node are forwarded
together, longest first, in right-padded batches against that cache expanded per batch row.
Right padding after a common past needs neither an attention mask nor position ids: a causal
model never lets a real token see the padding after it, which is also why HFLM's own right-padded
batches are sound. Logits are computed only where a request scores a token (`logits_to_keep`),
then log-softmaxed, gathered and summed in HFLM's dtypes, so results match stock HFLM up to the
rounding of differently shaped matrix products (at most a few 1e-5 per request in float32).

Models whose cache is not a plain growing key/value cache (sliding windows, recurrent state) and
encoder-decoder models are scored by stock HFLM unchanged.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

logger = logging.getLogger(__name__)

BACKEND_NAME = "trellis-prefix"
# Rows per batch on CPU when the caller asked for "auto": on two CPU cores "auto" picked 64 and
# ran 2.5x slower in 17 GB, while 8 beat 1 by 1.2-1.6x.
CPU_ROWS = 8
# Share of free GPU memory a batch may plan to use (the estimate below is rough).
GPU_MEMORY_SHARE = 0.6
# Largest share of padding in a batch: a short run is not padded to a long one's width.
MAX_PADDING = 0.2

Request = tuple[tuple[str, str] | None, list[int], list[int]]
Past = list[tuple[torch.Tensor, torch.Tensor]]


class _Node:
    """A run of tokens read after its parent's; `probes` are the scored positions inside it:
    (position in the run, the continuation token it predicts, request index, slot in that
    request's continuation)."""

    __slots__ = ("children", "probes", "tokens")

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens
        self.children: dict[int, _Node] = {}
        self.probes: list[tuple[int, int, int, int]] = []


def _common_length(segment: list[int], sequence: list[int], start: int) -> int:
    length = min(len(segment), len(sequence) - start)
    if segment[:length] == sequence[start : start + length]:
        return length
    k = 0
    while segment[k] == sequence[start + k]:
        k += 1
    return k


def _insert(root: _Node, sequence: list[int]) -> None:
    node, i = root, 0
    while i < len(sequence):
        child = node.children.get(sequence[i])
        if child is None:
            node.children[sequence[i]] = _Node(sequence[i:])
            return
        k = _common_length(child.tokens, sequence, i)
        if k < len(child.tokens):
            head = _Node(child.tokens[:k])
            child.tokens = child.tokens[k:]
            head.children[child.tokens[0]] = child
            node.children[sequence[i]] = head
            child = head
        node, i = child, i + k


def _attach(root: _Node, sequence: list[int], first: int, targets: list[int], index: int) -> None:
    """Put the probes of one request on the nodes covering its scored positions
    [first, len(sequence)); every sequence ends on a node boundary once all are inserted."""
    node, start = root, 0
    while start < len(sequence):
        node = node.children[sequence[start]]
        end = start + len(node.tokens)
        for position in range(max(first, start), end):
            node.probes.append(
                (position - start, targets[position - first], index, position - first)
            )
        start = end


@dataclass
class ForwardStats:
    """What the backend forwarded: calls, token positions computed (padding included) and real
    tokens (each shared token counted once)."""

    forwards: int = 0
    positions: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"forwards": self.forwards, "positions": self.positions, "tokens": self.tokens}


@dataclass
class _Scores:
    """Per request: the gathered log-probabilities (HFLM's dtype), whether every scored token
    was the argmax, and how many positions are still to score."""

    values: list[torch.Tensor]
    greedy: list[bool]
    remaining: list[int]
    requests: list[Request]
    results: list[tuple[float, bool] | None] = field(default_factory=list)


@register_model(BACKEND_NAME)
class PrefixHFLM(HFLM):
    """HFLM whose `_loglikelihood_tokens` forwards each shared token prefix once."""

    forward_stats: ForwardStats

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forward_stats = ForwardStats()
        self._cache_arg: str | None = None
        self._keeps_logits = False
        self._shares_kv = self._check_sharing()

    def _check_sharing(self) -> bool:
        if self.backend != "causal":
            return False
        try:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            layers = DynamicCache(config=self.model.config).layers
        except Exception:  # a config transformers cannot build a cache for
            return False
        if any(type(layer) is not DynamicLayer for layer in layers):
            return False
        parameters = inspect.signature(self.model.forward).parameters
        # transformers renamed `past_key_values` to `cache` (5.x keeps the old name a while).
        self._cache_arg = next((n for n in ("cache", "past_key_values") if n in parameters), None)
        self._keeps_logits = "logits_to_keep" in parameters
        return self._cache_arg is not None

    # --- lm-eval's entry point ------------------------------------------------------------------

    def _loglikelihood_tokens(  # type: ignore[override]
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if not self._shares_kv:
            return super()._loglikelihood_tokens(
                requests, disable_tqdm=disable_tqdm, override_bs=override_bs
            )
        root = _Node([])
        sequences = []
        for _, context, continuation in requests:
            # HFLM's rules: non-empty parts, a continuation no longer than the model, and the
            # whole left-truncated to max_length + 1 tokens before its last token is dropped.
            assert len(context) > 0
            assert len(continuation) > 0
            assert len(continuation) <= self.max_length
            whole = context + continuation
            if len(whole) > self.max_length + 1:
                logger.warning(
                    "Combined length of context (%d) and continuation (%d) exceeds model's "
                    "maximum length (%d). Truncating %d tokens from the left.",
                    len(context),
                    len(continuation),
                    self.max_length,
                    len(whole) - self.max_length + 1,
                )
            sequence = whole[-(self.max_length + 1) :][:-1]
            sequences.append(sequence)
            _insert(root, sequence)
        for index, (sequence, (_, _, continuation)) in enumerate(
            zip(sequences, requests, strict=True)
        ):
            _attach(root, sequence, len(sequence) - len(continuation), continuation, index)

        dtype = self.softmax_dtype or self._logits_dtype()
        scores = _Scores(
            values=[torch.empty(len(cont), dtype=dtype) for _, _, cont in requests],
            greedy=[True] * len(requests),
            remaining=[len(cont) for _, _, cont in requests],
            requests=requests,
            results=[None] * len(requests),
        )
        self._pbar = tqdm(
            total=len(requests),
            disable=(disable_tqdm or (self.rank != 0)),
            desc="Running loglikelihood requests",
        )
        try:
            self._score_children(root, None, 0, scores)
        finally:
            self._pbar.close()
        missing = [i for i, result in enumerate(scores.results) if result is None]
        if missing:
            raise RuntimeError(f"{len(missing)} loglikelihood requests were never scored")
        return [result for result in scores.results if result is not None]

    def _logits_dtype(self) -> torch.dtype:
        if self.mixed_precision_dtype is not None:
            return self.mixed_precision_dtype
        return next(self.model.parameters()).dtype

    # --- The tree walk --------------------------------------------------------------------------

    def _score_children(
        self, node: _Node, past: Past | None, past_length: int, scores: _Scores
    ) -> None:
        """Forward the children of `node` in batches against its cache `past`, score their
        probes, then descend into each child that has children of its own."""
        children = sorted(node.children.values(), key=lambda child: -len(child.tokens))
        start = 0
        while start < len(children):
            batch = self._batch(children, start, past_length)
            start += len(batch)
            cache = self._forward(batch, past, scores)
            for row, child in enumerate(batch):
                if child.children:
                    length = past_length + len(child.tokens)
                    child_past = [
                        (k[row : row + 1, :, :length], v[row : row + 1, :, :length])
                        for k, v in cache
                    ]
                    self._score_children(child, child_past, length, scores)
            del cache

    def _forward(self, batch: list[_Node], past: Past | None, scores: _Scores) -> Past:
        from transformers import DynamicCache

        width = max(len(child.tokens) for child in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        for row, child in enumerate(batch):
            ids[row, : len(child.tokens)] = torch.tensor(child.tokens, dtype=torch.long)
        keep = sorted({probe[0] for child in batch for probe in child.probes})
        if past is None:
            cache = DynamicCache()
        else:
            rows = len(batch)
            cache = DynamicCache(
                ddp_cache_data=[
                    (k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in past
                ]
            )
        kwargs: dict[str, Any] = {self._cache_arg or "cache": cache, "use_cache": True}
        if self._keeps_logits:
            # Positions are the same for every row; an empty batch of probes still needs one.
            kwargs["logits_to_keep"] = torch.tensor(keep or [0], device=self.device)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            output = self.model(input_ids=ids.to(self.device), **kwargs)
        self.forward_stats.forwards += 1
        self.forward_stats.positions += ids.numel()
        self.forward_stats.tokens += sum(len(child.tokens) for child in batch)
        if keep:
            logits = output.logits if self._keeps_logits else output.logits[:, keep, :]
            self._score(batch, keep, logits, scores)
        del output
        # Only plain DynamicLayers get here (`_check_sharing`).
        return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[misc, union-attr]

    def _score(
        self, batch: list[_Node], keep: list[int], logits: torch.Tensor, scores: _Scores
    ) -> None:
        # As HFLM: log-softmax in softmax_dtype (None: the logits' dtype), argmax of that.
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        column = {position: i for i, position in enumerate(keep)}
        rows, columns, targets, owners = [], [], [], []
        for row, child in enumerate(batch):
            for position, target, index, slot in child.probes:
                rows.append(row)
                columns.append(column[position])
                targets.append(target)
                owners.append((index, slot))
        row_t = torch.tensor(rows, device=logprobs.device)
        column_t = torch.tensor(columns, device=logprobs.device)
        target_t = torch.tensor(targets, device=logprobs.device)
        values = logprobs[row_t, column_t, target_t].cpu()
        greedy = (logprobs[row_t, column_t].argmax(dim=-1) == target_t).tolist()
        for (index, slot), value, is_greedy in zip(owners, values, greedy, strict=True):
            scores.values[index][slot] = value
            scores.greedy[index] = scores.greedy[index] and is_greedy
            scores.remaining[index] -= 1
            if scores.remaining[index] == 0:
                self._finish(index, scores)

    def _finish(self, index: int, scores: _Scores) -> None:
        # HFLM sums a [1, continuation] tensor in its dtype, then converts to float.
        answer = (float(scores.values[index].unsqueeze(0).sum()), bool(scores.greedy[index]))
        scores.results[index] = answer
        request_str = scores.requests[index][0]
        if request_str is not None:
            self.cache_hook.add_partial("loglikelihood", request_str, answer)
        self._pbar.update(1)

    # --- Batch sizes ----------------------------------------------------------------------------

    def _batch(self, children: list[_Node], start: int, past_length: int) -> list[_Node]:
        """The next batch of `children` (longest first): at most `_rows` rows, and no more
        padding than MAX_PADDING of the positions forwarded."""
        width = len(children[start].tokens)
        rows = self._rows(width, past_length)
        end, tokens = start + 1, width
        while end < len(children) and end - start < rows:
            length = len(children[end].tokens)
            if tokens + length < (1 - MAX_PADDING) * width * (end - start + 1):
                break
            tokens += length
            end += 1
        return children[start:end]

    def _rows(self, width: int, past_length: int) -> int:
        """Rows in a batch of `width` new tokens after `past_length` cached ones: the configured
        batch size; with "auto", from the GPU's free memory, and on CPU never "auto"."""
        if self.batch_size != "auto":
            return max(1, int(self.batch_size))
        if self.device.type != "cuda":
            return CPU_ROWS
        free, _ = torch.cuda.mem_get_info(self.device)
        rows = int(GPU_MEMORY_SHARE * free / self._bytes_per_row(width, past_length))
        return max(1, min(rows, int(self.max_batch_size or rows or 1)))

    def _bytes_per_row(self, width: int, past_length: int) -> int:
        config = self.model.config.get_text_config()
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        element = self._logits_dtype().itemsize
        total = past_length + width
        # The expanded past and its concatenation with the new keys/values, every layer.
        cache = 2 * 2 * config.num_hidden_layers * kv_heads * head_dim * element * total
        # One layer's activations at a time: hidden states, MLP, attention scores (float32).
        intermediate = getattr(config, "intermediate_size", 4 * config.hidden_size)
        activations = width * (6 * config.hidden_size + 3 * intermediate) * element
        attention = heads * width * total * 4
        # Logits and their log-softmax for every kept position.
        logits = width * config.vocab_size * (element + 4)
        return int(cache + activations + attention + logits)
