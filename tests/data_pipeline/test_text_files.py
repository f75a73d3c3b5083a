"""Text input: deterministic expansion of inputs, and one rule (error or counted repair) per bad line."""
from __future__ import annotations

import gzip
import logging

import pytest

from data_pipeline.errors import DataError, UserError
from data_pipeline.text_files import LineCounts, expand_inputs, iter_lines
from tests.data_pipeline.conftest import one_line_error, write


def read(inputs, errors="strict"):
    counts = LineCounts()
    texts = [line.text for line in iter_lines(inputs, counts, errors)]
    return texts, counts


def test_directories_are_walked_sorted_without_hidden_files(tmp_path):
    for name in ("b/2.txt", "b/10.txt", "a.txt", ".hidden/x.txt", "b/.swp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / name, "x\n")
    assert [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path])] == ["a.txt", "b/10.txt", "b/2.txt"]


def test_inputs_keep_their_order_and_a_file_named_twice_is_read_once(tmp_path):
    a, b = write(tmp_path / "a.txt", "a\n"), write(tmp_path / "b.txt", "b\n")
    assert expand_inputs([b, str(tmp_path / "*.txt"), a]) == [b, a]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        expand_inputs([tmp_path / "missing.txt"])
    assert "missing.txt: no such file or directory" in one_line_error(excinfo)


def test_glob_without_match_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no files match"):
        expand_inputs([str(tmp_path / "*.txt")])


def test_no_inputs_is_a_user_error():
    with pytest.raises(UserError, match="no input given"):
        expand_inputs([])


def test_gzip_files_are_read_like_plain_ones(tmp_path):
    plain = write(tmp_path / "a.txt", "one\ntwo\n")
    packed = write(tmp_path / "b.txt.gz", gzip.compress(b"one\ntwo\n"))
    assert read([plain])[0] == read([packed])[0] == ["one", "two"]


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress(b"one\n" * 1000)[:-20])
    with pytest.raises(DataError) as excinfo:
        read([path])
    assert "corrupt or truncated gzip" in one_line_error(excinfo)


def test_blank_lines_are_skipped_and_counted(tmp_path):
    texts, counts = read([write(tmp_path / "a.txt", "one\n\n  \t\ntwo\n")])
    assert texts == ["one", "two"] and (counts.lines_read, counts.blank_lines_skipped) == (4, 2)


def test_crlf_and_byte_order_mark_are_not_text(tmp_path):
    texts, counts = read([write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\r\n")])
    assert texts == ["one", "two"] and counts.as_dict() == LineCounts(files=1, lines_read=2).as_dict()


def test_nul_bytes_are_stripped_counted_and_logged(tmp_path, caplog):
    path = write(tmp_path / "a.txt", b"o\x00ne\n\x00\ntwo\n")
    with caplog.at_level(logging.WARNING):
        texts, counts = read([path])
    assert texts == ["one", "two"]
    assert (counts.nul_lines_stripped, counts.blank_lines_skipped) == (2, 1)
    assert f"{path}:1: NUL bytes stripped" in caplog.text


def test_invalid_utf8_is_a_data_error_with_file_line_and_offset(tmp_path):
    path = write(tmp_path / "a.txt", b"fine\nbad \xff here\n")
    with pytest.raises(DataError) as excinfo:
        read([path])
    assert one_line_error(excinfo).startswith(f"{path}:2: invalid UTF-8 byte 0xff at byte offset 9 (column 5)")
    assert "--encoding-errors replace" in str(excinfo.value)


def test_invalid_utf8_with_replace_is_repaired_counted_and_logged(tmp_path, caplog):
    path = write(tmp_path / "a.txt", b"fine\nbad \xff here\n")
    with caplog.at_level(logging.WARNING):
        texts, counts = read([path], errors="replace")
    assert texts == ["fine", "bad \ufffd here"] and counts.invalid_utf8_lines_replaced == 1
    assert f"{path}:2: invalid UTF-8 replaced" in caplog.text


def test_empty_file_among_others_is_counted_and_logged(tmp_path, caplog):
    empty = write(tmp_path / "a.txt", "")
    with caplog.at_level(logging.WARNING):
        texts, counts = read([empty, write(tmp_path / "b.txt", "text\n")])
    assert texts == ["text"] and counts.empty_files == 1 and f"{empty}: empty file" in caplog.text


def test_input_with_no_text_at_all_is_a_data_error(tmp_path):
    files = [write(tmp_path / "a.txt", ""), write(tmp_path / "b.txt", "\n \n")]
    with pytest.raises(DataError) as excinfo:
        read(files)
    assert "no text in 2 input file(s)" in one_line_error(excinfo)


def test_unknown_encoding_errors_mode_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="encoding errors='ignore'"):
        read([write(tmp_path / "a.txt", "x\n")], errors="ignore")


def test_lines_carry_file_and_line_number(tmp_path):
    path = write(tmp_path / "a.txt", "one\n\ntwo\n")
    assert [(line.path, line.line_no) for line in iter_lines([path])] == [(path, 1), (path, 3)]
