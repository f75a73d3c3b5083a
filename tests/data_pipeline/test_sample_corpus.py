"""The stdlib sample corpus: deterministic, a few MB, one document per line, a ~2% hash-chosen hold-out."""
from __future__ import annotations

import pytest

from data_pipeline.sample_corpus import build_sample_corpus, is_held_out, source_files, stdlib_dir


def contents(corpus) -> list[bytes]:
    return [p.read_bytes() for p in (corpus.train, corpus.valid, corpus.paired_train, corpus.paired_valid)]


def test_building_twice_gives_identical_files(small_corpus, tmp_path):
    again = build_sample_corpus(tmp_path, stdlib_dir() / "email")
    assert contents(again) == contents(small_corpus)


def test_test_suites_and_installed_packages_are_not_sources():
    parts = {part for path in source_files(stdlib_dir()) for part in path.relative_to(stdlib_dir()).parts}
    assert not parts & {"test", "site-packages", "idle_test"}


def test_every_line_is_one_whole_document(small_corpus):
    for line in small_corpus.train.read_text().splitlines():
        assert line == " ".join(line.split()) and len(line.split()) >= 5


def test_pairs_have_exactly_one_tab_and_two_non_empty_sides(small_corpus):
    lines = small_corpus.paired_train.read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 2 and all(line.split("\t")) for line in lines)


def test_split_follows_the_hash_rule_and_documents_are_unique(small_corpus):
    train, valid = (p.read_text().splitlines() for p in (small_corpus.train, small_corpus.valid))
    assert valid and all(map(is_held_out, valid)) and not any(map(is_held_out, train))
    assert len(set(train + valid)) == len(train + valid)


@pytest.mark.slow
def test_full_corpus_is_a_few_mb_with_about_two_percent_held_out(full_corpus):
    sizes = {p.name: p.stat().st_size for p in (full_corpus.train, full_corpus.valid, full_corpus.paired_train)}
    assert 2_500_000 < sizes["train.txt"] + sizes["valid.txt"] < 6_000_000
    assert sizes["paired_train.tsv"] > 1_000_000
    assert 0.01 < sizes["valid.txt"] / sizes["train.txt"] < 0.04
