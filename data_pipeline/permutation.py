"""A keyed pseudo-random permutation of [0, n), evaluated per index in O(1) memory.

The per-epoch shuffle must not need an array of size n (a corpus of 10^10 samples would need 80 GB for
`np.random.permutation`) and must be computable for any position, so resuming is a seek rather than a
replay. A Feistel network is a bijection on [0, 2^bits) for any round function; walking the cycle
(re-applying it until the value lands below n) restricts it to a bijection on [0, n). With bits the width
of n - 1, fewer than half the domain lies outside [0, n), so the expected number of walks is below two.
"""
from __future__ import annotations

import hashlib
import struct

import numpy as np

_ROUNDS = 8
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast bijective scrambler of uint64 values (wraps by design)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedPermutation:
    """A bijection of [0, n) fixed by (seed, epoch, stream); call it on an index array.

    `stream` separates independent permutations under one seed and epoch (e.g. one per data source).
    The key schedule uses blake2b over the packed key, so results are identical on every platform.
    """

    def __init__(self, n: int, seed: int, epoch: int, stream: int = 0) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        # Unbalanced Feistel: a value is (high, low) with these widths; each round emits
        # (low, high ^ F(low)), so the two widths swap every round and any width `bits` works.
        self._high_bits, self._low_bits = (bits + 1) // 2, bits // 2
        key = struct.pack("<QQQ", seed & _MASK64, epoch & _MASK64, stream & _MASK64)
        digest = hashlib.blake2b(key, digest_size=8 * _ROUNDS, person=b"kperm-v1").digest()
        self._keys = np.frombuffer(digest, dtype="<u8").astype(np.uint64)

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        high_bits, low_bits = self._high_bits, self._low_bits
        for key in self._keys:
            low_mask = np.uint64((1 << low_bits) - 1)
            high, low = x >> np.uint64(low_bits), x & low_mask
            high = (high ^ _mix64(low ^ key)) & np.uint64((1 << high_bits) - 1)
            x = (low << np.uint64(high_bits)) | high
            high_bits, low_bits = low_bits, high_bits
        return x

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """The images of `index` (values in [0, n)), as int64 with the same shape."""
        x = np.asarray(index, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.n):
            raise IndexError(f"permutation index out of range [0, {self.n})")
        y = self._feistel(x.reshape(-1).astype(np.uint64))
        outside = np.flatnonzero(y >= np.uint64(self.n))
        while outside.size:
            y[outside] = self._feistel(y[outside])
            outside = outside[y[outside] >= np.uint64(self.n)]
        return y.astype(np.int64).reshape(x.shape)
