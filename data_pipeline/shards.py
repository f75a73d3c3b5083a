"""The on-disk shard format: the only module that writes or reads token shards.

A shard is `PREFIX.json` (header) plus, per stream, `PREFIX.STREAM.bin` (flat little-endian tokens,
uint16 when the vocab fits, else uint32) and `PREFIX.STREAM.idx` (int64 document offsets, num_docs + 1
entries, starting at 0). Streams are `("text",)` for LM corpora and `("left", "right")` for paired
corpora, whose documents are aligned. Writing is atomic and the header is renamed into place last, so a
shard that has a header is complete; opening checks the header against the file sizes in O(1).
"""
from __future__ import annotations

import glob
import hashlib
import json
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data_pipeline.atomic_files import fsync_dir
from data_pipeline.errors import DataError

FORMAT_VERSION = 1
LM_STREAMS = ("text",)
PAIRED_STREAMS = ("left", "right")
SHARD_GLOB = "shard-*.json"
_OFFSET_DTYPE = np.dtype("<i8")
_TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class ShardTokenizer(Protocol):
    """The part of a `Tokenizer` the writer records in the header (and `sep_id` for LM streams)."""

    kind: str
    vocab_size: int
    fingerprint: str
    sep_id: int


def token_dtype(vocab_size: int) -> str:
    """The narrowest token dtype that holds every id of a vocab: half the disk and page cache of uint32."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def token_array_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a header's `dtype` ("uint16" or "uint32")."""
    return _TOKEN_DTYPES[name]


def shard_prefix(directory: Path, index: int) -> Path:
    """The prefix of the `index`-th shard of a preprocessed dataset directory."""
    return Path(directory) / f"shard-{index:05d}"


@dataclass(frozen=True)
class ShardHeader:
    """What a shard holds and which tokenizer made it; `content_sha256` covers every .bin/.idx byte."""

    format_version: int
    tokenizer_kind: str
    vocab_fingerprint: str
    vocab_size: int
    dtype: str
    streams: tuple[str, ...]
    num_docs: int
    num_tokens: dict[str, int]
    content_sha256: str
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, no timestamps) so equal shards have equal headers."""
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> "ShardHeader":
        """Parse and type-check a header; anything unexpected is a DataError naming `source`."""
        try:
            raw = json.loads(text)
            if raw.get("format_version") != FORMAT_VERSION:
                raise DataError(
                    f"{source}: shard format version {raw.get('format_version')!r}, this code reads "
                    f"{FORMAT_VERSION}: re-run preprocess to rewrite the shards"
                )
            header = cls(
                format_version=int(raw["format_version"]),
                tokenizer_kind=str(raw["tokenizer_kind"]),
                vocab_fingerprint=str(raw["vocab_fingerprint"]),
                vocab_size=int(raw["vocab_size"]),
                dtype=str(raw["dtype"]),
                streams=tuple(str(s) for s in raw["streams"]),
                num_docs=int(raw["num_docs"]),
                num_tokens={str(k): int(v) for k, v in raw["num_tokens"].items()},
                content_sha256=str(raw["content_sha256"]),
                stats={str(k): int(v) for k, v in raw.get("stats", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{source}: not a valid shard header ({err}): re-run preprocess") from None
        if header.streams not in (LM_STREAMS, PAIRED_STREAMS):
            raise DataError(f"{source}: unknown streams {list(header.streams)}: re-run preprocess")
        if header.dtype not in _TOKEN_DTYPES or set(header.num_tokens) != set(header.streams):
            raise DataError(f"{source}: inconsistent dtype or token counts in header: re-run preprocess")
        return header


def _stream_paths(prefix: Path, stream: str) -> tuple[Path, Path]:
    return Path(f"{prefix}.{stream}.bin"), Path(f"{prefix}.{stream}.idx")


def _header_path(prefix: Path) -> Path:
    return Path(f"{prefix}.json")


def shard_files(prefix: Path, streams: Sequence[str]) -> list[Path]:
    """Every file of a shard, data files first and the header (its commit point) last."""
    return [path for stream in streams for path in _stream_paths(prefix, stream)] + [_header_path(prefix)]


def _tmp(path: Path) -> Path:
    return Path(f"{path}.tmp")


class _HashedFile:
    """A binary file being written that hashes its bytes on the way, so nothing is read back."""

    def __init__(self, path: Path) -> None:
        self._handle = open(path, "wb")
        self._digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)

    def close(self) -> bytes:
        """Flush to disk (fsync) and return the content digest."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        return self._digest.digest()

    def discard(self) -> None:
        self._handle.close()
        Path(self._handle.name).unlink(missing_ok=True)


class ShardWriter:
    """Appends documents to one shard; `close()` makes it visible atomically.

    In an LM (`("text",)`) stream the writer appends `tokenizer.sep_id` after every document, so
    packing documents into fixed-length blocks keeps their boundaries visible to the model; callers
    pass documents without it. Paired streams are stored as given.
    """

    def __init__(self, prefix: Path, streams: Sequence[str], tokenizer: ShardTokenizer) -> None:
        self.prefix = Path(prefix)
        self.streams = tuple(streams)
        if self.streams not in (LM_STREAMS, PAIRED_STREAMS):
            raise ValueError(f"streams must be {LM_STREAMS} or {PAIRED_STREAMS}, got {self.streams}")
        self._tokenizer = tokenizer
        self._dtype = _TOKEN_DTYPES[token_dtype(tokenizer.vocab_size)]
        self._sep = np.array([tokenizer.sep_id], dtype=self._dtype) if self.streams == LM_STREAMS else None
        self._num_docs = 0
        self._num_tokens = {s: 0 for s in self.streams}
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        # Rewriting a shard: drop the old header first so the half-rewritten shard is never "complete".
        _header_path(self.prefix).unlink(missing_ok=True)
        self._files = {s: tuple(_HashedFile(_tmp(p)) for p in _stream_paths(self.prefix, s))
                       for s in self.streams}
        for _, idx_file in self._files.values():
            idx_file.write(np.zeros(1, _OFFSET_DTYPE).tobytes())

    def add(self, *docs: Sequence[int] | np.ndarray) -> None:
        """Append one document per stream (token ids without the LM separator)."""
        self.add_many(*((np.asarray(doc).ravel(), np.array([np.size(doc)])) for doc in docs))

    def add_many(self, *columns: tuple[np.ndarray, np.ndarray]) -> None:
        """Append a run of documents at once: per stream, (flat token ids, length of each document).

        One write per file for the whole run: preprocessing hands over its chunks this way, which keeps
        the parent process (the only writer) off the critical path.
        """
        if len(columns) != len(self.streams):
            raise ValueError(f"add_many() takes one column per stream {self.streams}, got {len(columns)}")
        if len({len(lengths) for _, lengths in columns}) != 1:
            raise ValueError("add_many() needs the same number of documents in every stream")
        for stream, (ids, lengths) in zip(self.streams, columns):
            ids, lengths = np.asarray(ids).ravel(), np.asarray(lengths, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= self._tokenizer.vocab_size):
                raise ValueError(f"token id out of range [0, {self._tokenizer.vocab_size}) in {stream}: the "
                                 f"tokenizer's vocab_size does not match the ids it produces")
            tokens = ids.astype(self._dtype, copy=False)
            if self._sep is not None:
                tokens = np.insert(tokens, np.cumsum(lengths), self._sep[0])
                lengths = lengths + 1
            offsets = self._num_tokens[stream] + np.cumsum(lengths)
            bin_file, idx_file = self._files[stream]
            bin_file.write(tokens.tobytes())
            idx_file.write(offsets.astype(_OFFSET_DTYPE).tobytes())
            self._num_tokens[stream] += int(lengths.sum())
        self._num_docs += len(columns[0][1])

    def close(self, stats: dict[str, int] | None = None) -> ShardHeader:
        """Flush, fsync and rename the data files, then write the header (the commit point)."""
        content = hashlib.sha256()
        for stream, files in self._files.items():
            for handle, path in zip(files, _stream_paths(self.prefix, stream)):
                content.update(handle.close())
                os.replace(_tmp(path), path)
        fsync_dir(self.prefix.parent)  # the data renames are durable before the header can be
        header = ShardHeader(
            format_version=FORMAT_VERSION,
            tokenizer_kind=self._tokenizer.kind,
            vocab_fingerprint=self._tokenizer.fingerprint,
            vocab_size=int(self._tokenizer.vocab_size),
            dtype=token_dtype(self._tokenizer.vocab_size),
            streams=self.streams,
            num_docs=self._num_docs,
            num_tokens=dict(self._num_tokens),
            content_sha256=content.hexdigest(),
            stats=dict(stats or {}),
        )
        header_path = _header_path(self.prefix)
        with open(_tmp(header_path), "w", encoding="utf-8") as handle:
            handle.write(header.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(_tmp(header_path), header_path)
        fsync_dir(self.prefix.parent)
        return header

    def abort(self) -> None:
        """Give up on this shard: close and delete its temporary files (nothing becomes visible)."""
        for files in self._files.values():
            for handle in files:
                handle.discard()


def _map_file(path: Path, dtype: np.dtype, count: int) -> tuple[mmap.mmap | None, np.ndarray]:
    """Read-only map of a whole file as `count` items; an empty file gives an empty array."""
    if count == 0:
        return None, np.empty(0, dtype)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return mapping, np.frombuffer(mapping, dtype=dtype, count=count)


class Shard:
    """A complete shard opened read-only: header plus memory-mapped token and offset arrays.

    Arrays are views of read-only `mmap`s, so nothing is read until it is sliced and the process never
    holds more than the pages it touches; `release_pages()` drops those from this process's resident
    set (they stay in the page cache), which keeps RSS flat however much of a large corpus is read.
    """

    def __init__(self, prefix: Path, header: ShardHeader) -> None:
        self.prefix = Path(prefix)
        self.header = header
        self.fingerprint = header.content_sha256[:16]
        self._maps: list[mmap.mmap] = []
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        for stream in header.streams:
            bin_path, idx_path = _stream_paths(self.prefix, stream)
            token_dt = _TOKEN_DTYPES[header.dtype]
            expected = {bin_path: header.num_tokens[stream] * token_dt.itemsize,
                        idx_path: (header.num_docs + 1) * _OFFSET_DTYPE.itemsize}
            for path, size in expected.items():
                actual = path.stat().st_size if path.exists() else None
                if actual != size:
                    found = "missing" if actual is None else f"{actual} bytes"
                    raise DataError(f"{path}: {found}, header says {size} bytes (truncated or partly "
                                    f"copied shard): re-run preprocess or copy the shard again")
            token_map, self._tokens[stream] = _map_file(bin_path, token_dt, header.num_tokens[stream])
            offset_map, self._offsets[stream] = _map_file(idx_path, _OFFSET_DTYPE, header.num_docs + 1)
            self._maps += [m for m in (token_map, offset_map) if m is not None]
            offsets = self._offsets[stream]
            if offsets[0] != 0 or offsets[-1] != header.num_tokens[stream]:
                raise DataError(f"{idx_path}: offsets run from {offsets[0]} to {offsets[-1]}, expected 0 "
                                f"to {header.num_tokens[stream]}: re-run preprocess")
            decreasing = np.flatnonzero(np.diff(offsets) < 0)  # one sequential pass over 8 bytes per doc
            if decreasing.size:
                doc = int(decreasing[0])
                raise DataError(f"{idx_path}: offsets decrease at document {doc} ({offsets[doc]} then "
                                f"{offsets[doc + 1]}): the index is corrupt; re-run preprocess")

    @classmethod
    def open(cls, prefix: Path | str) -> "Shard":
        """Open `prefix` (with or without `.json`); a missing, truncated or corrupt shard is a DataError."""
        prefix = Path(str(prefix).removesuffix(".json"))
        header_path = _header_path(prefix)
        try:
            text = header_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{header_path}: shard header not found (missing or unfinished shard): "
                            f"point at a preprocessed directory or re-run preprocess") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{header_path}: cannot read shard header ({err})") from None
        return cls(prefix, ShardHeader.from_json(text, header_path))

    def __reduce__(self) -> tuple:
        # Pickling (e.g. into spawned DataLoader workers) re-opens the files instead of copying the data.
        return (Shard.open, (self.prefix,))

    def tokens(self, stream: str) -> np.ndarray:
        """All tokens of `stream`, memory-mapped (slice it; do not copy it whole)."""
        return self._tokens[stream]

    def offsets(self, stream: str) -> np.ndarray:
        """Document boundaries of `stream`: doc i is `tokens[offsets[i]:offsets[i + 1]]`."""
        return self._offsets[stream]

    def check_ids(self, stream: str, ids: np.ndarray, position: int) -> np.ndarray:
        """`ids` (read from `stream` at token `position`), or a DataError if one is not below the header's
        vocab_size: a shard from another vocab or damaged on disk, found as it is read."""
        if ids.size and int(ids.max()) >= self.header.vocab_size:
            where = position + int(np.argmax(ids >= self.header.vocab_size))
            raise DataError(f"{_stream_paths(self.prefix, stream)[0]}: token id {int(ids.max())} at position "
                            f"{where} is >= vocab_size {self.header.vocab_size}: the shard is corrupt; check it "
                            f"with `python -m data_pipeline inspect --verify` and re-run preprocess")
        return ids

    def verify(self) -> None:
        """Full check (reads every byte): the content digest in the header, and every token id in range.
        DataError naming the first problem."""
        content = hashlib.sha256()
        for stream in self.header.streams:
            for path in _stream_paths(self.prefix, stream):
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                content.update(digest.digest())
        if content.hexdigest() != self.header.content_sha256:
            raise DataError(f"{_header_path(self.prefix)}: the shard's .bin/.idx bytes do not match the digest in "
                            f"its header: the shard is corrupt; re-run preprocess")
        step = 1 << 24
        for stream in self.header.streams:
            tokens = self.tokens(stream)
            for start in range(0, tokens.size, step):
                self.check_ids(stream, tokens[start:start + step], start)

    def release_pages(self) -> None:
        """Drop this process's mapped pages (MADV_DONTNEED); later reads fault them back from cache."""
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapping in self._maps:
                mapping.madvise(mmap.MADV_DONTNEED)


def find_shards(path: str | Path) -> list[Path]:
    """Shard prefixes, sorted, from a dataset directory, a glob, or one prefix (`.json` optional)."""
    text = str(path)
    if Path(text).is_dir():
        headers = glob.glob(os.path.join(glob.escape(text), SHARD_GLOB))
    elif glob.has_magic(text):
        headers = glob.glob(text if text.endswith(".json") else text + ".json")
    else:
        headers = [h for h in (text if text.endswith(".json") else text + ".json",) if Path(h).is_file()]
    if not headers:
        raise DataError(f"{text}: no shards found (expected a directory of {SHARD_GLOB}, a glob or a "
                        f"shard prefix): run `python -m data_pipeline preprocess` first")
    return sorted(Path(h.removesuffix(".json")) for h in headers)
