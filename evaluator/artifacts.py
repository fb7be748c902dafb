"""The artifact store both sides use: a folder by default, an S3-compatible bucket when its
location is `s3://bucket/prefix`. The GPU worker writes a run's details through it; the web side
checks, serves, backs up and restores them through it (docs/deploy.md, docs/operations.md).

An artifact has a name relative to the store (`<run id>/<file>`), the same in a folder and in a
bucket, so a backup of one restores into the other. A bucket's endpoint and credentials come
from each host's environment (boto3's `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), never from a message; boto3 is imported only
when a bucket is used. Also a command line for operators:

    python -m evaluator.artifacts list STORE
    python -m evaluator.artifacts copy SOURCE DESTINATION [--into-empty]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

BUCKET_SCHEME = "s3://"
PARTIAL_SUFFIX = ".partial"  # a folder store's file being written; never an artifact


class StoreError(ValueError):
    """A store location that cannot be used; the message names it and the fix."""


class StoreUnavailable(OSError):
    """The store could not be reached or answered with an error: nothing is wrong with the
    artifact, so whoever asked tries again later (the message names the store and the cause)."""


@dataclass(frozen=True)
class Opened:
    """An artifact open for reading: a binary stream (close it) and its size in bytes."""

    stream: BinaryIO
    size: int


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an artifact (absolute, `..`, empty parts), or None: a worker's
    name must never reach outside the store, in a folder or under a bucket's prefix."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return f"{name!r} is not a relative name inside the artifact store"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"{name!r} is not a relative name inside the artifact store"
    return None


class ArtifactStore(ABC):
    """Where details artifacts live. `location` names the store in a job and in the
    documentation: an absolute folder path, or `s3://bucket/prefix`."""

    location: str

    @abstractmethod
    def put(self, name: str, source: Path) -> None:
        """Store the finished file `source` as `name`; readers never see a partial artifact."""

    @abstractmethod
    def open(self, name: str) -> Opened | None:
        """The artifact for reading, or None when there is none by that name."""

    @abstractmethod
    def names(self) -> Iterator[str]:
        """Every artifact's name, sorted."""

    def digest(self, name: str) -> tuple[int, str] | None:
        """(size, sha256) of the artifact, read through; None when there is none."""
        opened = self.open(name)
        if opened is None:
            return None
        digest, size = hashlib.sha256(), 0
        with opened.stream as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    def is_empty(self) -> bool:
        return next(iter(self.names()), None) is None


class FolderStore(ArtifactStore):
    """A folder on this host (on many hosts: a shared mount, wherever each host mounts it)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.location = str(self.root)

    def path(self, name: str) -> Path | None:
        """The artifact's path, or None when the name (or a symlink on the way) leads outside."""
        if name_problem(name):
            return None
        path = (self.root / name).resolve()
        return path if path.is_relative_to(self.root) else None

    def put(self, name: str, source: Path) -> None:
        path = self._writable(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        shutil.copyfile(source, partial)
        os.replace(partial, path)

    def open(self, name: str) -> Opened | None:
        path = self.path(name)
        if path is None or not path.is_file():
            return None
        handle = path.open("rb")
        return Opened(handle, os.fstat(handle.fileno()).st_size)

    def names(self) -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        found = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.endswith(PARTIAL_SUFFIX)
        )
        return iter(sorted(found))

    def _writable(self, name: str) -> Path:
        path = self.path(name)
        if path is None:
            raise StoreError(name_problem(name) or f"{name!r} leads outside {self.root}")
        return path


class BucketStore(ArtifactStore):
    """Objects under `prefix/` in an S3-compatible bucket, through boto3."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.location = f"{BUCKET_SCHEME}{bucket}/{self.prefix}".rstrip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(endpoint_url())
        return self._client

    def key(self, name: str) -> str:
        problem = name_problem(name)
        if problem:
            raise StoreError(problem)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, source: Path) -> None:
        key = self.key(name)
        with self._reaching():
            # upload_file sends large files in parts; S3 shows the object only once it is whole.
            self.client.upload_file(str(source), self.bucket, key)

    def open(self, name: str) -> Opened | None:
        if name_problem(name):
            return None
        with self._reaching():
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            except self.client.exceptions.NoSuchKey:
                return None
        return Opened(response["Body"], int(response["ContentLength"]))

    def names(self) -> Iterator[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        with self._reaching():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            found = [
                item["Key"][len(start) :] for page in pages for item in page.get("Contents", ())
            ]
        return iter(sorted(name for name in found if not name_problem(name)))

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StoreUnavailable(f"the artifact store {self.location} failed: {exc}") from exc


def endpoint_url() -> str | None:
    """This host's S3 endpoint (boto3's variables); None: AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=4)
def s3_client(endpoint_url: str | None) -> Any:
    """One boto3 client per endpoint and process (clients are thread-safe). An endpoint of
    one's own (MinIO, Ceph, moto...) is addressed path-style (`endpoint/bucket/key`), which
    every S3-compatible server understands; AWS itself (no endpoint set) chooses."""
    import boto3
    from botocore.config import Config

    style = "path" if endpoint_url else "auto"
    # Standard retries: three attempts (AWS_MAX_ATTEMPTS), so a page waiting on a download
    # learns of an outage in seconds.
    config = Config(s3={"addressing_style": style}, retries={"mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def location_problem(location: str) -> str | None:
    """Why `location` names no store, or None. A store is an absolute folder path (or a
    `file://` URL) or `s3://bucket/prefix`."""
    if location.startswith(BUCKET_SCHEME):
        bucket = urlsplit(location).netloc
        if not bucket or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789.-" for c in bucket):
            return f"{location!r}: the bucket name is missing or malformed (s3://bucket/prefix)"
        return None
    scheme = urlsplit(location).scheme
    if scheme == "file" or (not scheme and PurePosixPath(location).is_absolute()):
        return None
    return f"{location!r} is neither an absolute folder nor an s3://bucket/prefix URL"


def open_store(location: str | Path) -> ArtifactStore:
    """The store a location names (see `location_problem`); a relative folder is taken from
    the current directory (the command line)."""
    text = str(location)
    if text.startswith(BUCKET_SCHEME):
        problem = location_problem(text)
        if problem:
            raise StoreError(problem)
        parts = urlsplit(text)
        return BucketStore(parts.netloc, unquote(parts.path))
    if text.startswith("file://"):
        return FolderStore(Path(unquote(urlsplit(text).path)))
    return FolderStore(Path(text))


def is_bucket(location: str) -> bool:
    return location.startswith(BUCKET_SCHEME)


def copy(source: ArtifactStore, destination: ArtifactStore) -> int:
    """Copy every artifact of `source` into `destination` under the same name; the count."""
    count = 0
    with tempfile.TemporaryDirectory(prefix="trellis-artifacts-") as work:
        staging = Path(work) / "artifact"
        for name in source.names():
            if isinstance(source, FolderStore):
                path = source.path(name)
                assert path is not None  # names() lists files inside the root only
            else:
                opened = source.open(name)
                if opened is None:  # deleted since it was listed
                    continue
                with opened.stream as stream, staging.open("wb") as out:
                    shutil.copyfileobj(stream, out, 1 << 20)
                path = staging
            destination.put(name, path)
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator.artifacts",
        description="List or copy artifact stores (a folder, or s3://bucket/prefix).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print every artifact's name")
    listing.add_argument("store")
    copying = commands.add_parser("copy", help="copy every artifact into another store")
    copying.add_argument("source")
    copying.add_argument("destination")
    copying.add_argument(
        "--into-empty",
        action="store_true",
        help="refuse (exit status 2) when the destination holds any artifact",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        try:
            for name in open_store(args.store).names():
                print(name)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    source, destination = open_store(args.source), open_store(args.destination)
    if args.into_empty and not destination.is_empty():
        print(
            f"refusing: the artifact store {destination.location} is not empty; "
            "restore the artifacts into an empty one",
            file=sys.stderr,
        )
        return 2
    count = copy(source, destination)
    print(f"copied {count} artifacts from {source.location} to {destination.location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
