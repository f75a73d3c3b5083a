"""Class 4: filesystem errors where we write. Real faults on the child only: a read-only bind mount, root
without the capabilities that bypass file modes, a path through a file, a full tmpfs, `ulimit -f`. Each
CLI answers with one line naming the path, the cause and the fix (exit 2), and leaves no partial output."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.export.helpers import random_model, write_vocab
from tests.export.test_cli import write_training_checkpoint
from tests.faults.harness import NO_DAC, file_size_limit, python, read_only, small_tmpfs
from pretrain.objectives.language_modeling import CausalLM

TINY = ["-m", "tests.pretrain.tiny_training", "train.num_workers=0", "train.tensorboard=false",
        "train.eval_every=0", "train.log_every=1", "train.checkpoint_every=0", "train.max_steps=2"]


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A training checkpoint of a small TransformerLM whose export is ~100 KB."""
    vocab = write_vocab(tmp_path / "tokenizer")
    model = random_model()
    path = tmp_path / "ckpt-00000010.pt"
    write_training_checkpoint(path, CausalLM(model, pad_id=0), model.cfg, vocab.vocab)
    return path


@pytest.mark.slow
def test_run_dir_on_a_read_only_mount(tmp_path):
    mount = tmp_path / "volume"
    mount.mkdir()
    outcome = python([*TINY, f"train.run_dir={mount / 'run'}"], wrap=read_only(mount))
    outcome.assert_one_line_error(str(mount / "run"), "Read-only file system", "mount it read-write")
    assert leftovers(mount) == []


@pytest.mark.slow
def test_run_dir_without_write_permission(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir(mode=0o555)
    outcome = python([*TINY, f"train.run_dir={parent / 'run'}"], prefix=NO_DAC)
    outcome.assert_one_line_error(str(parent / "run"), "Permission denied", f"uid {os.getuid()}")
    assert leftovers(parent) == []


@pytest.mark.slow
def test_run_dir_below_a_file(tmp_path):
    (tmp_path / "notes").write_text("a file, not a directory")
    outcome = python([*TINY, f"train.run_dir={tmp_path / 'notes' / 'run'}"])
    outcome.assert_one_line_error(str(tmp_path / "notes"), "Not a directory")


@pytest.mark.slow
def test_checkpoint_on_a_full_disk(tmp_path):
    mount = tmp_path / "volume"
    mount.mkdir()
    # 12 KiB: the owner record and config.yaml fit, the checkpoint (~30 KB) does not.
    outcome = python([*TINY, f"train.run_dir={mount}"], wrap=f"{small_tmpfs(mount, 12)}")
    outcome.assert_one_line_error("writing a checkpoint to", "No space left on device", "free space")
    assert "inline_container" not in outcome.stderr


def test_export_on_a_full_disk_leaves_no_directory(tmp_path, checkpoint):
    mount = tmp_path / "volume"
    mount.mkdir()
    out = mount / "export"
    outcome = python(["-m", "export", "--checkpoint", str(checkpoint), "--format", "npz", "torch",
                      "--out", str(out)], wrap=f"{small_tmpfs(mount, 48)} && ls {mount}")
    outcome.assert_one_line_error(str(out), "No space left on device", "free space")
    assert outcome.stdout.strip() == ""  # the tmpfs was empty afterwards: no vocab.txt alone, no temp dir


def test_export_past_the_file_size_limit(tmp_path, checkpoint):
    out = tmp_path / "export"
    outcome = python(["-m", "export", "--checkpoint", str(checkpoint), "--format", "torch", "--out", str(out)],
                     wrap=file_size_limit(16))
    outcome.assert_one_line_error(str(out), "File too large", "ulimit -f")
    assert "inline_container" not in outcome.stderr
    assert leftovers(tmp_path / "export") == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_vocab_on_a_full_disk_leaves_nothing(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i} with words {i * 7} and more words {i % 13}\n" for i in range(3000)))
    mount = tmp_path / "volume"
    mount.mkdir()
    outcome = python(["-m", "data_pipeline", "learn-vocab", str(text), "--tokenizer", "bpe", "--vocab-size",
                      "2000", "--out", str(mount / "bpe")], wrap=f"{small_tmpfs(mount, 8)} && ls -A {mount}")
    outcome.assert_one_line_error("No space left on device")
    assert outcome.stdout.strip() == ""


def test_shards_to_a_read_only_mount(tmp_path):
    vocab = write_vocab(tmp_path / "tokenizer")
    text = tmp_path / "corpus.txt"
    text.write_text("tok1 tok2 tok3\ntok4 tok5\n")
    mount = tmp_path / "volume"
    mount.mkdir()
    outcome = python(["-m", "data_pipeline", "preprocess", str(text), "--out", str(mount / "shards"),
                      "--tokenizer", "wordpiece", "--vocab", vocab.vocab, "--processes", "1"], wrap=read_only(mount))
    outcome.assert_one_line_error(str(mount / "shards"), "Read-only file system")
    assert leftovers(mount) == []
