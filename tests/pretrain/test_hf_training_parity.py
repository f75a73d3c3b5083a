"""Our BERT-shaped masked LM trains exactly as HF `BertForMaskedLM` does from the same weights.

bench/hf_parity.py compares the two curves over seeds; this pins what makes that comparison mean something:
with dropout off, the same weights, batches and optimizer, the two take the same steps, so any gap between
the curves comes from the initial draw or the dropout stream, not from the loss, the update or the layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from pretrain.config import OptimConfig
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.hf import hf_model
from pretrain.objectives.language_modeling import MaskedLM
from pretrain.optim import build_optimizer, build_scheduler

VOCAB, D_MODEL, HEADS, LAYERS, D_FF, SEQ, BATCH, STEPS = 97, 32, 4, 2, 64, 16, 4, 6


def bert_pair() -> tuple[MaskedLM, BertForMaskedLM]:
    torch.manual_seed(0)
    ours = MaskedLM(TransformerLM(TransformerConfig(
        vocab_size=VOCAB, d_model=D_MODEL, num_heads=HEADS, layers=LAYERS, d_ff=D_FF, max_len=SEQ, dropout=0.0,
        embeddings="learned-bias", head_transform=True, output_bias=True)), mask_rate=0.15)
    theirs = BertForMaskedLM(BertConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=D_FF, hidden_act="gelu", max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, layer_norm_eps=ours.model.cfg.layer_norm_eps))
    theirs.load_state_dict(hf_model(ours.model).tensors, strict=False)  # the decoder is tied to the embeddings
    return ours, theirs


def hf_target_loss(model: BertForMaskedLM, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["inputs"]).logits
    return F.cross_entropy(logits.flatten(0, 1).index_select(0, batch["target_index"]), batch["targets"])


def masked_batch(generator: torch.Generator) -> dict:
    tokens = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    target_index = torch.randperm(BATCH * SEQ, generator=generator)[: BATCH * SEQ * 15 // 100].sort().values
    inputs = tokens.flatten().index_fill(0, target_index, 4).view(BATCH, SEQ)
    return {"inputs": inputs, "target_index": target_index, "targets": tokens.flatten()[target_index]}


def test_from_the_same_weights_our_mlm_and_hf_take_the_same_training_steps():
    ours, theirs = bert_pair()
    optim_cfg = OptimConfig(lr=2e-3, warmup_steps=2, schedule="linear", min_lr_ratio=0.0)
    steppers = []
    for model in (ours, theirs):
        optimizer = build_optimizer(model, optim_cfg, torch.device("cpu"))
        steppers.append((model, optimizer, build_scheduler(optimizer, optim_cfg, STEPS)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        batch = masked_batch(generator)
        losses, norms = [], []
        for model, optimizer, scheduler in steppers:
            if model is ours:
                loss_sum, count = model(batch)["losses"]["lm"]
                loss = loss_sum / count
            else:
                loss = hf_target_loss(model, batch)
            loss.backward()
            norms.append(nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.clip_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(norms[0], norms[1], rtol=1e-4, atol=1e-5)
    final = hf_model(ours.model).tensors
    for name, tensor in theirs.state_dict().items():
        if name in final:
            torch.testing.assert_close(tensor, final[name], rtol=1e-4, atol=1e-5, msg=name)
