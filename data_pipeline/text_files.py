"""Raw text input: expand files, directories, globs and `.gz` into lines, checking them on the way.

Order is deterministic: inputs in the order given; within a directory or glob, paths sorted; a file named
twice is read once. Directories are walked recursively and hidden entries (names starting with ".") are
skipped. Lines are split on "\\n" (a trailing "\\r" is dropped) and each is handled by one rule, counted in
`LineCounts` (and the first few repairs logged with file:line), so nothing is dropped silently:
  - blank (whitespace only): skipped, counted;
  - NUL bytes: stripped (they carry no text and would truncate words in fastBPE), line counted;
  - invalid UTF-8: a DataError naming file:line and byte offset, or with errors="replace" the bad bytes
    become U+FFFD and the line is counted;
  - empty file: counted and logged; if every input is empty or blank, a DataError.
A UTF-8 byte-order mark at the start of a file is encoding metadata and is dropped without counting.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple, Sequence

from data_pipeline.errors import DataError, UserError

log = logging.getLogger(__name__)
ENCODING_ERRORS = ("strict", "replace")
MAX_WARNINGS = 5  # repaired or skipped lines logged by file:line per kind; all of them are counted


@dataclass
class LineCounts:
    """What reading did to the input: every skipped or repaired line is counted here."""

    files: int = 0
    lines_read: int = 0
    blank_lines_skipped: int = 0
    nul_lines_stripped: int = 0
    invalid_utf8_lines_replaced: int = 0
    empty_files: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class TextLine(NamedTuple):
    """One non-blank line and where it came from (1-based line number), for error messages."""

    path: Path
    line_no: int
    text: str


def _directory_files(directory: Path) -> list[Path]:
    """Every non-hidden regular file below `directory`. A subdirectory that cannot be listed is a DataError
    (skipping it would drop its files silently); hidden and non-regular entries are counted in a warning."""
    def unreadable(err: OSError) -> None:
        raise DataError(f"{err.filename}: cannot list this input directory ({err.strerror}): fix its "
                        "permissions or leave it out of the inputs")

    files: list[Path] = []
    skipped = 0
    for root, dirs, names in os.walk(directory, onerror=unreadable):
        hidden = [name for name in dirs if name.startswith(".")]
        skipped += len(hidden)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            path = Path(root) / name
            if name.startswith(".") or not path.is_file():
                skipped += 1
            else:
                files.append(path)
    if skipped:
        log.warning("%s: skipped %d hidden or non-regular entr%s", directory, skipped, "y" if skipped == 1 else "ies")
    return sorted(files, key=lambda p: p.relative_to(directory).as_posix())


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The files to read, in a deterministic order; a missing path or a glob with no match is a DataError."""
    if not inputs:
        raise UserError("no input given: pass text files, directories or quoted globs")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _directory_files(path)
            if not found:
                raise DataError(f"{path}: directory contains no (non-hidden) files")
        elif path.is_file():
            found = [path]
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            found = [f for m in matches for f in (_directory_files(Path(m)) if Path(m).is_dir() else [Path(m)])]
            if not found:
                raise DataError(f"no files match {str(item)!r}: check the pattern (quote it so the shell does "
                                f"not expand it)")
        else:
            raise DataError(f"{path}: no such file or directory")
        files.extend(found)
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def _open(path: Path) -> BinaryIO:
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _decode(raw: bytes, path: Path, line_no: int, offset: int, errors: str, counts: LineCounts) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors == "strict":
            where = "decompressed byte offset" if path.suffix == ".gz" else "byte offset"
            raise DataError(f"{path}:{line_no}: invalid UTF-8 byte 0x{raw[err.start]:02x} at {where} "
                            f"{offset + err.start} (column {err.start + 1}): convert the file to UTF-8, or "
                            f"repair such lines with data.text_errors=replace (trainers) or --encoding-errors "
                            f"replace (python -m data_pipeline)") from None
        counts.invalid_utf8_lines_replaced += 1
        if counts.invalid_utf8_lines_replaced <= MAX_WARNINGS:
            log.warning("%s:%d: invalid UTF-8 replaced by U+FFFD", path, line_no)
        return raw.decode("utf-8", errors="replace")


def _file_lines(path: Path, errors: str, counts: LineCounts) -> Iterator[TextLine]:
    line_no = offset = 0
    with _open(path) as handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                line_offset, offset = offset, offset + len(raw)
                counts.lines_read += 1
                raw = raw.removesuffix(b"\n").removesuffix(b"\r")
                text = _decode(raw, path, line_no, line_offset, errors, counts)
                if "\0" in text:
                    text = text.replace("\0", "")
                    counts.nul_lines_stripped += 1
                    if counts.nul_lines_stripped <= MAX_WARNINGS:
                        log.warning("%s:%d: NUL bytes stripped", path, line_no)
                if line_no == 1:
                    text = text.removeprefix("\ufeff")
                if text.isspace() or not text:
                    counts.blank_lines_skipped += 1
                    continue
                yield TextLine(path, line_no, text)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip data after line {line_no} ({err}): "
                            f"re-create the file") from None
        except OSError as err:
            raise DataError(f"{path}: read failed after line {line_no} ({err.strerror or err})") from None
    if line_no == 0:
        counts.empty_files += 1
        log.warning("%s: empty file, skipped", path)


def iter_lines(inputs: Sequence[str | Path], counts: LineCounts | None = None,
               errors: str = "strict") -> Iterator[TextLine]:
    """Non-blank lines of all inputs, in order, counting what was skipped or repaired into `counts`."""
    if errors not in ENCODING_ERRORS:
        raise UserError(f"encoding errors={errors!r}: use one of {', '.join(ENCODING_ERRORS)}")
    counts = LineCounts() if counts is None else counts
    files = expand_inputs(inputs)
    yielded = False
    for path in files:
        counts.files += 1
        for line in _file_lines(path, errors, counts):
            yielded = True
            yield line
    if not yielded:
        shown = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(f"no text in {len(files)} input file(s) ({shown}): every file is empty or blank")
