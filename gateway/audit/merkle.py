"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and their verification.

Why this module exists: the audit log is only tamper-evident if anyone can recompute its root and
check inclusion and consistency proofs with standard transparency-log tools. So every hash here is
exactly RFC 9162 section 2.1 (SHA-256, leaf prefix 0x00, node prefix 0x01), and the verifiers are
the RFC's own algorithms (2.1.3.2 and 2.1.4.2), transcribed step by step so they can be reviewed
against the text.

Pure: no I/O, no clock, no logging, no asyncio. Preconditions are stated per function; verifiers
never return a bool, they return None or raise :class:`ProofError` (a forgotten ``if`` must not
accept a forgery).

Two families of helpers:

* Reference versions (:func:`root`, :func:`inclusion_proof`, :func:`consistency_proof`) compute
  from the full list of leaf hashes, following the RFC's recursive definitions (MTH, PATH,
  SUBPROOF). They are O(n) per call: meant for tests, small trees and offline auditors, not for the
  serving path.
* :class:`Frontier`, the compact right edge of the tree (one perfect-subtree hash per set bit of
  the size). An appender keeps only this and extends the root in O(log n) per leaf, and learns
  which perfect subtrees each append completes, so a store can persist them for later proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "ProofError",
    "SubtreeHash",
    "consistency_proof",
    "consistency_roots",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 9162 section 2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_SIZE_BYTES = 8  # Frontier serialization: tree size as an unsigned 64-bit big-endian integer.


class ProofError(ValueError):
    """A proof, a size or a hash does not verify. The message says which check failed."""


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: SHA-256(0x00 || data).

    The 0x00 prefix (versus 0x01 for interior nodes) is what stops a second-preimage attack that
    passes an interior node off as a leaf.
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (requires n > 1): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves (RFC 9162 section 2.1.1). Reference version, O(n).

    Takes leaf hashes rather than leaf data because that is what a store keeps; hash the data
    with :func:`leaf_hash` first.
    """
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root(leaf_hashes[:k]), root(leaf_hashes[k:]))


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 section 2.1.3.1), from the first ``size`` leaf hashes.

    Reference version: recomputes subtree roots from the leaves. Requires 0 <= index < size <=
    len(leaf_hashes); raises ValueError otherwise, since a proof for a leaf outside the tree does
    not exist.
    """
    if not 0 <= index < size <= len(leaf_hashes):
        raise ValueError(f"need 0 <= index < size <= {len(leaf_hashes)}, got {index}, {size}")
    return _path(index, leaf_hashes[:size])


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root(d[k:])]
    return [*_path(m - k, d[k:]), root(d[:k])]


def consistency_proof(m: int, n: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 section 2.1.4.1), from the first ``n`` leaf hashes.

    Reference version. Requires 0 <= m <= n <= len(leaf_hashes). For m == 0 or m == n the proof
    is empty: the empty tree is a prefix of every tree and a tree is consistent with itself.
    """
    if not 0 <= m <= n <= len(leaf_hashes):
        raise ValueError(f"need 0 <= m <= n <= {len(leaf_hashes)}, got {m}, {n}")
    if m in (0, n):
        return []
    return _subproof(m, leaf_hashes[:n], complete=True)


def _subproof(m: int, d: Sequence[bytes], *, complete: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if complete else [root(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], complete=complete), root(d[k:])]
    return [*_subproof(m - k, d[k:], complete=False), root(d[:k])]


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{name} is {len(value)} bytes, expected {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    RFC 9162 section 2.1.3.2, step by step (fn, sn, r as in the RFC). Returns None on success;
    raises :class:`ProofError` on any mismatch, including a wrong proof length, which the RFC
    catches through the final ``sn == 0`` check.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_hash("root", root)
    if not 0 <= index < size:  # Step 1.
        raise ProofError(f"leaf index {index} is not inside a tree of size {size}")
    fn, sn = index, size - 1  # Step 2.
    r = leaf_hash  # Step 3.
    for i, p in enumerate(proof):  # Step 4.
        _check_hash(f"proof[{i}]", p)
        if sn == 0:  # 4a: more proof than path.
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:  # 4b.
            r = node_hash(p, r)
            while fn and not fn & 1:  # Only runs when fn == sn on a left child.
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c.
        sn >>= 1
    if sn != 0:  # Step 5.
        raise ProofError("inclusion proof is shorter than the path to the root")
    if r != root:
        raise ProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size1, root1) is a prefix of the tree (size2, root2).

    RFC 9162 section 2.1.4.2 for 0 < size1 < size2. The RFC leaves the trivial cases out; here
    they are strict: size1 == size2 needs an empty proof and root1 == root2, size1 == 0 needs an
    empty proof and root1 == EMPTY_ROOT (a checkpoint of the empty tree must carry the empty
    root). Returns None or raises :class:`ProofError`.
    """
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    if not 0 <= size1 <= size2:
        raise ProofError(f"sizes go backwards or are negative: {size1} -> {size2}")
    if size1 == 0 or size1 == size2:
        if proof:
            raise ProofError("consistency proof must be empty for these sizes")
        expected = EMPTY_ROOT if size1 == 0 else root2
        if root1 != expected:
            raise ProofError("roots of equal or empty trees do not match")
        return
    fr, sr = consistency_roots(size1, size2, proof, root1)
    if fr != root1:
        raise ProofError("consistency proof does not lead to the first root")
    if sr != root2:
        raise ProofError("consistency proof does not lead to the second root")


def consistency_roots(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> tuple[bytes, bytes]:
    """The roots of the trees of ``size1`` and ``size2`` that ``proof`` leads to.

    RFC 9162 section 2.1.4.2, steps 1-7, for 0 < size1 < size2 (when size1 is a power of two
    the proof starts from ``root1``, which then is also the first root returned). Raises
    :class:`ProofError` for other sizes or a proof of the wrong length; comparing the roots
    is the caller's. Apart from :func:`verify_consistency` because a witness must also know
    where a refused proof leads: to the log's signed root from another root at size1 is a
    fork the log signed, anything else proves nothing against the log.
    """
    if not 0 < size1 < size2:
        raise ProofError(f"no consistency proof between sizes {size1} and {size2}")
    if not proof:  # Step 1.
        raise ProofError("consistency proof is empty")
    for i, c in enumerate(proof):
        _check_hash(f"proof[{i}]", c)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # Step 2: size1 is a power of two.
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1  # Step 3.
    while fn & 1:  # Step 4.
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # Step 5.
    for c in path[1:]:  # Step 6.
        if sn == 0:  # 6a.
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:  # 6b.
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:  # Only runs when fn == sn on a left child.
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c.
        sn >>= 1
    if sn != 0:  # Step 7.
        raise ProofError("consistency proof is shorter than the path to the root")
    return fr, sr


@dataclass(frozen=True, slots=True)
class SubtreeHash:
    """The hash of a perfect subtree: leaves [index * 2**level, (index + 1) * 2**level).

    (level, index) is the node id a store keys its ``nodes`` table by; level 0 is a leaf.
    """

    level: int
    index: int
    hash: bytes


class Frontier:
    """The right edge of a Merkle tree: one perfect-subtree hash per set bit of ``size``.

    Why: to extend the root by one leaf you only need the roots of the maximal perfect subtrees
    that tile [0, size) from the left (largest first), e.g. size 6 = 4 + 2 keeps MTH(D[0:4]) and
    MTH(D[4:6]). Appending merges equal-sized neighbours like a binary counter carry, so it costs
    O(log n) hashes, and :meth:`root` folds at most log2(n) hashes from the right. The frontier
    serializes to ``size (8 bytes, big-endian) || hashes``, small enough to keep in one database
    row that every appender reads and rewrites inside its transaction.

    Not thread-safe; each appender works on its own copy.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []  # Largest (leftmost) subtree first.

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect-subtree hashes of the right edge, leftmost (largest) first."""
        return tuple(self._hashes)

    def append(self, leaf_hash: bytes) -> list[SubtreeHash]:
        """Add a leaf hash; return the interior (level >= 1) subtrees it completes, lowest first.

        A store persists the returned hashes so that proofs can later be assembled from stored
        nodes instead of rehashing leaves. Every perfect subtree of the tree is returned exactly
        once over the life of the frontier, when its last leaf arrives.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        completed: list[SubtreeHash] = []
        h, level, index = leaf_hash, 0, self._size
        while (self._size >> level) & 1:  # A same-sized subtree waits on the left: merge.
            h = node_hash(self._hashes.pop(), h)
            level += 1
            index >>= 1
            completed.append(SubtreeHash(level, index, h))
        self._hashes.append(h)
        self._size += 1
        return completed

    def root(self) -> bytes:
        """MTH of all leaves appended so far, equal to :func:`root` over the same leaf hashes."""
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r

    def to_bytes(self) -> bytes:
        """Serialize as ``size (uint64 big-endian) || hashes`` (leftmost first)."""
        return self._size.to_bytes(_SIZE_BYTES, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> Frontier:
        """Inverse of :meth:`to_bytes`; raises ValueError if the length disagrees with the size."""
        if len(data) < _SIZE_BYTES:
            raise ValueError("frontier is shorter than its size field")
        size = int.from_bytes(data[:_SIZE_BYTES], "big")
        body = data[_SIZE_BYTES:]
        if len(body) != size.bit_count() * HASH_SIZE:
            raise ValueError(f"frontier of size {size} needs {size.bit_count()} hashes")
        f = cls()
        f._size = size
        f._hashes = [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)]
        return f

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frontier):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    __hash__ = None  # type: ignore[assignment]  # Mutable: not hashable.

    def __repr__(self) -> str:
        return f"Frontier(size={self._size})"
