"""The built-in sample data: a real-text corpus from Python's own standard library, and its shards.

This project downloads nothing, so the sample corpus is the English prose every Python install ships:
the docstrings and comment blocks of the standard library's modules, and the language reference that
`pydoc_data/topics.py` carries as strings. Sources are parsed with `ast`, never imported.
From CPython 3.11: 3.1 MB of documents and 2.8 MB of pairs; the same Python always gives the same bytes.

Rules:
  - files: every `*.py` under the stdlib directory, sorted by relative path, without test suites and
    installed packages (EXCLUDED_DIRS); within a file, documents in source order;
  - document: a docstring, a block of consecutive full-line comments, or a reference topic; paragraphs
    are separated by blank lines (a bare "#" line in a comment block); all whitespace, newlines included,
    collapses to single spaces, so a document is one line. Documents of fewer than MIN_WORDS words, and
    repeats of an earlier document, are dropped;
  - held out: a document is in valid.txt iff the sha256 of its text is 0 mod VALID_ONE_IN (about 2%):
    independent of order, so adding files never moves a document between splits;
  - paired: `paragraph<TAB>next paragraph` for consecutive paragraphs of one document (both at least
    PAIR_MIN_WORDS words), a context -> continuation task; pairs follow their document's split.
"""
from __future__ import annotations

import ast
import fcntl
import hashlib
import io
import logging
import re
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from data_pipeline.errors import DataError
from data_pipeline.preprocess import preprocess
from data_pipeline.shards import SHARD_GLOB
from data_pipeline.vocab_learning import learn_vocab, vocab_files
from data_pipeline.atomic_files import atomic_write_bytes

log = logging.getLogger(__name__)
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
REFERENCE_MODULE = "pydoc_data/topics.py"  # the language reference, as a dict of strings
MIN_WORDS = 5
PAIR_MIN_WORDS = 3
VALID_ONE_IN = 50
DEFAULT_VOCAB_SIZE = 8000
SHARD_SETS = {"train": False, "valid": False, "paired_train": True, "paired_valid": True}  # name: paired?
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class SampleCorpus:
    """The four files of a sample corpus directory."""

    train: Path
    valid: Path
    paired_train: Path
    paired_valid: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> "SampleCorpus":
        d = Path(directory)
        return cls(d / "train.txt", d / "valid.txt", d / "paired_train.tsv", d / "paired_valid.tsv")

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.train, self.valid, self.paired_train, self.paired_valid))


def stdlib_dir() -> Path:
    """The running Python's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """The `.py` files the corpus is made from, sorted by their path relative to `root`."""
    files = (p for p in root.rglob("*.py") if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1]))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def _comment_blocks(lines: list[str], in_strings: set[int]) -> Iterator[tuple[int, str]]:
    """Runs of full-line comments as text (a bare "#" is a paragraph break); trailing comments skipped."""
    block: list[str] = []
    start = 0
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if text.startswith("#") and not text.startswith("#!") and line_no not in in_strings:
            if not block:
                start = line_no
            block.append(text.lstrip("#").strip())
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


def file_documents(path: Path, root: Path) -> list[list[str]]:
    """The documents of one source file, in source order, each a list of paragraphs."""
    source = path.read_bytes()
    try:
        tree = ast.parse(source)
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        # Universal newlines only (not str.splitlines, which also breaks at form feeds), as ast counts.
        lines = io.StringIO(source.decode(encoding), newline=None).read().split("\n")
    except (SyntaxError, ValueError, UnicodeDecodeError):
        log.info("%s: not parseable by this Python, skipped", path)
        return []
    is_reference = path.relative_to(root).as_posix() == REFERENCE_MODULE
    found: list[tuple[int, str]] = []
    in_strings: set[int] = set()  # lines inside multi-line literals, where "#" is not a comment
    for node in ast.walk(tree):
        if isinstance(node, _DOCUMENTED) and (text := ast.get_docstring(node, clean=True)):
            found.append((node.body[0].lineno, text))
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            in_strings.update(range(node.lineno + 1, node.end_lineno + 1))
            if is_reference and isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((node.lineno, node.value))
    found += _comment_blocks(lines, in_strings)
    return [_paragraphs(text) for _, text in sorted(found, key=lambda lt: lt[0])]


def is_held_out(document: str) -> bool:
    """The validation rule: a pure function of the text (see the module doc)."""
    return int.from_bytes(hashlib.sha256(document.encode()).digest()[:8], "little") % VALID_ONE_IN == 0


def build_sample_corpus(out_dir: str | Path, root: Path | None = None) -> SampleCorpus:
    """Write train.txt, valid.txt, paired_train.tsv, paired_valid.tsv into `out_dir` (from `root`)."""
    root = stdlib_dir() if root is None else Path(root)
    corpus = SampleCorpus.in_dir(out_dir)
    corpus.train.parent.mkdir(parents=True, exist_ok=True)  # an unusable out_dir fails before the scan
    seen: set[str] = set()
    lines: dict[Path, list[str]] = {p: [] for p in (corpus.train, corpus.valid, corpus.paired_train,
                                                    corpus.paired_valid)}
    files = source_files(root)
    for path in files:
        for paragraphs in file_documents(path, root):
            document = " ".join(paragraphs)
            if len(document.split()) < MIN_WORDS or document in seen:
                continue
            seen.add(document)
            held_out = is_held_out(document)
            lines[corpus.valid if held_out else corpus.train].append(document)
            pairs = lines[corpus.paired_valid if held_out else corpus.paired_train]
            pairs += [f"{left}\t{right}" for left, right in zip(paragraphs, paragraphs[1:])
                      if len(left.split()) >= PAIR_MIN_WORDS and len(right.split()) >= PAIR_MIN_WORDS]
    if not seen:
        raise DataError(f"{root}: no Python sources with docstrings found: point at a Python standard library")
    sizes = {}
    for path, content in lines.items():
        data = "".join(f"{line}\n" for line in content).encode()
        atomic_write_bytes(path, data)
        sizes[path.name] = f"{len(content)} lines, {len(data) / 1e6:.2f} MB"
    log.info("sample corpus from %d files of %s: %s", len(files), root, sizes)
    return corpus


def prepare_sample_data(out_dir: str | Path, kind: str = "wordpiece", vocab_size: int = DEFAULT_VOCAB_SIZE,
                        processes: int | None = None) -> dict[str, Path]:
    """Sample corpus -> vocab -> LM and paired train/valid shards under `out_dir`; skips finished steps.

    Layout: `corpus/` (shared by all tokenizers), then `KIND-VOCABSIZE/` with the vocab file(s) and the
    shard directories `train`, `valid`, `paired_train`, `paired_valid`. Every step writes atomically, so
    an existing output is a complete one and an interrupted run resumes where it stopped.
    Returns paths by name: `corpus` (directory), `train_text`, `valid_text`, `paired_train_text`,
    `paired_valid_text`, `vocab` and (BPE) `codes` (files), `train`, `valid`, `paired_train`,
    `paired_valid` (shard directories).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Pods of one job may share out_dir on a volume: the first to get the lock builds, the rest find it done.
    with open(out_dir / ".prepare.lock", "a") as lock:  # "a": re-runs leave the tree untouched
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare_locked(out_dir, kind, vocab_size, processes)


def sample_data_paths(out_dir: str | Path, kind: str = "wordpiece",
                      vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, Path]:
    """Where `prepare_sample_data` puts each of its outputs (see there), whether or not they exist yet."""
    corpus = SampleCorpus.in_dir(Path(out_dir) / "corpus")
    tokenizer_dir = Path(out_dir) / f"{kind}-{vocab_size}"
    spec = vocab_files(kind, tokenizer_dir)
    paths = {"corpus": corpus.train.parent, "train_text": corpus.train, "valid_text": corpus.valid,
             "paired_train_text": corpus.paired_train, "paired_valid_text": corpus.paired_valid,
             "vocab": Path(spec.vocab)}
    if spec.codes:
        paths["codes"] = Path(spec.codes)
    for name in SHARD_SETS:
        paths[name] = tokenizer_dir / name
    return paths


def find_sample_data(out_dir: str | Path, kind: str = "wordpiece",
                     vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, Path] | None:
    """The paths of a finished `prepare_sample_data` tree, or None; only reads (no lock), so that a
    training pod can use the data on a read-only volume that a data Job prepared."""
    paths = sample_data_paths(out_dir, kind, vocab_size)
    files = [paths[key] for key in ("train_text", "valid_text", "paired_train_text", "paired_valid_text",
                                    "vocab", "codes") if key in paths]
    finished = all(p.is_file() for p in files) and all(any(paths[n].glob(SHARD_GLOB)) for n in SHARD_SETS)
    return paths if finished else None


def _prepare_locked(out_dir: Path, kind: str, vocab_size: int, processes: int | None) -> dict[str, Path]:
    paths = sample_data_paths(out_dir, kind, vocab_size)
    corpus = SampleCorpus.in_dir(paths["corpus"])
    if corpus.exists():
        log.info("%s: sample corpus exists, kept", corpus.train.parent)
    else:
        build_sample_corpus(corpus.train.parent)
    tokenizer_dir = paths["vocab"].parent
    vocab = [paths[key] for key in ("vocab", "codes") if key in paths]
    if all(p.is_file() for p in vocab):
        log.info("%s: vocab exists, kept", tokenizer_dir)
    else:
        learn_vocab(kind, [corpus.train], tokenizer_dir, vocab_size)
    spec = vocab_files(kind, tokenizer_dir)
    for name, paired in SHARD_SETS.items():
        if any(paths[name].glob(SHARD_GLOB)):  # preprocess renames a finished directory into place
            log.info("%s: shards exist, kept", paths[name])
        else:
            preprocess([paths[f"{name}_text"]], paths[name], spec, paired=paired, processes=processes)
    return paths
