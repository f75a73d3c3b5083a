"""The `data` section every trainer shares, and the readers it builds for this rank."""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from torch.utils.data import IterableDataset

from data_pipeline.errors import UserError
from data_pipeline.object_store import is_uri
from data_pipeline.readers import ShardedDataset, Transform
from data_pipeline.sample_corpus import find_sample_data, prepare_sample_data
from data_pipeline.shard_cache import ShardCache
from data_pipeline.streaming import TextStreamDataset
from data_pipeline.tokenizer import Tokenizer, TokenizerSpec
from pretrain.config import require
from pretrain.distributed import DistEnv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerConfig:
    """The vocab files the shards were made with (the readers check the fingerprint)."""

    kind: Literal["wordpiece", "bpe"] = "wordpiece"
    vocab: str = ""                 # vocab.txt (wordpiece) or the fastBPE vocab file (bpe)
    codes: str = ""                 # fastBPE codes (bpe only)
    lowercase: bool = True          # wordpiece only

    def spec(self) -> TokenizerSpec:
        if not self.vocab:
            raise UserError("data.tokenizer.vocab is not set: point it at the vocab the data was "
                            "preprocessed with, or set data.sample.dir to train on the built-in sample")
        if self.kind == "bpe" and not self.codes:
            raise UserError("data.tokenizer.codes is not set: a BPE tokenizer needs its fastBPE codes file")
        return TokenizerSpec(kind=self.kind, vocab=self.vocab, codes=self.codes or None, lowercase=self.lowercase)


@dataclass(frozen=True)
class SampleDataConfig:
    """The embedded default: build the sample corpus, a vocab and shards under `dir`, then train on them."""

    dir: str = ""                   # "" = off; train on data.train / data.valid instead
    vocab_size: int = 8000


@dataclass(frozen=True)
class DataConfig:
    """What to read and how to batch it. Paths are shard directories or object-store URIs such as
    s3://bucket/prefix (format: shards) or text inputs: files, directories, globs, .gz (format: text,
    tokenized on the fly)."""

    train: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()   # per data.train source; empty = 1.0 each (see readers.py "Mixing")
    format: Literal["shards", "text"] = "shards"
    text_errors: Literal["strict", "replace"] = "strict"  # non-UTF-8 text: stop with file:line, or repair
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    sample: SampleDataConfig = field(default_factory=SampleDataConfig)
    nctx: int = 128                  # tokens per LM block; max tokens per side for paired data
    batch_size: int = 32             # per rank and micro-batch; global batch = this x world size x accum
    # Sample order (readers.py): uniform = one permutation of all samples; stream = shards in blocks,
    # a shuffle window of `shuffle_window` shards, each rank on its own `partitions` (0: the world size);
    # auto = stream when any data.train entry is an object-store URI, else uniform.
    shuffle: Literal["auto", "uniform", "stream"] = "auto"
    shuffle_window: int = 4
    partitions: int = 0
    cache_dir: str = ""              # remote shards are cached here, per rank ("": under the temp dir)
    cache_limit: int = 8 << 30       # bytes of shards each rank's cache may hold

    def __post_init__(self) -> None:
        require(self.shuffle_window >= 1, f"shuffle_window must be >= 1 shard, got {self.shuffle_window}")
        require(self.partitions >= 0, f"partitions must be >= 0 (0: the world size), got {self.partitions}")
        require(self.cache_limit >= 1, f"cache_limit must be >= 1 byte, got {self.cache_limit}")


def resolve_sample_data(cfg: DataConfig, paired: bool) -> DataConfig:
    """With `sample.dir` set, build the sample data there (once) and point the config at it."""
    if not cfg.sample.dir:
        if not cfg.train:
            raise UserError("data.train is empty: give shard directories (or text files with "
                            "data.format=text), or set data.sample.dir to use the built-in sample corpus")
        return cfg
    if cfg.train or cfg.valid:
        raise UserError("set either data.sample.dir (built-in sample corpus) or data.train/data.valid, not both")
    paths = sample_data(cfg.sample, cfg.tokenizer.kind)
    prefix = "paired_" if paired else ""
    tokenizer = replace(cfg.tokenizer, vocab=str(paths["vocab"]), codes=str(paths.get("codes") or ""))
    return replace(cfg, train=(str(paths[f"{prefix}train"]),), valid=(str(paths[f"{prefix}valid"]),),
                   format="shards", tokenizer=tokenizer)


def sample_data(sample: SampleDataConfig, kind: str) -> dict[str, Path]:
    """The sample data's paths: read as they are when a data Job (k8s/data) or an earlier run built them,
    with no lock and no write, since training pods mount /data read-only; otherwise built here."""
    found = find_sample_data(sample.dir, kind, sample.vocab_size)
    if found is not None:
        return found
    try:
        # Every process may call it: a file lock inside lets the first build and the others wait, then read.
        return prepare_sample_data(sample.dir, kind=kind, vocab_size=sample.vocab_size)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise UserError(f"data.sample.dir {sample.dir}: the sample data ({kind}, {sample.vocab_size} tokens) is not "
                        f"there and cannot be written ({err.strerror}): prepare it first with the data Job "
                        f"(kubectl apply -k k8s/data), or `python -m data_pipeline prepare-sample {sample.dir}` "
                        "where the volume is writable") from None


def log_skipped_lines(name: str, stats: dict[str, int]) -> None:
    """Report what preprocessing skipped or repaired, so that no dropped line goes unnoticed."""
    flagged = {key: count for key, count in sorted(stats.items()) if count and key not in ("files", "lines_read")}
    if flagged:
        log.warning("%s: preprocessing skipped or repaired lines: %s", name,
                    ", ".join(f"{key}={count}" for key, count in flagged.items()))


def _cache_dir(cfg: DataConfig, env: DistEnv) -> str:
    """This rank's shard cache: its DataLoader workers share it, other ranks (even on one node) do not."""
    root = cfg.cache_dir or os.path.join(tempfile.gettempdir(), f"pretrain-shard-cache-{os.getuid()}")
    return os.path.join(root, f"rank-{env.rank}")


def build_datasets(cfg: DataConfig, tokenizer: Tokenizer, env: DistEnv, *, seed: int, paired: bool,
                   transform: Transform | None) -> tuple[IterableDataset, IterableDataset | None]:
    """The endless shuffled training stream and the single ordered validation pass for this rank."""
    common = dict(nctx=cfg.nctx, batch_size=cfg.batch_size, rank=env.rank, world_size=env.world_size,
                  transform=transform)
    if cfg.format == "text":
        text = dict(common, tokenizer=tokenizer, paired=paired, errors=cfg.text_errors)
        train = TextStreamDataset(list(cfg.train), **text)
        valid = TextStreamDataset(list(cfg.valid), epochs=1, **text) if cfg.valid else None
        return train, valid
    paths = list(cfg.train) + list(cfg.valid)
    cache = ShardCache(_cache_dir(cfg, env), cfg.cache_limit) if any(is_uri(p) for p in paths) else None
    shards = dict(common, pad_id=tokenizer.pad_id, expected_fingerprint=tokenizer.fingerprint, cache=cache)
    order = cfg.shuffle if cfg.shuffle != "auto" else ("stream" if any(is_uri(p) for p in cfg.train) else "uniform")
    train = ShardedDataset(list(cfg.train), weights=list(cfg.weights) or None, seed=seed, order=order,
                           partitions=cfg.partitions, window_shards=cfg.shuffle_window, **shards)
    valid = ShardedDataset(list(cfg.valid), shuffle=False, epochs=1, **shards) if cfg.valid else None
    for name, dataset in (("data.train", train), ("data.valid", valid)):
        if dataset is not None and env.is_main:
            log_skipped_lines(name, dataset.preprocessing_stats)
    if train.paired != paired:
        want, got = ("paired (left<TAB>right)", "LM") if paired else ("LM", "paired")
        raise UserError(f"data.train holds {got} shards but this trainer needs {want} shards: "
                        f"preprocess the right kind of corpus")
    return train, valid
