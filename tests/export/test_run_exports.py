"""Every objective's run exports whole: a few training steps on sample text, then the end-of-run export and
`python -m export` on the final checkpoint, each reloaded and compared with the model the training
checkpoint holds (rebuilt the way its trainer builds it): bit-identical outputs."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertForMaskedLM

from data_pipeline.shards import Shard, find_shards
from data_pipeline.tokenizer import load_tokenizer
from export import load_encoder, load_pretrained
from export.__main__ import main as export_main
from pretrain import discrim, paired, tlm
from pretrain.config import load_config
from pretrain.model import TransformerLM
from pretrain.objectives.dual_encoder import DualEncoder, recall_at_1
from pretrain.run import Recipe, run_recipe

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
SMALL = ["model.d_model=32", "model.num_heads=2", "model.layers=1", "model.d_ff=64", "model.max_len=32",
         "data.nctx=24", "data.batch_size=8", "train.num_workers=0", "train.tensorboard=false",
         f"train.log_every={STEPS}", "train.eval_every=0", "train.checkpoint_every=0", "optim.warmup_steps=2",
         "optim.lr=3e-3", f"train.max_steps={STEPS}"]


@dataclass(frozen=True)
class Run:
    recipe: Recipe
    config: str
    paired: bool
    overrides: tuple[str, ...] = ()


RUNS = {
    "mlm": Run(tlm.RECIPE, "tiny_mlm.yaml", False),
    "clm": Run(tlm.RECIPE, "tiny_clm.yaml", False),
    "dual_encoder": Run(paired.RECIPE, "tiny_dual_encoder.yaml", True, (
        "objective.dual_encoder.recall_candidates=8", "objective.dual_encoder.projection_hidden=[16]",
        "objective.dual_encoder.embed_dim=12")),
    "seq2seq": Run(paired.RECIPE, "tiny_seq2seq.yaml", True),
    "electra": Run(discrim.RECIPE, "tiny_electra.yaml", False, ("objective.generator_fraction=0.5",)),
}


@pytest.fixture(scope="module")
def trained(sample_data, tmp_path_factory) -> Callable[[str], Path]:
    """name -> the run directory of a completed short run of that objective (trained once per module)."""
    runs: dict[str, Path] = {}

    def train(name: str) -> Path:
        if name not in runs:
            run, kind = RUNS[name], "paired_" if RUNS[name].paired else ""
            run_dir = tmp_path_factory.mktemp(name)
            run_recipe(run.recipe, ["--config", str(REPO / "configs" / run.config), "data.sample.dir=''",
                                    f"data.train=[{sample_data[kind + 'train']}]",
                                    f"data.valid=[{sample_data[kind + 'valid']}]",
                                    f"data.tokenizer.vocab={sample_data['vocab']}", *SMALL, *run.overrides,
                                    f"train.run_dir={run_dir}"])
            runs[name] = run_dir
        return runs[name]
    return train


def checkpoint_model(name: str, run_dir: Path) -> nn.Module:
    """What the run's final checkpoint holds, rebuilt as its trainer builds the objective."""
    recipe = RUNS[name].recipe
    cfg = load_config(recipe.schema, ["--config", str(run_dir / "config.yaml")])
    objective, _ = recipe.build_objective(cfg, load_tokenizer(cfg.data.tokenizer.spec()))
    state = torch.load(run_dir / "checkpoints" / f"ckpt-{STEPS:08d}.pt", weights_only=True)
    objective.load_state_dict(state["objective"])
    return objective.export_model().eval()


def paired_sample(sample_data: dict[str, Path], rows: int = 16, length: int = 20) -> dict[str, torch.Tensor]:
    """The first `rows` held-out pairs, cut to `length` tokens and right-padded with 0."""
    shard = Shard.open(find_shards(sample_data["paired_valid"])[0])
    sides = {}
    for side in ("left", "right"):
        tokens, offsets = shard.tokens(side), shard.offsets(side)
        batch = torch.zeros(rows, length, dtype=torch.long)
        for row in range(rows):
            doc = torch.from_numpy(tokens[offsets[row]:offsets[row + 1]].astype("int64"))[:length]
            batch[row, : len(doc)] = doc
        sides[side] = batch
    return sides


def outputs(name: str, model: nn.Module, pairs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """What a user of this objective's export computes with it."""
    left, right = pairs["left"], pairs["right"]
    with torch.no_grad():
        if name in ("mlm", "clm"):
            return [model.logits(model(left, causal=name == "clm"))]
        if name == "dual_encoder":
            return [model.encode_context(left), model.encode_response(right), model.log_scale]
        if name == "seq2seq":
            return [model.score(left, right), model.generate(left, max_tokens=8)]
        hidden = model.generator(left)
        return [model.discriminator_head(model.discriminator(left)), model.generator.logits(hidden)]


def exports(run_dir: Path, tmp_path: Path, *flags: str) -> list[Path]:
    """The end-of-run export's files and those `python -m export` writes from the final checkpoint."""
    checkpoint = run_dir / "checkpoints" / f"ckpt-{STEPS:08d}.pt"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "npz", "torch", "--out",
                        str(tmp_path / "cli"), *flags]) == 0
    return [run_dir / "export/model.npz", run_dir / "export/model.pt", tmp_path / "cli/model.npz",
            tmp_path / "cli/model.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNS)
def test_every_objective_exports_whole_and_reloads_bit_identical(name, trained, sample_data, tmp_path):
    run_dir = trained(name)
    reference = checkpoint_model(name, run_dir)
    pairs = paired_sample(sample_data)
    expected = outputs(name, reference, pairs)
    for path in exports(run_dir, tmp_path):
        loaded, _ = load_pretrained(path)
        assert type(loaded) is type(reference), path
        assert loaded.state_dict().keys() == reference.state_dict().keys(), path
        for ours, theirs in zip(outputs(name, loaded.eval(), pairs), expected):
            assert torch.equal(ours, theirs), path


@pytest.mark.slow
def test_recall_of_an_exported_dual_encoder_equals_the_checkpoints(trained, sample_data, tmp_path):
    run_dir = trained("dual_encoder")
    pairs = paired_sample(sample_data)  # all 16 held-out pairs: two rankings among 8

    def recall(model: DualEncoder) -> float:
        with torch.no_grad():
            hits, rows = recall_at_1(model.encode_context(pairs["left"]), model.encode_response(pairs["right"]), 8)
        return hits.item() / rows

    expected = recall(checkpoint_model("dual_encoder", run_dir))
    for path in exports(run_dir, tmp_path):
        assert recall(load_pretrained(path)[0].eval()) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dual_encoder", "seq2seq", "electra"])
def test_encoder_only_exports_just_the_transformer(name, trained, sample_data, tmp_path):
    run_dir = trained(name)
    reference = checkpoint_model(name, run_dir)
    encoder = {"dual_encoder": "model", "seq2seq": "encoder", "electra": "discriminator"}[name]
    expected = getattr(reference, encoder)
    tokens = paired_sample(sample_data)["left"]
    for path in exports(run_dir, tmp_path, "--encoder-only")[2:]:
        loaded, _ = load_pretrained(path)
        assert isinstance(loaded, TransformerLM)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(tokens), expected(tokens))
    whole, _ = load_encoder(run_dir / "export/model.pt")
    with torch.no_grad():
        assert torch.equal(whole.eval()(tokens), expected(tokens))


@pytest.mark.slow
def test_the_default_mlm_recipe_exports_to_hf_and_transformers_gives_our_logits_and_ids(trained, sample_data,
                                                                                      tmp_path):
    run_dir = trained("mlm")
    assert export_main(["--checkpoint", str(run_dir / "checkpoints" / f"ckpt-{STEPS:08d}.pt"), "--format", "hf",
                        "--out", str(tmp_path)]) == 0
    bert = BertForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    reference = checkpoint_model("mlm", run_dir)
    text = (sample_data["paired_train_text"]).read_text(encoding="utf-8").splitlines()[0]
    ids = load_tokenizer(load_pretrained(run_dir / "export/model.pt")[1]).encode(text)[:24]
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text, add_special_tokens=False)["input_ids"][:24] == ids
    tokens = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(bert(input_ids=tokens).logits, reference.logits(reference(tokens)),
                                   rtol=1e-4, atol=1e-4)


def retrieval_example():
    spec = importlib.util.spec_from_file_location("evaluate_retrieval", REPO / "examples/evaluate_retrieval.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


def test_retrieval_ranks_count_better_responses_and_break_ties_as_argmax_does():
    contexts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    responses = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # scores: [1 1 0], [0 0 1], [1 1 1]
    found = retrieval_example().ranks(contexts, responses, 3)
    assert found.tolist() == [1, 3, 3]
    assert (found == 1).sum() == recall_at_1(contexts, responses, 3)[0]


@pytest.mark.slow
def test_retrieval_example_scores_a_dual_encoder_export_as_the_checkpoint_does(trained, sample_data):
    run_dir = trained("dual_encoder")
    pairs = sample_data["vocab"].parents[1] / "corpus" / "paired_valid.tsv"
    result = subprocess.run([sys.executable, str(REPO / "examples/evaluate_retrieval.py"), "--pretrained",
                             str(run_dir / "export/model.npz"), "--pairs", str(pairs), "--candidates", "8",
                             "--max-len", "24"], capture_output=True, text=True, check=True)
    example = retrieval_example()
    reference = checkpoint_model("dual_encoder", run_dir)
    tokenizer = load_tokenizer(load_pretrained(run_dir / "export/model.pt")[1])
    lines = [line.split("\t", 1) for line in pairs.read_text(encoding="utf-8").splitlines()]
    with torch.no_grad():
        contexts = reference.encode_context(example.padded(tokenizer, [c for c, _ in lines], 24))
        responses = reference.encode_response(example.padded(tokenizer, [r for _, r in lines], 24))
    hits, rows = recall_at_1(contexts, responses, 8)
    reciprocal_ranks = example.ranks(contexts, responses, 8).double().reciprocal()
    assert result.stdout == (f"recall@1 among 8: {hits.item() / rows:.4f}\n"
                             f"MRR among 8: {reciprocal_ranks.mean().item():.4f}\n")
