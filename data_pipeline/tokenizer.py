"""One tokenizer interface over WordPiece and fastBPE, so nothing downstream cares which one it has.

`load_tokenizer(TokenizerSpec(...))` is the only way in. Both implementations check their files in Python
and raise a DataError naming the file and line, pickle as their spec (so DataLoader workers and
preprocessing processes rebuild them from the files), and add no special tokens in `encode`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from data_pipeline.errors import DataError, UserError
from data_pipeline.object_store import is_uri, local_copy

TOKENIZER_KINDS = ("wordpiece", "bpe")


@dataclass(frozen=True)
class TokenizerSpec:
    """Where a tokenizer's files are: everything needed to rebuild it in another process."""

    kind: str  # "wordpiece" | "bpe"
    vocab: str  # vocab.txt (wordpiece) or fastBPE vocab file (bpe)
    codes: str | None = None  # fastBPE codes (bpe only)
    lowercase: bool = True  # wordpiece only


class Tokenizer(Protocol):
    """What trainers, readers and preprocessing use; see docs/ARCHITECTURE.md."""

    kind: str
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: frozenset[int]
    fingerprint: str
    spec: TokenizerSpec

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def word_starts(self, ids: np.ndarray) -> np.ndarray: ...


def load_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """Build the tokenizer a spec describes; a bad kind or missing file is a UserError.

    Files given as object-store URIs (s3://bucket/vocab.txt) are fetched first, and the tokenizer's
    `spec` names the local copies (so DataLoader workers and exports read those)."""
    spec = _with_local_files(spec)
    if spec.kind == "wordpiece":
        from data_pipeline.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(spec)
    if spec.kind == "bpe":
        from data_pipeline.bpe import BPETokenizer

        return BPETokenizer(spec)
    raise UserError(f"unknown tokenizer kind {spec.kind!r}: use one of {', '.join(TOKENIZER_KINDS)}")


def _with_local_files(spec: TokenizerSpec) -> TokenizerSpec:
    if not is_uri(spec.vocab) and not (spec.codes and is_uri(spec.codes)):
        return spec
    vocab = str(local_copy(spec.vocab)) if is_uri(spec.vocab) else spec.vocab
    codes = str(local_copy(spec.codes)) if spec.codes and is_uri(spec.codes) else spec.codes
    return replace(spec, vocab=vocab, codes=codes)


def files_fingerprint(*paths: str | Path, settings: str = "") -> str:
    """sha256 (16 hex chars) of the files' contents, in order, and of `settings` (see `settings_tag`):
    equal fingerprints give equal token ids."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    if settings:
        digest.update(settings.encode())
    return digest.hexdigest()[:16]


def settings_tag(kind: str, lowercase: bool) -> str:
    """The tokenizer settings that change token ids beyond its files, for `files_fingerprint`: a cased
    WordPiece over the same vocab.txt is another tokenizer. The default (uncased) adds nothing, so the
    fingerprints of existing shards and exports stay valid."""
    return "cased" if kind == "wordpiece" and not lowercase else ""


def read_vocab_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 vocab/codes file without line ends (LF or CRLF); unreadable is a DataError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found: check the path") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read {what} file ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: {what} file is not UTF-8 (byte offset {err.start}): "
                        f"re-save it as UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def token_flags(tokens: Sequence[str], predicate: Callable[[str], bool]) -> np.ndarray:
    """A bool lookup table over the vocab, indexed by token id (what word_starts vectorises on)."""
    return np.fromiter((bool(predicate(t)) for t in tokens), dtype=bool, count=len(tokens))
