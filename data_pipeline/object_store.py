"""Object storage (s3://, gs://, any fsspec URL): retried transfers that name the URI when they fail.

Credentials and endpoints come only from each backend's standard environment and files (for S3:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, ~/.aws, and AWS_ENDPOINT_URL for MinIO or
Ceph; for GCS: GOOGLE_APPLICATION_CREDENTIALS), never from a config file. A transient error (a dropped
connection, a server restarting, throttling) is retried with exponential backoff for up to
`RETRY_SECONDS`; a persistent one (missing bucket or object, refused credentials, unknown protocol)
and one that outlasts the retries is a single DataError naming the URI.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from data_pipeline.errors import DataError

log = logging.getLogger(__name__)

class ObjectNotFound(DataError):
    """The object (or its bucket) does not exist."""


RETRY_SECONDS = float(os.environ.get("PRETRAIN_OBJECT_STORE_RETRY_SECONDS", "60"))
_FIRST_BACKOFF, _MAX_BACKOFF = 0.25, 8.0
_CHUNK = 8 << 20
T = TypeVar("T")


def is_uri(path: str | Path) -> bool:
    """True for `scheme://...` paths other than file:// (which are plain local paths)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """`uri/part/...` without doubled slashes."""
    return "/".join([uri.rstrip("/"), *parts])


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec  # imported here so local-only use never needs it
    for chatty in ("botocore", "aiobotocore", "s3fs", "gcsfs"):  # "found credentials in ..." on every start
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as err:
        raise DataError(f"{uri}: the storage backend is not installed ({err}): pip install s3fs or "
                        f"gcsfs") from None
    except ValueError as err:
        raise DataError(f"{uri}: not a storage URI fsspec knows ({err}): use s3://bucket/prefix, "
                        f"gs://bucket/prefix or a local path") from None


def _persistent_cause(err: BaseException) -> str | None:
    """Why `err` will not go away by retrying, or None for an error worth retrying."""
    if isinstance(err, FileNotFoundError):
        return "not found (check the bucket name and the prefix)"
    if isinstance(err, PermissionError):
        return "access denied (check the credentials in the environment: AWS_ACCESS_KEY_ID / " \
               "AWS_SECRET_ACCESS_KEY / AWS_PROFILE, or GOOGLE_APPLICATION_CREDENTIALS)"
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
        return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or " \
               "GOOGLE_APPLICATION_CREDENTIALS)"
    if name in ("NoSuchBucket", "InvalidBucketName", "ParamValidationError"):
        return f"invalid bucket or key ({err})"
    return None


def with_retries(uri: str, what: str, action: Callable[[], T]) -> T:
    """Run `action` (an operation on `uri`), retrying transient errors with backoff."""
    deadline = time.monotonic() + RETRY_SECONDS
    delay = _FIRST_BACKOFF
    while True:
        try:
            return action()
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - classified below; unknown errors are retried, then reported
            cause = _persistent_cause(err)
            if cause is not None:
                error = ObjectNotFound if isinstance(err, FileNotFoundError) else DataError
                raise error(f"{uri}: cannot {what}: {cause}") from None
            if time.monotonic() + delay > deadline:
                raise DataError(f"{uri}: cannot {what} after retrying for {RETRY_SECONDS:.0f} s "
                                f"({type(err).__name__}: {err}): check that the object store is "
                                f"reachable (AWS_ENDPOINT_URL for S3-compatible stores)") from None
            log.warning("%s: %s failed (%s: %s), retrying in %.2f s", uri, what, type(err).__name__, err, delay)
            time.sleep(delay)
            delay = min(2 * delay, _MAX_BACKOFF)


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a local file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of the object at `uri` (one ranged GET)."""
    def action() -> bytes:
        fs, path = _filesystem(uri)
        return fs.cat_file(path, start=start, end=end)
    return with_retries(uri, "read", action)


def read_bytes(uri: str) -> bytes:
    """The whole object at `uri`."""
    def action() -> bytes:
        fs, path = _filesystem(uri)
        return fs.cat_file(path)
    return with_retries(uri, "read", action)


def write_bytes(uri: str, data: bytes) -> None:
    """Create or replace the object at `uri` (an object store makes a single PUT atomic)."""
    def action() -> None:
        fs, path = _filesystem(uri)
        fs.pipe_file(path, data)
    with_retries(uri, "write", action)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write `data` at `uri` unless an object is there already (a conditional PUT); False if it was."""
    def action() -> bool:
        fs, path = _filesystem(uri)
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    return with_retries(uri, "create", action)


def move(source: str, target: str) -> None:
    """Copy `source` over `target` in the store, then delete `source`."""
    def action() -> None:
        fs, path = _filesystem(source)
        fs.mv(path, _filesystem(target)[1])
    with_retries(source, f"move to {target}", action)


def list_names(uri: str) -> list[str]:
    """Names directly under the prefix `uri` (empty when there is none)."""
    def action() -> list[str]:
        fs, path = _filesystem(uri)
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError:
            bucket = path.split("/", 1)[0]
            try:
                fs.ls(bucket, detail=False, refresh=True)
            except FileNotFoundError:
                raise DataError(f"{uri}: bucket {bucket!r} does not exist: check the URI, or create the "
                                f"bucket") from None
            return []
    return with_retries(uri, "list", action)


def remove(uri: str) -> None:
    def action() -> None:
        fs, path = _filesystem(uri)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass
    with_retries(uri, "delete", action)


def upload_verified(local: Path, uri: str) -> tuple[int, str]:
    """Upload a local file, then check the stored size; returns (bytes, sha256) for a manifest."""
    size, sha = file_digest(local)

    def action() -> None:
        fs, path = _filesystem(uri)
        fs.put_file(str(local), path)
        stored = fs.info(path)["size"]
        if stored != size:
            raise OSError(f"stored object has {stored} bytes, the local file {size}")
    with_retries(uri, "upload", action)
    return size, sha


def local_copy(uri: str) -> Path:
    """A fresh local copy of a small object (a vocab file), under the temp dir, named after its URI.

    Fetched on every call, since the object may have been replaced; the copy is written atomically, so
    ranks on one node fetching the same file at once each leave a whole file.
    """
    directory = Path(tempfile.gettempdir()) / f"pretrain-object-copies-{os.getuid()}"
    directory.mkdir(parents=True, exist_ok=True)
    local = directory / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{uri.rstrip('/').rsplit('/', 1)[-1]}"
    data = read_bytes(uri)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=local.name + ".")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(tmp, local)
    return local


def download_verified(uri: str, local: Path, size: int, sha256: str, attempts: int = 3) -> None:
    """Download `uri` to `local` (atomically), checking its size and sha256; a bad copy is fetched again.

    An object that is still wrong after `attempts` downloads is corrupt in the store: a DataError.
    """
    tmp = local.with_name(local.name + ".part")
    found = ""
    for _ in range(attempts):
        def action() -> None:
            fs, path = _filesystem(uri)
            fs.get_file(path, str(tmp))
        with_retries(uri, "download", action)
        got_size, got_sha = file_digest(tmp)
        if (got_size, got_sha) == (size, sha256):
            os.replace(tmp, local)
            return
        found = f"{got_size} bytes, sha256 {got_sha[:16]}"
        log.warning("%s: downloaded copy has %s, the manifest says %d bytes, sha256 %s: fetching it again",
                    uri, found, size, sha256[:16])
    tmp.unlink(missing_ok=True)
    raise DataError(f"{uri}: corrupt in the object store ({found}, the dataset manifest says {size} bytes, "
                    f"sha256 {sha256[:16]}) after {attempts} downloads: re-run preprocess to upload it again")
