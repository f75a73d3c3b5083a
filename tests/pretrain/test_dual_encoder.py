"""The dual encoder: reductions, encodings, the in-batch-negatives loss, recall@1, and gathered negatives
under DDP giving exactly the single-process gradient."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from data_pipeline.errors import UserError
from pretrain.config import ConfigError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.pooling import MeanPooling, TwoHeadAttentionPooling
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig, recall_at_1
from tests.pretrain.processes import free_port

PAD = 0
MODEL = TransformerConfig(vocab_size=50, d_model=16, num_heads=2, layers=1, d_ff=32, max_len=16, dropout=0.0)


def dual_encoder(seed: int = 0, **overrides) -> DualEncoder:
    torch.manual_seed(seed)
    return DualEncoder(TransformerLM(MODEL), DualEncoderConfig(**overrides), pad_id=PAD)


def pairs(rows: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    left, right = torch.randint(1, 50, (rows, 7), generator=g), torch.randint(1, 50, (rows, 5), generator=g)
    left[::2, 5:] = PAD  # every other context is shorter
    return {"left": left, "right": right}


def test_mean_pooling_ignores_padding():
    hidden = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, True, False, False]])
    torch.testing.assert_close(MeanPooling()(hidden, mask), hidden[:, :3].mean(1))


def test_two_head_pooling_sums_over_the_square_root_of_the_length():
    pooling = TwoHeadAttentionPooling(8, dropout=0.0)
    token = torch.randn(1, 1, 8)
    short, long = pooling(token.expand(1, 4, 8)), pooling(token.expand(1, 16, 8))
    # Identical tokens attend identically, so only the sqrt(n) reduction separates 4 tokens from 16.
    torch.testing.assert_close(long, 2 * short)


def test_encodings_are_unit_vectors_unaffected_by_padding():
    model = dual_encoder().eval()
    tokens = torch.randint(1, 50, (3, 6))
    padded = torch.cat([tokens, torch.full((3, 4), PAD)], dim=1)
    plain, extended = model.encode(tokens, model.context_head), model.encode(padded, model.context_head)
    torch.testing.assert_close(plain.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(plain, extended, atol=1e-5, rtol=0)


def test_loss_is_the_mean_of_both_retrieval_directions():
    model = dual_encoder(shared_head=True).eval()
    batch = pairs(6)
    swapped = {"left": batch["right"], "right": batch["left"]}
    forward, backward = model(batch)["losses"]["contrastive"], model(swapped)["losses"]["contrastive"]
    assert forward[1] == 6
    torch.testing.assert_close(forward[0], backward[0])


def test_untrained_loss_is_near_log_batch_size_and_temperature_is_learned():
    model = dual_encoder(temperature=1.0)
    loss, count = model(pairs(16))["losses"]["contrastive"]
    assert loss.item() / count.item() == pytest.approx(math.log(16), rel=0.1)
    loss.backward()
    assert model.log_scale.grad is not None and model.log_scale.grad.item() != 0.0


def test_scale_is_capped_at_max_scale():
    model = dual_encoder(temperature=0.01, max_scale=100.0)
    with torch.no_grad():
        model.log_scale.fill_(math.log(1e4))
    scale_sum, count = model(pairs(4))["metrics"]["scale"]
    assert scale_sum.item() / count.item() == pytest.approx(100.0)


def test_recall_at_1_ranks_among_chunks_of_candidates_and_drops_the_remainder():
    contexts = torch.eye(10)
    responses = torch.eye(10)
    responses[1] = contexts[0]  # in chunk [0, 5): context 1 now prefers response 0 (tie broken low)
    responses[7] = contexts[6]  # the same in chunk [5, 10)
    hits, rows = recall_at_1(contexts, responses, candidates=5)
    assert (hits.item(), rows) == (8, 10)
    hits, rows = recall_at_1(contexts[:9], responses[:9], candidates=5)
    assert (hits.item(), rows) == (4, 5)


def test_validation_reports_recall_and_training_does_not():
    model = dual_encoder(recall_candidates=4)
    assert "recall@1" not in model(pairs(8))["metrics"]
    hits, rows = model.eval()(pairs(8))["metrics"]["recall@1"]
    assert rows == 8 and 0 <= hits.item() <= 8


def test_bad_heads_config_is_a_one_line_error():
    with pytest.raises(UserError, match="objective.dual_encoder.pooling='max' must be one of mean, first, 2ha"):
        dual_encoder(pooling="max")
    with pytest.raises(ConfigError, match="temperature=0.001 must be > 0 and >= 1 / max_scale=100.0"):
        DualEncoderConfig(temperature=0.001)


# -- DDP: gathered negatives ---------------------------------------------------------------------------

GLOBAL_BATCH = 8


def _two_rank_gradients(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 2-process gloo job: half the global batch through DDP, the loop's loss scaling."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(dual_encoder())
        half = GLOBAL_BATCH // 2
        batch = {key: value[rank * half:(rank + 1) * half] for key, value in pairs(GLOBAL_BATCH).items()}
        loss_sum, count = model(batch)["losses"]["contrastive"]
        global_count = count.clone().double()
        dist.all_reduce(global_count)
        (loss_sum * 2 / global_count.float()).backward()  # trainer._scaled_loss with world_size 2
        total = loss_sum.detach().clone()
        dist.all_reduce(total)
        torch.save({"loss": total / global_count.float(),
                    "grads": {n: p.grad for n, p in model.module.named_parameters()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_make_two_ranks_equal_one_rank_with_the_global_batch(tmp_path):
    reference = dual_encoder()
    loss_sum, count = reference(pairs(GLOBAL_BATCH))["losses"]["contrastive"]
    (loss_sum / count).backward()
    mp.spawn(_two_rank_gradients, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # The loss sees all 8 responses as candidates on both ranks (not 4), and DDP's averaged gradient
    # is the single-process one.
    torch.testing.assert_close(ranks[0]["loss"], loss_sum.detach() / count)
    for name, param in reference.named_parameters():
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], param.grad, atol=1e-4, rtol=1e-4, msg=name)
