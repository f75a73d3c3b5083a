"""Training data for the end-to-end tests, built from the sample-corpus rules."""
from __future__ import annotations

from pathlib import Path

from data_pipeline.preprocess import preprocess
from data_pipeline.sample_corpus import build_sample_corpus, stdlib_dir
from data_pipeline.vocab_learning import learn_vocab


def build_sample_data(root: Path) -> dict[str, Path]:
    """The sample-corpus rules applied to one stdlib package (email): LM and paired shards in ~2 s."""
    corpus = build_sample_corpus(root / "corpus", stdlib_dir() / "email")
    spec = learn_vocab("wordpiece", [corpus.train], root / "vocab", 1000)
    paths = {"vocab": Path(spec.vocab), "paired_train_text": corpus.paired_train}
    for name, text, paired in (("train", corpus.train, False), ("valid", corpus.valid, False),
                               ("paired_train", corpus.paired_train, True),
                               ("paired_valid", corpus.paired_valid, True)):
        paths[name] = preprocess([text], root / name, spec, paired=paired, processes=1, progress=False).out_dir
    return paths
