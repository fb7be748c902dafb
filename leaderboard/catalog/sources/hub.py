"""The Hugging Face Hub model source: repository info and small files, never weights."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx2
import yaml
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from leaderboard.catalog.sources.base import (
    InvalidRepoId,
    Kind,
    RepoAccessDenied,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    SourceUnavailable,
)
from leaderboard.catalog.sources.safetensors_header import (
    INDEX_FILE,
    MAX_HEADER_BYTES,
    SafetensorsHeaderError,
    parameters_from_header,
    weight_files_for_count,
)

CARD_FILE = "README.md"
# The only files ever fetched; each is capped so a hostile repo cannot make us read gigabytes.
SMALL_FILES = ("config.json", "adapter_config.json", "mergekit_config.yml", INDEX_FILE)
SMALL_FILE_LIMIT = 8 * 1024 * 1024

T = TypeVar("T")


class HubSource:
    """Reads repositories through huggingface_hub's HfApi at `endpoint` (HF_ENDPOINT)."""

    name = "hub"

    def __init__(
        self, endpoint: str | None = None, token: str | None = None, timeout: float = 20.0
    ) -> None:
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.token = token or None  # None: huggingface_hub's own lookup (HF_TOKEN, login cache)
        self.timeout = timeout
        self.api = HfApi(endpoint=self.endpoint, token=self.token)

    @classmethod
    def from_settings(cls, settings: Any) -> HubSource:
        return cls(
            endpoint=getattr(settings, "HF_ENDPOINT", "") or None,
            token=getattr(settings, "HF_TOKEN", "") or None,
            timeout=getattr(settings, "TRELLIS_HUB_TIMEOUT", 20.0),
        )

    # --- public interface ---------------------------------------------------------------------

    def exists(self, repo_id: str, kind: Kind = "model") -> bool:
        """Whether the Hub knows the repository (private ones only with a token that reads
        them). Raises SourceUnavailable when the Hub cannot be asked."""
        try:
            self._info(repo_id, None, kind)
        except RepoAccessDenied:
            return True
        except RepoNotFound:
            return False
        return True

    def snapshot(
        self,
        repo_id: str,
        revision: str | None = None,
        kind: Kind = "model",
        *,
        card_only: bool = False,
    ) -> RepoSnapshot:
        info = self._info(repo_id, revision, kind)
        sha = getattr(info, "sha", None)
        if not isinstance(sha, str) or not sha:
            raise SourceUnavailable(f"the Hub answered for {repo_id} without a commit sha")
        files = sorted(sibling.rfilename for sibling in info.siblings or [])
        snap = RepoSnapshot(
            repo_id=repo_id,
            kind=kind,
            sha=sha,
            files=files,
            tags=[str(tag) for tag in info.tags or []],
        )
        # A gated repo's card is public; the rest needs the access the token may not have.
        if CARD_FILE in files:
            card = self._fetch(repo_id, kind, sha, CARD_FILE)
            snap.card_text = card.decode("utf-8", errors="replace") if card is not None else None
        if card_only:
            return snap
        if info.gated:
            self._check_access(repo_id, kind)
        small = {
            name: self._fetch(repo_id, kind, sha, name) for name in SMALL_FILES if name in files
        }
        snap.config = _parse(small.get("config.json"), json.loads)
        snap.adapter_config = _parse(small.get("adapter_config.json"), json.loads)
        snap.mergekit_config = _parse(small.get("mergekit_config.yml"), yaml.safe_load)
        if kind == "model":
            snap.parameter_count = self._parameter_count(
                repo_id, sha, info, files, _parse(small.get(INDEX_FILE), json.loads)
            )
        return snap

    # --- Hub calls ----------------------------------------------------------------------------

    def _info(self, repo_id: str, revision: str | None, kind: Kind) -> Any:
        call = self.api.dataset_info if kind == "dataset" else self.api.model_info
        with self._translated(repo_id, revision, kind):
            return call(repo_id, revision=revision or None, timeout=self.timeout)

    def _check_access(self, repo_id: str, kind: Kind) -> None:
        """Whether the token may download a gated repo's files (HfApi.auth_check's route, with
        our timeout: huggingface_hub's own call has none)."""
        url = f"{self.endpoint}/api/{kind}s/{repo_id}/auth-check"
        with self._translated(repo_id, None, kind), self._get(url):
            pass

    def _url(self, repo_id: str, kind: Kind, sha: str, filename: str) -> str:
        return hf_hub_url(repo_id, filename, repo_type=kind, revision=sha, endpoint=self.endpoint)

    def _fetch(self, repo_id: str, kind: Kind, sha: str, filename: str) -> bytes | None:
        """A small file at the pinned commit, or None when the Hub says it is not there."""
        try:
            with (
                self._translated(repo_id, sha, kind),
                self._get(self._url(repo_id, kind, sha, filename)) as response,
            ):
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > SMALL_FILE_LIMIT:
                        raise SourceUnavailable(
                            f"{filename} of {repo_id} is larger than {SMALL_FILE_LIMIT} bytes"
                        )
                return b"".join(chunks)
        except _EntryMissing:
            return None

    def _translated(
        self, repo_id: str, revision: str | None, kind: Kind
    ) -> contextlib.AbstractContextManager[None]:
        return _translated(self.endpoint, repo_id, revision, kind)

    @contextmanager
    def _get(self, url: str, headers: dict[str, str] | None = None) -> Iterator[Any]:
        request_headers = build_hf_headers(token=self.token, headers=headers)
        with get_session().stream(
            "GET", url, headers=request_headers, timeout=self.timeout
        ) as response:
            if response.status_code >= 400:
                response.read()  # error details live in the body and headers
                try:
                    hf_raise_for_status(response)
                except RemoteEntryNotFoundError as exc:
                    raise _EntryMissing() from exc
            yield response

    def _parameter_count(
        self,
        repo_id: str,
        sha: str,
        info: Any,
        files: list[str],
        index: dict[str, Any] | None,
    ) -> int | None:
        totals = getattr(info, "safetensors", None)
        if totals is not None and isinstance(getattr(totals, "total", None), int):
            return int(totals.total)
        # The API leaves it out for some repos: read each file's header with range requests.
        weight_files = weight_files_for_count(files, index)
        if not weight_files or any(name not in files for name in weight_files):
            return None
        total = 0
        for name in weight_files:
            try:
                total += self._remote_parameters(repo_id, sha, name)
            except (SafetensorsHeaderError, _EntryMissing):
                return None
        return total

    def _remote_parameters(self, repo_id: str, sha: str, filename: str) -> int:
        url = self._url(repo_id, "model", sha, filename)
        prefix = self._range(repo_id, sha, url, 0, 7)
        if len(prefix) != 8:
            raise SafetensorsHeaderError("file is shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length == 0 or length > MAX_HEADER_BYTES:
            raise SafetensorsHeaderError(f"header length {length} is out of range")
        header = self._range(repo_id, sha, url, 8, 8 + length - 1)
        return parameters_from_header(io.BytesIO(prefix + header))

    def _range(self, repo_id: str, sha: str, url: str, start: int, end: int) -> bytes:
        with (
            self._translated(repo_id, sha, "model"),
            self._get(url, {"Range": f"bytes={start}-{end}"}) as response,
        ):
            data = b""
            wanted = end - start + 1
            for chunk in response.iter_bytes():
                data += chunk
                # A server that ignores Range sends the whole file: stop at what we asked for.
                if len(data) >= wanted:
                    break
            return data[:wanted]


class _EntryMissing(Exception):
    """A listed file the Hub then says is not there (a race with a push): treated as absent."""


def _parse(data: bytes | None, loader: Callable[[Any], Any]) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = loader(data)
    except (ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


@contextmanager
def _translated(endpoint: str, repo_id: str, revision: str | None, kind: Kind) -> Iterator[None]:
    """huggingface_hub's errors as the source's own, each naming what to do about it."""
    what = "dataset" if kind == "dataset" else "model"
    try:
        yield
    except _EntryMissing:
        raise
    except HFValidationError as exc:
        raise InvalidRepoId(f"{repo_id!r} is not a valid Hub repository id: {exc}") from exc
    except GatedRepoError as exc:
        raise RepoAccessDenied(
            f"{what} {repo_id} is gated on the Hub and the configured token has no access: "
            "request access on its Hub page for the account whose token is in HF_TOKEN"
        ) from exc
    except DisabledRepoError as exc:
        raise RepoAccessDenied(f"{what} {repo_id} has been disabled on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise RepoNotFound(
            f"{what} {repo_id} was not found on the Hub (if it is private, set HF_TOKEN to a "
            "token that can read it)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise RevisionNotFound(
            f"revision {revision!r} not found in {repo_id}: use a branch, tag or commit sha "
            "that exists there"
        ) from exc
    except OfflineModeIsEnabled as exc:
        raise SourceUnavailable(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to use the Hub "
            "source, or set TRELLIS_MODEL_SOURCE=local"
        ) from exc
    except SourceUnavailable:
        raise
    except (httpx2.HTTPError, OSError, KeyError, TypeError, ValueError) as exc:
        # HfHubHTTPError (5xx, 429, 403) and transport errors (refused, timeout) are
        # httpx2.HTTPErrors; KeyError and friends come from an answer not shaped like the Hub's.
        raise SourceUnavailable(f"the Hub at {endpoint} could not answer: {exc}") from exc
