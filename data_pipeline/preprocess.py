"""Raw text -> a directory of token shards, tokenized in N processes, byte-identical for any N.

The main process reads lines (text_files: files, directories, globs, .gz, with its checks and counts),
cuts them into chunks, and hands the chunks to worker processes; it writes the results back strictly in
input order through `ShardWriter`, starting a new shard when the next document would pass the token cap.
Chunking only decides which process tokenizes what, never what is written, so 1 and 16 processes give the
same bytes.

Corpora:
  - LM: one document per line, kept whole however long (the reader packs documents across blocks); the
    writer appends `sep_id` after each.
  - paired: `left<TAB>right` per line into streams "left"/"right", each side kept whole (the reader cuts
    sides to nctx). A line without exactly one tab, or with a blank side, is skipped and counted.
A line that tokenizes to nothing (only characters the normaliser drops) is skipped and counted too.
Every count lands in the log and in the `stats` of the shard that was being written when it was seen.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from data_pipeline.errors import UserError, describe_os_error
from data_pipeline.object_store import is_uri, join
from data_pipeline.remote_dataset import DatasetUpload
from data_pipeline.shards import LM_STREAMS, PAIRED_STREAMS, ShardHeader, ShardWriter, shard_prefix
from data_pipeline.text_files import MAX_WARNINGS, LineCounts, iter_lines
from data_pipeline.tokenizer import Tokenizer, TokenizerSpec, load_tokenizer

log = logging.getLogger(__name__)
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens: 128 MiB per uint16 shard
CHUNK_CHARS = 1 << 20  # text per task: large enough to amortise pickling, small enough to balance
# Counts of lines skipped here (text_files.LineCounts has the ones skipped while reading).
NOT_ONE_TAB, EMPTY_SIDE, NO_TOKENS = "paired_not_one_tab_lines", "paired_empty_side_lines", "empty_after_tokenization"


def default_processes() -> int:
    """The CPUs this process may run on (container-aware where the OS says so)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class _Chunk:
    """Lines to tokenize (LM texts, or (left, right) pairs) and the counts gathered while reading them."""

    paired: bool
    docs: list[str] | list[tuple[str, str]] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    chars: int = 0

    def add_counts(self, now: dict[str, int], before: dict[str, int]) -> None:
        self.stats.update({key: now[key] - before[key] for key in now})


@dataclass
class _Encoded:
    """One chunk's documents as flat token arrays + lengths per stream (cheap to send between processes)."""

    streams: list[tuple[np.ndarray, np.ndarray]]
    stats: Counter

    @property
    def num_docs(self) -> int:
        return len(self.streams[0][1])

    def docs(self) -> Iterator[tuple[np.ndarray, ...]]:
        """One tuple of token arrays (one per stream) per document, in order."""
        per_stream = []
        for tokens, lengths in self.streams:
            ends = np.cumsum(lengths).tolist()
            per_stream.append([tokens[end - n:end] for end, n in zip(ends, lengths.tolist())])
        return zip(*per_stream)

    def run(self, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Documents [start, stop) as (flat tokens, lengths) per stream: what ShardWriter.add_many takes."""
        run = []
        for tokens, lengths in self.streams:
            begin = int(lengths[:start].sum())
            run.append((tokens[begin:begin + int(lengths[start:stop].sum())], lengths[start:stop]))
        return run


def _flatten(docs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    tokens = np.fromiter(chain.from_iterable(docs), dtype=np.uint32, count=int(lengths.sum()))
    return tokens, lengths


def encode_chunk(tokenizer: Tokenizer, chunk: _Chunk) -> _Encoded:
    """Tokenize one chunk; documents (or pairs) with an empty side after tokenization are counted out."""
    stats = Counter(chunk.stats)
    if chunk.paired:
        lefts = tokenizer.encode_batch([left for left, _ in chunk.docs])
        rights = tokenizer.encode_batch([right for _, right in chunk.docs])
        kept = [(left, right) for left, right in zip(lefts, rights) if left and right]
        columns = [[left for left, _ in kept], [right for _, right in kept]]
    else:
        kept = [doc for doc in tokenizer.encode_batch(chunk.docs) if doc]
        columns = [kept]
    stats[NO_TOKENS] += len(chunk.docs) - len(kept)
    return _Encoded([_flatten(column) for column in columns], stats)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    # One HF thread per worker: the processes already use every core.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer


def _encode_in_worker(chunk: _Chunk) -> _Encoded:
    return encode_chunk(_worker_tokenizer, chunk)


def _encoded(chunks: Iterator[_Chunk], tokenizer: Tokenizer, processes: int) -> Iterator[_Encoded]:
    """Encoded chunks in input order; at most 2 per process in flight, so memory stays bounded."""
    if processes == 1:
        yield from (encode_chunk(tokenizer, chunk) for chunk in chunks)
        return
    # spawn: never fork a process that may hold threads (HF, tqdm); tokenizers pickle as their spec.
    # An executor (unlike multiprocessing.Pool) fails fast if a worker dies instead of respawning it.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, context, _init_worker, (tokenizer,)) as pool:
        pending: deque[Future] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_encode_in_worker, chunk))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def stat_keys(paired: bool) -> list[str]:
    """The counts every shard header's `stats` holds (zeros included, so all headers look alike)."""
    return [*LineCounts().as_dict(), NO_TOKENS] + ([NOT_ONE_TAB, EMPTY_SIDE] if paired else [])


def _paired_fields(text: str) -> tuple[str, str] | str:
    """(left, right), or the name of the count the line goes to."""
    fields = text.split("\t")
    if len(fields) != 2:
        return NOT_ONE_TAB
    if not fields[0].strip() or not fields[1].strip():
        return EMPTY_SIDE
    return fields[0], fields[1]


def read_chunks(inputs: Sequence[str | Path], paired: bool, errors: str,
            chunk_chars: int = CHUNK_CHARS) -> Iterator[_Chunk]:
    """Lines cut into chunks of about `chunk_chars`, each carrying the counts gathered since the last one."""
    counts = LineCounts()
    reported = counts.as_dict()
    skipped: Counter = Counter()  # over the whole run, to log only the first few examples of each
    chunk = _Chunk(paired)
    for line in iter_lines(inputs, counts, errors):
        doc = _paired_fields(line.text) if paired else line.text
        if paired and isinstance(doc, str):
            chunk.stats[doc] += 1
            skipped[doc] += 1
            if skipped[doc] <= MAX_WARNINGS:
                log.warning("%s:%d: skipped, %s", line.path, line.line_no, doc.replace("_", " "))
            continue
        chunk.docs.append(doc)
        chunk.chars += len(line.text)
        if chunk.chars >= chunk_chars:
            now = counts.as_dict()
            chunk.add_counts(now, reported)
            reported = now
            yield chunk
            chunk = _Chunk(paired)
    chunk.add_counts(counts.as_dict(), reported)
    yield chunk


class _ShardSink:
    """Writes documents in order into shard-00000, shard-00001, ... of `directory`, closing each at the cap."""

    def __init__(self, directory: Path, tokenizer: Tokenizer, paired: bool, max_tokens: int,
                 on_close: Callable[[Path, ShardHeader], None] | None = None) -> None:
        self._directory = directory
        self._on_close = on_close
        self._tokenizer = tokenizer
        self._streams = PAIRED_STREAMS if paired else LM_STREAMS
        self._extra = 0 if paired else 1  # the separator the writer appends to an LM document
        self._max_tokens = max_tokens
        self._writer: ShardWriter | None = None
        self._tokens = 0
        self._zero_stats = dict.fromkeys(stat_keys(paired), 0)
        self._stats = Counter(self._zero_stats)
        self.shards: list[Path] = []
        self.totals: Counter = Counter()

    def write(self, encoded: _Encoded) -> None:
        """The chunk's counts, then its documents, in order."""
        self._stats.update(encoded.stats)
        self.totals.update(encoded.stats)
        sizes = sum(lengths for _, lengths in encoded.streams) + len(encoded.streams) * self._extra
        start = 0
        while start < len(sizes):  # runs of documents that fit the open shard; a new shard takes any doc
            if self._writer is not None and self._tokens + sizes[start] > self._max_tokens:
                self._close_shard()
            if self._writer is None:
                self.shards.append(shard_prefix(self._directory, len(self.shards)))
                self._writer = ShardWriter(self.shards[-1], self._streams, self._tokenizer)
            filled = np.cumsum(sizes[start:])
            stop = start + max(1, int(np.searchsorted(filled, self._max_tokens - self._tokens, side="right")))
            self._writer.add_many(*encoded.run(start, stop))
            self._tokens += int(filled[stop - start - 1])
            start = stop
        self.totals["docs"] += encoded.num_docs
        self.totals["tokens"] += int(sizes.sum())

    def _close_shard(self) -> None:
        header = self._writer.close(stats={key: int(value) for key, value in self._stats.items()})
        if self._on_close is not None:
            self._on_close(self._writer.prefix, header)
        self._writer, self._tokens, self._stats = None, 0, Counter(self._zero_stats)

    def close(self) -> None:
        if self._writer is not None:
            self._close_shard()


@dataclass(frozen=True)
class PreprocessResult:
    """What a run wrote: shard prefixes and totals (docs, tokens on disk with separators, every count)."""

    out_dir: Path | str
    shards: list[Path | str]
    totals: dict[str, int]


def _prepare_output(out_dir: Path) -> Path:
    """A fresh staging directory beside `out_dir`; renamed into place only when every shard is written."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not empty: choose a new output directory or "
                        f"delete it")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    return staging


def preprocess(inputs: Sequence[str | Path], out_dir: str | Path, spec: TokenizerSpec, *, paired: bool = False,
               processes: int | None = None, max_shard_tokens: int = DEFAULT_SHARD_TOKENS,
               errors: str = "strict", progress: bool | None = None,
               chunk_chars: int = CHUNK_CHARS) -> PreprocessResult:
    """Tokenize text files into shards in `out_dir` (see the module doc for the rules).

    An object-store URI as `out_dir` uploads each shard as it closes (from a local temporary directory),
    then the tokenizer's files under their own names, and publishes the dataset manifest last (see
    remote_dataset.py). `chunk_chars` only sets how much text each task carries (a tuning knob: the output is the same).
    """
    processes = default_processes() if processes is None else processes
    if processes < 1:
        raise UserError(f"processes={processes}: use 1 or more")
    if max_shard_tokens < 1:
        raise UserError(f"max_shard_tokens={max_shard_tokens}: use a positive number of tokens per shard")
    tokenizer = load_tokenizer(spec)
    upload = DatasetUpload(str(out_dir)) if is_uri(out_dir) else None
    out_dir = str(out_dir).rstrip("/") if upload else Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix="preprocess-")) if upload else _prepare_output(out_dir)
    try:
        sink = _ShardSink(staging, tokenizer, paired, max_shard_tokens, on_close=upload.add if upload else None)
        # tqdm's default (progress=None) shows the bar only on a terminal.
        with tqdm(unit=" docs", unit_scale=True, disable=None if progress is None else not progress) as bar:
            for encoded in _encoded(read_chunks(inputs, paired, errors, chunk_chars), tokenizer, processes):
                sink.write(encoded)
                bar.update(encoded.num_docs)
        sink.close()
        if not sink.shards:
            raise UserError(f"no documents to write: every line was skipped ({dict(sink.totals)}); see the "
                            f"warnings above")
        if upload:
            # The vocab beside the shards, so that a pod can read both from the store
            # (data.tokenizer.vocab=PREFIX/vocab.txt): nothing of the dataset needs a local path.
            for source, local in ((spec.vocab, tokenizer.spec.vocab), (spec.codes, tokenizer.spec.codes)):
                if source:
                    upload.add_file(Path(local), str(source).rstrip("/").rsplit("/", 1)[-1])
            upload.publish()
            shutil.rmtree(staging)
        else:
            if out_dir.exists():
                out_dir.rmdir()
            os.replace(staging, out_dir)
    except OSError as err:  # disk full, read-only, permissions: one line, and no partial shard set
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(describe_os_error(err, "use", err.filename or out_dir)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    totals = {key: int(value) for key, value in sorted(sink.totals.items())}
    log.info("%s: %d shard(s), %s", out_dir, len(sink.shards), totals)
    shards = [join(out_dir, p.name) if upload else out_dir / p.name for p in sink.shards]
    return PreprocessResult(out_dir, shards, totals)
