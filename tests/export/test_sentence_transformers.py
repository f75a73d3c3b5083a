"""A dual encoder exported as a sentence-transformers directory: SentenceTransformer(dir) loads it offline
and encodes text to our encodings; a pooling it cannot express is refused naming the setting."""
from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import load_tokenizer
from export import export_model
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from tests.export.helpers import random_model
from tests.export.test_paired import perturbed

TEXTS = ["tok3 tok12 tok5tok7", "tok40", "tok8 tok9 tok10 tok11 tok12 tok13 tok14 unknown tok2"]


def dual_encoder(**heads) -> DualEncoder:
    return perturbed(DualEncoder(random_model(), DualEncoderConfig(embed_dim=12, **heads), pad_id=0))


def our_encodings(model: DualEncoder, spec, texts: list[str], side: str) -> torch.Tensor:
    ids = load_tokenizer(spec).encode_batch(texts)
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for row, row_ids in enumerate(ids):
        tokens[row, : len(row_ids)] = torch.tensor(row_ids)
    with torch.no_grad():
        return model.encode_context(tokens) if side == "query" else model.encode_response(tokens)


def load(directory, monkeypatch) -> SentenceTransformer:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(directory), device="cpu")


@pytest.mark.parametrize("heads", [dict(pooling="mean", projection_hidden=(20,)),
                                   dict(pooling="first", shared_head=True)], ids=str)
def test_sentence_transformers_encodes_text_to_our_encodings(heads, vocab_spec, tmp_path, monkeypatch):
    model = dual_encoder(**heads)
    directory = export_model(model, vocab_spec, tmp_path, ["sentence-transformers"])["sentence-transformers"]
    st = load(directory, monkeypatch)
    queries = torch.from_numpy(st.encode_query(TEXTS))
    documents = torch.from_numpy(st.encode_document(TEXTS))
    torch.testing.assert_close(queries, our_encodings(model, vocab_spec, TEXTS, "query"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(documents, our_encodings(model, vocab_spec, TEXTS, "document"), rtol=1e-4, atol=1e-5)


def test_a_pooling_sentence_transformers_cannot_express_is_refused_naming_it(vocab_spec, tmp_path):
    with pytest.raises(UserError, match=r"cannot hold objective.dual_encoder.pooling='2ha'") as error:
        export_model(dual_encoder(pooling="2ha"), vocab_spec, tmp_path, ["npz", "sentence-transformers"])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model.npz").exists()
