"""The local model source: repositories as folders under one root, git repos or plain folders."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from leaderboard.catalog.sources.base import (
    InvalidRepoId,
    Kind,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    SourceUnavailable,
)
from leaderboard.catalog.sources.safetensors_header import (
    SafetensorsHeaderError,
    parameters_from_header,
    weight_files_for_count,
)

# The Hub's rule for each half of "<org>/<name>" (letters, digits, "-", "_", "." , at most 96).
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
DATASETS_DIR = "datasets"
# Files read into the snapshot; everything else is only listed.
SMALL_FILE_LIMIT = 8 * 1024 * 1024
GIT_TIMEOUT = 60


def validate_repo_id(repo_id: str) -> tuple[str, str]:
    """Split "<org>/<name>", refusing anything that could leave the root (.., absolute paths)."""
    parts = repo_id.split("/")
    if (
        len(parts) != 2
        or ".." in repo_id
        or repo_id.startswith(("/", "\\"))
        or not all(_SEGMENT.match(part) for part in parts)
    ):
        raise InvalidRepoId(
            f"{repo_id!r} is not a repository id of the form <org>/<name> (letters, digits, "
            "'-', '_', '.'; no '..')"
        )
    return parts[0], parts[1]


class LocalSource:
    """Models at `<root>/<org>/<name>/`, datasets at `<root>/datasets/<org>/<name>/`.

    A folder that is a git repository (has its own `.git`) is read at a commit: any branch, tag
    or sha resolves through git and files come from that commit, never the working tree. A plain
    folder has one revision, a content hash of its file paths and contents."""

    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        # folder -> (listing of (relpath, size, mtime_ns), content hash): weights are large and
        # re-hashing them on every snapshot would make each submission check read gigabytes.
        self._hash_cache: dict[str, tuple[tuple[tuple[str, int, int], ...], str]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> LocalSource:
        return cls(settings.TRELLIS_MODEL_ROOT)

    # --- public interface ---------------------------------------------------------------------

    def repo_path(self, repo_id: str, kind: Kind = "model") -> Path:
        org, name = validate_repo_id(repo_id)
        if kind == "dataset":
            path = self.root / DATASETS_DIR / org / name
        else:
            if org == DATASETS_DIR:
                raise InvalidRepoId(
                    f"{repo_id!r}: the organisation {DATASETS_DIR!r} is reserved for dataset "
                    "repositories in a local model root"
                )
            path = self.root / org / name
        # Belt and braces against symlinks pointing out of the root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidRepoId(f"{repo_id!r} resolves outside the model root")
        return path

    def exists(self, repo_id: str, kind: Kind = "model") -> bool:
        try:
            return self.repo_path(repo_id, kind).is_dir()
        except InvalidRepoId:
            return False

    def snapshot(
        self,
        repo_id: str,
        revision: str | None = None,
        kind: Kind = "model",
        *,
        card_only: bool = False,
    ) -> RepoSnapshot:
        path = self.repo_path(repo_id, kind)
        if not path.is_dir():
            where = f"{DATASETS_DIR}/{repo_id}" if kind == "dataset" else repo_id
            raise RepoNotFound(f"{kind} repository {repo_id!r} not found under {self.root}/{where}")
        tree: _Tree
        if (path / ".git").exists():
            tree = git_tree = _GitTree(path, revision)
            sha = git_tree.sha
        else:
            tree = folder = _FolderTree(path)
            sha = self._content_hash(folder)
            if revision not in (None, "", "main", sha):
                raise RevisionNotFound(
                    f"revision {revision!r} not found: {repo_id} is a plain folder, not a git "
                    f"repository, so its only revision is its content hash {sha}"
                )
        files = tree.files()
        card_text = _text(tree.read("README.md")) if "README.md" in files else None
        snap = RepoSnapshot(
            repo_id=repo_id,
            kind=kind,
            sha=sha,
            files=files,
            card_text=card_text,
            local_path=str(path),
        )
        if card_only:
            # The caller parses the card itself; parsing it here too doubles the YAML work.
            return snap
        snap.tags = _card_tags(card_text)
        snap.config = _json_file(tree, files, "config.json")
        snap.adapter_config = _json_file(tree, files, "adapter_config.json")
        snap.mergekit_config = _yaml_file(tree, files, "mergekit_config.yml")
        if kind == "model":
            snap.parameter_count = _parameter_count(tree, files)
        return snap

    # --- content hash -------------------------------------------------------------------------

    def _content_hash(self, tree: _FolderTree) -> str:
        listing = tree.stat_listing()
        cached = self._hash_cache.get(str(tree.path))
        if cached is not None and cached[0] == listing:
            return cached[1]
        digest = hashlib.sha256()
        for relpath, size, _mtime in listing:
            # Length-prefixed so that moving bytes between a name and a body changes the hash.
            name = relpath.encode()
            digest.update(len(name).to_bytes(8, "little") + name + size.to_bytes(8, "little"))
            with open(tree.path / relpath, "rb") as handle:
                for chunk in iter(lambda: handle.read(1024 * 1024), b""):
                    digest.update(chunk)
        value = digest.hexdigest()[:40]
        self._hash_cache[str(tree.path)] = (listing, value)
        return value


# --- trees: one way to list and read files, from a folder or from a git commit -----------------


class _Tree:
    path: Path

    def files(self) -> list[str]:
        raise NotImplementedError

    def read(self, relpath: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        raise NotImplementedError

    def open_stream(self, relpath: str) -> _Stream:
        raise NotImplementedError


class _Stream:
    """A readable byte stream that is closed (and its process stopped) on exit."""

    def __init__(self, handle: IO[bytes], process: subprocess.Popen[bytes] | None = None) -> None:
        self.handle = handle
        self.process = process

    def __enter__(self) -> IO[bytes]:
        return self.handle

    def __exit__(self, *exc: object) -> None:
        self.handle.close()
        if self.process is not None:
            # Only the header was wanted: stop git rather than let it stream the whole blob.
            self.process.kill()
            self.process.wait()


class _FolderTree(_Tree):
    def __init__(self, path: Path) -> None:
        self.path = path

    def _walk(self) -> Iterator[Path]:
        for item in sorted(self.path.rglob("*")):
            relative = item.relative_to(self.path)
            # Dot-folders (.cache from huggingface_hub downloads, editor files) are not content.
            if any(part.startswith(".") for part in relative.parts):
                continue
            if item.is_file():
                yield item

    def files(self) -> list[str]:
        return [item.relative_to(self.path).as_posix() for item in self._walk()]

    def stat_listing(self) -> tuple[tuple[str, int, int], ...]:
        listing = []
        for item in self._walk():
            stat = item.stat()
            listing.append((item.relative_to(self.path).as_posix(), stat.st_size, stat.st_mtime_ns))
        return tuple(listing)

    def read(self, relpath: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        with open(self.path / relpath, "rb") as handle:
            return handle.read(limit)

    def open_stream(self, relpath: str) -> _Stream:
        return _Stream(open(self.path / relpath, "rb"))


class _GitTree(_Tree):
    def __init__(self, path: Path, revision: str | None) -> None:
        self.path = path
        self.sha = self._resolve(revision)

    def _command(self, *args: str) -> list[str]:
        # The folder may belong to another user than the web process (a shared model root);
        # git then refuses it as "dubious ownership" unless told this one folder is expected.
        return ["git", "-c", f"safe.directory={self.path}", "-C", str(self.path), *args]

    def _git(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                self._command(*args),
                capture_output=True,
                timeout=GIT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceUnavailable(f"could not run git in {self.path}: {exc}") from exc

    def _resolve(self, revision: str | None) -> str:
        wanted = revision or "HEAD"
        # A leading "-" would be read by git as an option.
        if wanted.startswith("-") or any(ch in wanted for ch in "\0\n"):
            raise RevisionNotFound(f"revision {revision!r} is not a valid git revision")
        sha = self._rev_parse(wanted)
        if sha is None and wanted == "main":
            # "main" is the Hub's default branch name; a local repo may call it "master".
            sha = self._rev_parse("HEAD")
        if sha is None:
            raise RevisionNotFound(
                f"revision {revision!r} not found in the git repository {self.path.name} "
                "(use a branch, tag or commit sha that exists there)"
            )
        return sha

    def _rev_parse(self, revision: str) -> str | None:
        result = self._git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
        if result.returncode != 0 and result.stderr.strip():
            # --quiet silences an unknown revision; anything on stderr is git failing outright.
            raise SourceUnavailable(
                f"git cannot read {self.path}: {result.stderr.decode(errors='replace').strip()}"
            )
        sha = result.stdout.decode().strip()
        return sha if result.returncode == 0 and _SHA.match(sha) else None

    def files(self) -> list[str]:
        result = self._git("ls-tree", "-r", "-z", "--name-only", self.sha)
        if result.returncode != 0:
            raise SourceUnavailable(f"git ls-tree failed in {self.path}: {result.stderr.decode()}")
        return sorted(name.decode() for name in result.stdout.split(b"\0") if name)

    def read(self, relpath: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        with self.open_stream(relpath) as handle:
            return handle.read(limit)

    def open_stream(self, relpath: str) -> _Stream:
        process = subprocess.Popen(
            self._command("cat-file", "blob", f"{self.sha}:{relpath}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        return _Stream(process.stdout, process)


# --- reading the small files and the weights' headers ------------------------------------------


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _json_file(tree: _Tree, files: list[str], name: str) -> dict[str, Any] | None:
    """A JSON object file, or None when absent or unparseable (the checks see it in `files`)."""
    if name not in files:
        return None
    try:
        value = json.loads(tree.read(name))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _yaml_file(tree: _Tree, files: list[str], name: str) -> dict[str, Any] | None:
    if name not in files:
        return None
    try:
        value = yaml.safe_load(tree.read(name))
    except yaml.YAMLError:
        return None
    return value if isinstance(value, dict) else None


def _card_tags(card_text: str | None) -> list[str]:
    from leaderboard.catalog.cards import CardError, parse_card

    if not card_text:
        return []
    try:
        tags = parse_card(card_text).metadata.get("tags")
    except CardError:
        return []
    if isinstance(tags, str):
        return [tags]
    return [str(tag) for tag in tags] if isinstance(tags, list) else []


def _parameter_count(tree: _Tree, files: list[str]) -> int | None:
    index = None
    if "model.safetensors.index.json" in files:
        index = _json_file(tree, files, "model.safetensors.index.json")
        if index is None:
            return None
    weight_files = weight_files_for_count(files, index)
    if not weight_files or any(name not in files for name in weight_files):
        return None
    total = 0
    for name in weight_files:
        try:
            with tree.open_stream(name) as handle:
                total += parameters_from_header(handle)
        except (SafetensorsHeaderError, OSError):
            return None
    return total
