"""Every CLI over a generated set of bad inputs: each gets exit status 2 and one `error:` line naming the
file or key (or exit 0 with a counted warning, for lines that are skipped), no traceback, and leaves no
partial output. The CLIs run in this process (their `main` behind `run_cli`, as `python -m` runs them), so
the set stays fast; every case fails before any training starts."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

import data_pipeline.__main__ as data_cli
import export.__main__ as export_cli
import pretrain.discrim
import pretrain.paired
import pretrain.submit
import pretrain.tlm
from data_pipeline.errors import run_cli
from tests.export.helpers import random_model, write_vocab
from tests.export.test_cli import write_training_checkpoint
from tests.export.test_finetune_example import load_example
from pretrain.objectives.language_modeling import CausalLM


CLIS: dict[str, Callable] = {
    "data_pipeline": data_cli._run, "tlm": pretrain.tlm.main, "paired": pretrain.paired.main,
    "discrim": pretrain.discrim.main, "export": export_cli.main, "submit": pretrain.submit.main,
    "finetune": load_example().main,
}
TRAINER_CONFIGS = {"tlm": "configs/tiny_mlm.yaml", "paired": "configs/tiny_dual_encoder.yaml",
                   "discrim": "configs/tiny_electra.yaml"}


@dataclass(frozen=True)
class Case:
    cli: str
    args: tuple[str, ...]       # {placeholders} filled from the bad-input files; {out} is this case's output
    needle: str                 # must appear in the error line (the file or key it names)
    code: int = 2

    @property
    def name(self) -> str:
        return f"{self.cli}:{' '.join(self.args)}"[:90]


def trainer_cases(cli: str) -> list[Case]:
    data = "paired_train" if cli == "paired" else "train"
    base = ("--config", TRAINER_CONFIGS[cli], "data.sample.dir=", f"data.train={{{data}}}",
            "data.tokenizer.vocab={vocab}", "data.nctx=32", "model.max_len=32", "data.batch_size=4",
            "train.max_steps=1", "train.num_workers=0", "train.tensorboard=false", "train.run_dir={out}",
            "train.export_formats=[]")
    with_base = lambda *extra: (*base, *extra)  # noqa: E731
    return [Case(cli, case_args, needle) for case_args, needle in [
        (("--config", "{dir}/missing.yaml"), "missing.yaml"),
        (("--config", "{dup_section}"), "set twice"),
        (("--config", "{dup_key}"), "set twice"),
        (("--config", "{invalid_yaml}"), "invalid.yaml"),
        (("--config", "{list_yaml}"), "top level"),
        (("--config", "{object_yaml}"), "object.yaml"),
        (with_base("train.lr=0.1"), "optim.lr"),
        (with_base("train.max_steps=many"), "train.max_steps"),
        (with_base("train.max_steps=0"), "max_steps"),
        (with_base("model.vocab_size=7"), "model.vocab_size"),
        (with_base("data.train={dir}/no-shards-here"), "no-shards-here"),
        (with_base("data.train={text_dir}"), "no shards found"),
        (with_base("data.tokenizer.vocab={dir}/missing-vocab.txt"), "missing-vocab.txt"),
        (with_base("data.tokenizer.vocab={empty}"), "empty.txt"),
        (with_base("data.tokenizer.lowercase=false"), "lowercase"),  # the shards are uncased
        (with_base("train.run_dir={a_file}/run"), "a_file"),
        (with_base("train.resume={dir}/missing.pt"), "missing.pt"),
        (with_base("train.resume={text_pt}"), "text.pt"),
        (with_base("train.resume={pickle_pt}"), "pickle.pt"),
        (with_base("train.init_from={dir}/missing-export"), "missing-export"),
        (with_base("stray-argument"), "stray-argument"),
    ]]


CASES = [
    *trainer_cases("tlm"), *trainer_cases("paired"), *trainer_cases("discrim"),
    *(Case("data_pipeline", ("preprocess", text, "--out", out, "--tokenizer", kind, "--vocab", vocab, *extra),
           needle, code)
      for text, out, kind, vocab, extra, needle, code in [
          ("{dir}/missing.txt", "{out}", "wordpiece", "{vocab}", (), "missing.txt", 2),
          ("{empty}", "{out}", "wordpiece", "{vocab}", (), "empty.txt", 2),
          ("{binary}", "{out}", "wordpiece", "{vocab}", (), "binary.txt:1", 2),
          ("{text}", "{out}", "wordpiece", "{dir}/nope.txt", (), "nope.txt", 2),
          ("{text}", "{out}", "wordpiece", "{empty}", (), "empty.txt", 2),
          ("{text}", "{a_file}", "wordpiece", "{vocab}", (), "a_file", 2),
          ("{text}", "{out}", "bpe", "{vocab}", (), "codes", 2),
          ("{skippable}", "{out}", "wordpiece", "{vocab}", ("--processes", "1"), "", 0),
      ]),
    Case("data_pipeline", ("learn-vocab", "{text}", "--vocab-size", "3", "--out", "{out}"), "too small"),
    Case("data_pipeline", ("learn-vocab", "{text}", "--vocab-size", "-5", "--out", "{out}"), "--vocab-size"),
    Case("data_pipeline", ("learn-vocab", "{dir}/absent.txt", "--vocab-size", "300", "--out", "{out}"),
         "absent.txt"),
    Case("data_pipeline", ("learn-vocab", "{text}", "--vocab-size", "300", "--out", "{a_file}"), "a_file"),
    Case("data_pipeline", ("inspect", "{dir}/no-shards"), "no-shards"),
    Case("data_pipeline", ("inspect", "{bad_header}"), "shard-00000.json"),
    Case("data_pipeline", ("inspect", "{truncated}"), "shard-00000.text.bin"),
    Case("data_pipeline", ("inspect", "{train}", "--vocab", "{empty}"), "empty.txt"),
    Case("data_pipeline", ("sample-corpus", "{a_file}/corpus"), "a_file"),
    Case("data_pipeline", ("prepare-sample", "{a_file}/sample"), "a_file"),
    Case("data_pipeline", ("no-such-command",), "no-such-command"),
    Case("export", ("--checkpoint", "{dir}/missing.pt", "--format", "npz", "--out", "{out}"), "missing.pt"),
    Case("export", ("--checkpoint", "{text_pt}", "--format", "npz", "--out", "{out}"), "text.pt"),
    Case("export", ("--checkpoint", "{pickle_pt}", "--format", "npz", "--out", "{out}"), "pickle.pt"),
    Case("export", ("--checkpoint", "{garbage_npz}", "--format", "npz", "--out", "{out}"), "garbage.npz"),
    Case("export", ("--checkpoint", "{nan_pt}", "--format", "npz", "--out", "{out}"), "NaN"),
    Case("export", ("--checkpoint", "{good_pt}", "--format", "bogus", "--out", "{out}"), "bogus"),
    Case("export", ("--checkpoint", "{good_pt}", "--format", "npz", "--out", "{a_file}"), "a_file"),
    Case("export", ("--checkpoint", "{good_pt}", "--format", "npz", "--vocab", "{dir}/v.txt", "--out", "{out}"),
         "v.txt"),
    Case("submit", ("render", "--trainer", "tlm", "--config", "{dir}/missing.yaml", "--name", "a"), "missing.yaml"),
    Case("submit", ("render", "--trainer", "tlm", "--config", "{dup_section}", "--name", "a"), "set twice"),
    Case("submit", ("render", "--trainer", "tlm", "--config", "configs/tiny_mlm.yaml", "--name", "Bad_Name"),
         "Bad_Name"),
    Case("submit", ("render", "--trainer", "tlm", "--config", "configs/tiny_mlm.yaml", "--name", "a",
                    "train.lr=1"), "optim.lr"),
    Case("submit", ("render", "--trainer", "gpt5", "--config", "configs/tiny_mlm.yaml", "--name", "a"), "gpt5"),
    Case("submit", ("render", "--trainer", "tlm", "--config", "configs/tiny_mlm.yaml", "--name", "a",
                    "--workers", "-1"), "workers"),
    Case("finetune", ("--pretrained", "{dir}/missing-export"), "missing-export"),
    Case("finetune", ("--pretrained", "{text_pt}"), "text.pt"),
    Case("finetune", ("--pretrained", "{garbage_npz}"), "garbage.npz"),
    Case("finetune", ("--pretrained", "{pickle_pt}"), "pickle.pt"),
]


@pytest.fixture(scope="module")
def bad(sample_data, tmp_path_factory) -> dict[str, str]:
    """The bad-input files, and good ones to combine them with."""
    root = tmp_path_factory.mktemp("bad")
    files = {"dir": root, "vocab": sample_data["vocab"], "train": sample_data["train"],
             "paired_train": sample_data["paired_train"]}

    def put(name: str, data: str | bytes) -> Path:
        path = root / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    files.update(
        dup_section=put("dup.yaml", "train: {max_steps: 2}\noptim: {lr: 0.1}\ntrain: {max_steps: 3}\n"),
        dup_key=put("dupkey.yaml", "train:\n  max_steps: 2\n  max_steps: 3\n"),
        invalid_yaml=put("invalid.yaml", "train: [1, 2\n"),
        list_yaml=put("list.yaml", "- train\n- optim\n"),
        object_yaml=put("object.yaml", "train: !!python/object/apply:os.system ['true']\n"),
        empty=put("empty.txt", ""), binary=put("binary.txt", b"caf\xe9 au lait\n"),
        text=put("text.txt", "some words here\nand more words there\n" * 20),
        skippable=put("skippable.txt", "a good line\n\n   \nbad\x00line\nanother good line\n"),
        a_file=put("a_file", "a file where a directory is expected"), text_pt=put("text.pt", "not a zip"),
        garbage_npz=put("garbage.npz", b"PK\x03\x04 no more"),
    )
    torch.save({"format": 1, "step": 1, "objective": {}, "optimizer": {}, "scheduler": {}, "data": {}, "rng": [],
                "config": {"oops": Path("/tmp")}}, root / "pickle.pt")
    files["pickle_pt"] = root / "pickle.pt"
    (root / "text_dir").mkdir()
    put("text_dir/a.txt", "plain text, not shards\n")
    files["text_dir"] = root / "text_dir"
    vocab = write_vocab(root / "tokenizer")
    for name, model in (("good_pt", random_model()), ("nan_pt", random_model())):
        if name == "nan_pt":
            with torch.no_grad():
                model.encoder.embeddings.word.weight[2, 2] = float("nan")
        files[name] = root / f"{name}.pt"
        write_training_checkpoint(files[name], CausalLM(model, pad_id=0), model.cfg, vocab.vocab)
    for name, damage in (("bad_header", "header"), ("truncated", "bin")):
        copy = root / name
        copy.mkdir()
        for source in Path(sample_data["train"]).glob("shard-00000.*"):
            (copy / source.name).write_bytes(source.read_bytes())
        if damage == "header":
            (copy / "shard-00000.json").write_text("{\"format_version\": 1, \"streams\": ")
        else:
            (copy / "shard-00000.text.bin").write_bytes((copy / "shard-00000.text.bin").read_bytes()[:100])
        files[name] = copy
    return {key: str(value) for key, value in files.items()}


def test_the_set_is_large_and_covers_every_cli():
    assert len(CASES) >= 60
    assert {case.cli for case in CASES} == set(CLIS)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_bad_input_gets_one_line_and_leaves_nothing(case, bad, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    args = [arg.format(**bad, out=out) for arg in case.args]
    before = Path(bad["a_file"]).read_bytes()
    try:
        code = run_cli(lambda: CLIS[case.cli](args))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    stderr = captured.err + caplog.text
    errors = [line for line in captured.err.splitlines() if line.startswith("error:") or ": error: " in line]
    assert code == case.code, stderr[-2000:]
    assert "Traceback" not in stderr
    if case.code == 2:
        assert len(errors) == 1, stderr[-2000:]
        assert case.needle in errors[0], errors[0]
        assert "weights_only" not in errors[0]
        assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))
    else:
        assert "skipped" in stderr and errors == []
    assert Path(bad["a_file"]).read_bytes() == before
    assert not [p for p in Path(bad["dir"]).iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]
    logging.getLogger().handlers.clear()
