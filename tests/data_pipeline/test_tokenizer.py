"""The tokenizer interface: kind dispatch, file fingerprints, and pickling as a spec."""
from __future__ import annotations

import pickle

import pytest

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import TokenizerSpec, files_fingerprint, load_tokenizer
from tests.data_pipeline.conftest import write


def test_unknown_kind_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(TokenizerSpec("sentencepiece", str(tmp_path / "vocab")))


def test_fingerprint_depends_only_on_file_contents(tmp_path):
    a, same, other = (write(tmp_path / name, text) for name, text in (("a", "x 1\n"), ("b", "x 1\n"), ("c", "x 2\n")))
    assert files_fingerprint(a) == files_fingerprint(same) != files_fingerprint(other)
    assert len(files_fingerprint(a)) == 16


def test_fingerprint_tells_apart_where_one_file_ends(tmp_path):
    a, b = write(tmp_path / "a", "ab"), write(tmp_path / "b", "c")
    c, d = write(tmp_path / "c", "a"), write(tmp_path / "d", "bc")
    assert files_fingerprint(a, b) != files_fingerprint(c, d)


@pytest.mark.parametrize("spec_name", ["wordpiece_spec", "bpe_spec"])
def test_tokenizer_pickles_as_its_spec_and_encodes_the_same(spec_name, request):
    tok = load_tokenizer(request.getfixturevalue(spec_name))
    tok.encode("warm the cache up")
    clone = pickle.loads(pickle.dumps(tok))
    assert len(pickle.dumps(tok)) < 1000
    assert (clone.fingerprint, clone.encode("Message headers")) == (tok.fingerprint, tok.encode("Message headers"))
