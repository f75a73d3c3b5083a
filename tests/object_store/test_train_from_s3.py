"""End to end against the S3 server: preprocess to s3 -> two PyTorchJob pods with two DataLoader workers
each train from s3 in the streaming order; bad URIs and credentials are one line."""
from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from data_pipeline.readers import ShardedDataset
from data_pipeline.remote_dataset import read_manifest
from data_pipeline.shard_cache import ShardCache
from tests.pretrain.processes import finish, run_two_pods, start
from tests.pretrain.test_tlm import TINY, tlm_command

pytestmark = pytest.mark.slow
LINES = 600        # of the sample corpus: about 1,100 blocks of 32 tokens
SHARD_TOKENS = 2000


@pytest.fixture(scope="module")
def s3_data(s3, small_sample, tmp_path_factory) -> dict[str, str]:
    """A slice of the sample corpus preprocessed by the CLI into s3://corpus/{train,valid}; the vocab stays local."""
    directory = tmp_path_factory.mktemp("s3_data")
    paths = small_sample.paths
    bucket = s3.create_bucket("corpus")
    uris = {"vocab": str(paths["vocab"])}
    for name, lines in (("train", LINES), ("valid", LINES // 4)):
        text = directory / f"{name}.txt"
        text.write_text("".join(paths[f"{name}_text"].read_text(encoding="utf-8").splitlines(True)[:lines]))
        uris[name] = f"{bucket}/{name}"
        [(code, out)] = finish([start(["-m", "data_pipeline", "preprocess", str(text), "--out", uris[name],
                                       "--tokenizer", "wordpiece", "--vocab", uris["vocab"],
                                       "--shard-tokens", str(SHARD_TOKENS), "--processes", "1"])])
        assert code == 0, out
    return uris


def s3_args(data: dict[str, str], run_dir: Path, *overrides: str) -> list[str]:
    return ["--config", "configs/tiny_mlm.yaml", "data.sample.dir=''", f"data.train=[{data['train']}]",
            f"data.valid=[{data['valid']}]", f"data.tokenizer.vocab={data['vocab']}", f"train.run_dir={run_dir}",
            *TINY, *overrides]


def test_every_sample_once_per_epoch_from_s3_over_2_ranks_x_2_workers(s3_data, tmp_path):
    seen = []
    for rank in range(2):
        ds = ShardedDataset(s3_data["train"], nctx=32, batch_size=8, rank=rank, world_size=2, epochs=1,
                            order="stream", cache=ShardCache(tmp_path / f"rank-{rank}", 1 << 30))
        seen += [i for b in DataLoader(ds, batch_size=None, num_workers=2) for i in b["sample_ids"].tolist()]
    assert sorted(seen) == list(range(ds.samples_per_epoch))


def test_two_pods_with_two_workers_train_from_s3_each_rank_on_its_own_shards(s3_data, tmp_path):
    # Stop 10 steps before the epoch ends, so that the read-ahead (DataLoader and shard prefetch, 8
    # batches here) stays inside the epoch: each rank then fetches each of its shards exactly once.
    shards = read_manifest(s3_data["train"])
    steps = sum(s.header.num_tokens["text"] for s in shards) // 32 // 16 - 10
    master, _ = run_two_pods(tlm_command(s3_args(
        s3_data, tmp_path / "run", f"train.max_steps={steps}", "train.num_workers=2",
        f"data.cache_dir={tmp_path / 'cache'}", f"data.cache_limit={8 * max(s.size for s in shards)}")))
    assert "on 2 process(es)" in master and f"step {steps}" in master
    fetched = {rank: [uri for uri, _ in ShardCache(tmp_path / "cache" / f"rank-{rank}", 1).fetch_log()
                      if uri.startswith(s3_data["train"] + "/")] for rank in range(2)}
    for rank, log in fetched.items():
        assert len(set(log)) == len(log), log  # nothing evicted too early or fetched by both workers
        assert len(log) <= 0.65 * len(shards), log  # about half the shards, plus partition edges
    assert len(set(fetched[0]) & set(fetched[1])) <= 0.15 * len(shards), fetched


@pytest.mark.parametrize("train,env,cause", [
    ("s3://no-such-bucket/train", {}, "bucket 'no-such-bucket' does not exist"),
    ("s3://corpus/train", {"AWS_SECRET_ACCESS_KEY": "wrong"}, "access denied"),
    ("s4://corpus/train", {}, "not a storage URI"),
    ("s3://corpus/trian", {}, "no dataset.json"),
])
def test_a_bad_uri_or_credentials_exit_2_with_one_line_naming_the_uri(s3_data, tmp_path, train, env, cause):
    data = dict(s3_data, train=train, valid=train)
    [(code, out)] = finish([start(tlm_command(s3_args(data, tmp_path, "train.max_steps=1")), env)])
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert train in out and cause in out, out
