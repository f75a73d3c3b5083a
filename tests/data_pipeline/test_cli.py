"""`python -m data_pipeline`: every command teaches with --help, errors are one line, prepare-sample works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.__main__ import main
from data_pipeline.shards import Shard, find_shards
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer

COMMANDS = ["sample-corpus", "learn-vocab", "preprocess", "inspect", "prepare-sample"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--help"])
    out = capsys.readouterr().out
    assert excinfo.value.code == 0 and all(command in out for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_a_description_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert excinfo.value.code == 0
    assert f"example:\n  python -m data_pipeline {command}" in out and len(out.split("\n\n")) >= 3


def test_user_error_exits_2_with_one_error_line_and_no_traceback(tmp_path, wordpiece_spec):
    run = subprocess.run([sys.executable, "-m", "data_pipeline", "preprocess", str(tmp_path / "missing.txt"),
                          "--out", str(tmp_path / "out"), "--tokenizer", "wordpiece", "--vocab",
                          wordpiece_spec.vocab], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "missing.txt: no such file or directory" in run.stderr


def test_bad_argument_exits_2_with_usage(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["learn-vocab", "x.txt", "--vocab-size", "-5", "--out", "v"])
    assert excinfo.value.code == 2 and "not a positive integer" in capsys.readouterr().err


def test_learn_vocab_then_preprocess_then_inspect(small_corpus, tmp_path, capsys):
    assert main(["learn-vocab", str(small_corpus.train), "--tokenizer", "bpe", "--vocab-size", "500",
                 "--out", str(tmp_path / "vocab")]) == 0
    tokenizer = ["--tokenizer", "bpe", "--vocab", str(tmp_path / "vocab/vocab"),
                 "--codes", str(tmp_path / "vocab/codes")]
    assert main(["preprocess", str(small_corpus.valid), "--out", str(tmp_path / "shards"), "--processes", "1",
                 *tokenizer]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "shards"), "--vocab", str(tmp_path / "vocab/vocab"),
                 "--codes", str(tmp_path / "vocab/codes"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    tokens = Shard.open(find_shards(tmp_path / "shards")[0]).tokens("text")
    most_frequent = int(np.bincount(tokens).argmax())
    vocab = load_tokenizer(TokenizerSpec("bpe", str(tmp_path / "vocab/vocab"), str(tmp_path / "vocab/codes")))
    assert '"tokenizer_kind": "bpe"' in out
    assert out.split("top 3 tokens:\n")[1].split("\n")[0].endswith(repr(vocab.decode([most_frequent])))
    first_doc = small_corpus.valid.read_text().splitlines()[0]
    assert f"doc 0 text: {first_doc.split()[0]}" in out and out.rstrip().endswith("<EOS>")


def test_inspect_with_another_vocab_is_an_error(small_corpus, wordpiece_spec, tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text(open(wordpiece_spec.vocab).read() + "extra\n")
    main(["preprocess", str(small_corpus.valid), "--out", str(tmp_path / "shards"), "--processes", "1",
          "--tokenizer", "wordpiece", "--vocab", wordpiece_spec.vocab])
    assert main(["inspect", str(tmp_path / "shards"), "--vocab", str(other)]) == 2
    assert "pass the vocab used by preprocess" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_sample_builds_everything_once_and_then_skips(full_corpus, tmp_path, capsys):
    argv = ["prepare-sample", str(tmp_path), "--tokenizer", "bpe", "--vocab-size", "2000", "--processes", "2"]
    assert main(argv) == 0
    paths = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    for name in ("train", "valid", "paired_train", "paired_valid"):  # a second build of the corpus, identical
        assert Path(paths[f"{name}_text"]).read_bytes() == getattr(full_corpus, name).read_bytes()
    tokenizer = load_tokenizer(TokenizerSpec("bpe", paths["vocab"], paths["codes"]))
    assert tokenizer.vocab_size == 2000
    for name, streams in (("train", ("text",)), ("valid", ("text",)), ("paired_train", ("left", "right")),
                          ("paired_valid", ("left", "right"))):
        header = Shard.open(find_shards(paths[name])[0]).header
        assert (header.streams, header.vocab_fingerprint) == (streams, tokenizer.fingerprint)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == stamps
