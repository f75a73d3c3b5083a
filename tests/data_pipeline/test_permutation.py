"""KeyedPermutation: a bijection of [0, n), fixed by its key, computable per index."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from data_pipeline.permutation import KeyedPermutation


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 65, 1000, 4097])
def test_is_a_bijection_of_range_n(n):
    assert sorted(KeyedPermutation(n, seed=11, epoch=2)(np.arange(n)).tolist()) == list(range(n))


def test_same_key_gives_the_same_permutation():
    first, second = (KeyedPermutation(500, 3, 1)(np.arange(500)) for _ in range(2))
    assert np.array_equal(first, second)


@pytest.mark.parametrize("other", [(4, 1, 0), (3, 2, 0), (3, 1, 1)], ids=["seed", "epoch", "stream"])
def test_any_key_part_changes_the_permutation(other):
    base = KeyedPermutation(500, 3, 1, 0)(np.arange(500))
    assert not np.array_equal(base, KeyedPermutation(500, *other)(np.arange(500)))


def test_per_index_calls_agree_with_the_whole_array():
    perm = KeyedPermutation(300, 5, 0)
    whole = perm(np.arange(300))
    assert [int(perm(i)) for i in (0, 17, 299)] == [whole[0], whole[17], whole[299]]
    assert perm(np.arange(300).reshape(15, 20)).tolist() == whole.reshape(15, 20).tolist()


def test_huge_n_needs_no_table():
    perm = KeyedPermutation(10**15, 1, 0)
    images = perm(np.arange(10**15 - 100_000, 10**15))
    assert images.min() >= 0 and images.max() < 10**15 and len(np.unique(images)) == 100_000


def test_index_outside_range_is_refused():
    with pytest.raises(IndexError):
        KeyedPermutation(10, 0, 0)(np.array([10]))


def test_first_position_is_uniform_over_keys():
    counts = collections.Counter(int(KeyedPermutation(10, seed, 0)(0)) for seed in range(5000))
    assert sorted(counts) == list(range(10)) and max(counts.values()) < 600 and min(counts.values()) > 400


def test_far_from_the_identity():
    image = KeyedPermutation(100_000, 9, 0)(np.arange(100_000))
    assert (image == np.arange(100_000)).sum() < 10
    assert abs(np.corrcoef(np.arange(100_000), image)[0, 1]) < 0.02
