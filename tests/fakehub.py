"""A local stand-in for the Hugging Face Hub: the API and resolve routes Trellis uses, answered
from repositories built with tests/builders.py, shaped like the real Hub's responses."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from leaderboard.catalog.sources.safetensors_header import INDEX_FILE, weight_files_for_count

_INFO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
_AUTH_CHECK = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/auth-check/?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
LAST_MODIFIED = "2024-11-05T09:30:00.000Z"


@dataclass
class Access:
    """How the fake Hub guards one repository."""

    gated: str | bool = False  # False, "auto" or "manual", as the Hub reports it
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens that can read it / were granted


@dataclass
class _Repo:
    path: Path
    sha: str
    files: list[str]
    is_git: bool

    def read(self, name: str) -> bytes:
        if self.is_git:
            return subprocess.run(
                ["git", "-C", str(self.path), "cat-file", "blob", f"{self.sha}:{name}"],
                capture_output=True,
                check=True,
            ).stdout
        return (self.path / name).read_bytes()

    def blob_id(self, name: str) -> str:
        data = self.read(name)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves `root/<org>/<name>` models and `root/datasets/<org>/<name>` datasets on
    127.0.0.1 at a random port. Git folders answer at any of their revisions; plain folders at
    "main" or their content hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.access: dict[tuple[str, str], Access] = {}
        # Repos whose API answer leaves out the "safetensors" totals (as the Hub does for some).
        self.without_safetensors_totals: set[str] = set()
        self.fail_status: int | None = None  # answer every request with this status when set
        self.delay = 0.0  # seconds to wait before answering (a stalled Hub)
        self.ignore_ranges = False  # answer 200 with the whole file, as some mirrors do
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval so that stopping the server does not cost each test half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def guard(self, repo_id: str, kind: str = "model", **access: Any) -> None:
        self.access[(kind, repo_id)] = Access(**access)

    # --- repositories -------------------------------------------------------------------------

    def repo(self, kind: str, repo_id: str, revision: str | None) -> _Repo | str:
        """The repo at `revision`, or the X-Error-Code explaining why not."""
        path = self.root / "datasets" / repo_id if kind == "dataset" else self.root / repo_id
        if ".." in repo_id or not path.is_dir():
            return "RepoNotFound"
        if (path / ".git").exists():
            rev = revision or "HEAD"
            found = subprocess.run(
                ["git", "-C", str(path), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                capture_output=True,
                text=True,
            )
            if found.returncode != 0 and rev == "main":
                return self.repo(kind, repo_id, "HEAD")
            if found.returncode != 0 or rev.startswith("-"):
                return "RevisionNotFound"
            sha = found.stdout.strip()
            listing = subprocess.run(
                ["git", "-C", str(path), "ls-tree", "-r", "--name-only", sha],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            return _Repo(path, sha, sorted(listing), True)
        files = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        digest = hashlib.sha1()
        for name in files:
            digest.update(name.encode() + b"\0" + (path / name).read_bytes())
        sha = digest.hexdigest()
        if revision not in (None, "main", sha):
            return "RevisionNotFound"
        return _Repo(path, sha, files, False)

    def info(self, kind: str, repo_id: str, repo: _Repo) -> dict[str, Any]:
        card = _front_matter(repo.read("README.md")) if "README.md" in repo.files else {}
        access = self.access.get((kind, repo_id), Access())
        tags = [str(tag) for tag in card.get("tags") or []]
        if card.get("license"):
            tags.append(f"license:{card['license']}")
        body: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.sha,
            "lastModified": LAST_MODIFIED,
            "createdAt": LAST_MODIFIED,
            "private": access.private,
            "gated": access.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "cardData": card,
            "siblings": [{"rfilename": name} for name in repo.files],
            "usedStorage": sum(
                (repo.path / name).stat().st_size
                for name in repo.files
                if (repo.path / name).exists()
            ),
        }
        if kind == "dataset":
            body["tags"] = tags
            body["description"] = ""
            return body
        body["modelId"] = repo_id
        weights = [name for name in repo.files if name.endswith(".safetensors")]
        body["tags"] = [*tags, *(["safetensors"] if weights else []), "region:us"]
        body["library_name"] = card.get("library_name")
        body["pipeline_tag"] = card.get("pipeline_tag")
        body["spaces"] = []
        if "config.json" in repo.files:
            config = json.loads(repo.read("config.json"))
            body["config"] = {
                "architectures": config.get("architectures"),
                "model_type": config.get("model_type"),
            }
        if weights and repo_id not in self.without_safetensors_totals:
            totals = _parameters_by_dtype(repo)
            if totals is not None:
                body["safetensors"] = {"parameters": totals, "total": sum(totals.values())}
        return body


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) closes the socket under a slow answer.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def _front_matter(readme: bytes) -> dict[str, Any]:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        value = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return value if isinstance(value, dict) else {}


def _parameters_by_dtype(repo: _Repo) -> dict[str, int] | None:
    """What the Hub reports as `safetensors.parameters`: element counts per dtype."""
    index = json.loads(repo.read(INDEX_FILE)) if INDEX_FILE in repo.files else None
    totals: dict[str, int] = {}
    for name in weight_files_for_count(repo.files, index):
        data = repo.read(name)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        for tensor, meta in header.items():
            if tensor != "__metadata__":
                totals[meta["dtype"]] = totals.get(meta["dtype"], 0) + math.prod(meta["shape"])
    return totals or None


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else None

        def _route(self, head: bool) -> None:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, unquote(path), self.headers.get("Range")))
            if hub.delay:
                time.sleep(hub.delay)
            if hub.fail_status is not None:
                return self._error(hub.fail_status, None, "Internal Error - We're working hard")
            if match := _AUTH_CHECK.match(path):
                return self._auth_check(_kind(match.group(1)), match.group(2))
            if match := _INFO.match(path):
                revision = unquote(match.group(3)) if match.group(3) else None
                return self._info(_kind(match.group(1)), match.group(2), revision)
            if match := _RESOLVE.match(path):
                kind = "dataset" if match.group(1) else "model"
                revision, name = unquote(match.group(3)), unquote(match.group(4))
                return self._resolve(kind, match.group(2), revision, name, head)
            return self._error(404, None, "Sorry, we can't find the page you are looking for.")

        # --- guards -----------------------------------------------------------------------

        def _readable(self, kind: str, repo_id: str) -> bool:
            access = hub.access.get((kind, repo_id))
            return access is None or not access.private or self._token() in access.tokens

        def _granted(self, kind: str, repo_id: str) -> bool:
            access = hub.access.get((kind, repo_id))
            return access is None or not access.gated or self._token() in access.tokens

        def _gated_error(self, kind: str, repo_id: str) -> None:
            # 401 when anonymous, 403 when authenticated without access, like the Hub.
            status = 403 if self._token() else 401
            message = (
                f"Access to {kind} {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            self._error(status, "GatedRepo", message)

        def _lookup(self, kind: str, repo_id: str, revision: str | None) -> _Repo | None:
            repo = hub.repo(kind, repo_id, revision)
            if repo == "RepoNotFound" or not self._readable(kind, repo_id):
                # The Hub answers 401 for private and missing repos alike.
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            if repo == "RevisionNotFound":
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            assert isinstance(repo, _Repo)
            return repo

        # --- routes -----------------------------------------------------------------------

        def _auth_check(self, kind: str, repo_id: str) -> None:
            if self._lookup(kind, repo_id, None) is None:
                return
            if not self._granted(kind, repo_id):
                return self._gated_error(kind, repo_id)
            self._json(200, {"ok": True})

        def _info(self, kind: str, repo_id: str, revision: str | None) -> None:
            repo = self._lookup(kind, repo_id, revision)
            if repo is not None:
                self._json(200, hub.info(kind, repo_id, repo))

        def _resolve(self, kind: str, repo_id: str, revision: str, name: str, head: bool) -> None:
            repo = self._lookup(kind, repo_id, revision)
            if repo is None:
                return
            # On the Hub a gated repo's card is public; everything else needs access.
            if name not in ("README.md", ".gitattributes") and not self._granted(kind, repo_id):
                return self._gated_error(kind, repo_id)
            if name not in repo.files:
                return self._error(404, "EntryNotFound", f'{name} does not exist on "{revision}"')
            data = repo.read(name)
            headers = {
                "ETag": f'"{repo.blob_id(name)}"',
                "X-Repo-Commit": repo.sha,
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            status, size = 200, len(data)
            if (
                (ranged := self.headers.get("Range"))
                and not hub.ignore_ranges
                and (found := re.fullmatch(r"bytes=(\d+)-(\d*)", ranged))
            ):
                start = int(found.group(1))
                end = min(int(found.group(2)) if found.group(2) else size - 1, size - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                data, status = data[start : end + 1], 206
            self._send(status, data, headers, head)

        # --- responses --------------------------------------------------------------------

        def _send(self, status: int, data: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self._send(
                status,
                data,
                {"Content-Type": "application/json; charset=utf-8"},
                self.command == "HEAD",
            )

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"Content-Type": "application/json; charset=utf-8"}
            headers["X-Error-Message"] = message
            if code:
                headers["X-Error-Code"] = code
            data = json.dumps({"error": message}).encode()
            self._send(status, data, headers, self.command == "HEAD")

    return Handler


def _kind(segment: str) -> str:
    return "dataset" if segment == "datasets" else "model"
