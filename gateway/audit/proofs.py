"""Which stored perfect subtrees an RFC 9162 proof needs, and how to fold them into the proof.

Why this module exists: a store keeps the hash of every complete perfect subtree (see
``gateway.audit.sqlite``), so a proof for a tree of any size up to the current one can be built
with O(log n) lookups instead of rehashing leaves. Most nodes of an RFC 9162 inclusion or
consistency proof are such perfect subtrees. At most one is not: on the right border of a tree
whose size is not a power of two, the proof contains the root of an incomplete ("ephemeral")
subtree, which is folded here from the perfect subtrees that tile it. The shape follows
transparency-dev/merkle ``proof/proof.go`` (Nodes, Inclusion, Consistency, Rehash), so the two
can be compared line by line.

The split keeps I/O in one place::

    nodes = proofs.inclusion_nodes(index, size)          # pure: which nodes
    proof = nodes.rehash(store.subtree_hashes(nodes.ids))  # I/O only here

Node ids are ``(level, index)``: node (level, index) covers leaves
[index * 2**level, (index + 1) * 2**level); level 0 is a leaf hash.

Pure: no I/O, no clock, no logging. Preconditions are in the docstrings; violating one raises
ValueError (a proof for a leaf or size outside the tree does not exist).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gateway.audit import merkle

__all__ = [
    "NodeId",
    "ProofNodes",
    "consistency_nodes",
    "inclusion_nodes",
    "range_nodes",
    "root_from",
    "root_nodes",
]

NodeId = tuple[int, int]
"""A perfect subtree ``(level, index)``."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProofNodes:
    """The perfect subtrees to fetch for one proof, and which of them fold into one proof hash.

    ``ids`` are all complete in the tree the proof is for, in the order :meth:`rehash` expects
    their hashes. ``ids[begin:end]`` (empty when begin == end) tile the ephemeral node, the
    smallest (rightmost) first: the proof carries their fold instead of the nodes themselves.
    """

    ids: tuple[NodeId, ...]
    begin: int = 0
    end: int = 0

    def rehash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The RFC 9162 proof from the hashes of :attr:`ids` (same order, same length).

        Raises ValueError if the count differs: a short or long answer from a store must not
        turn into a proof that merely fails to verify later.
        """
        return self.fold(hashes, merkle.node_hash)

    def fold(self, values: Sequence[T], combine: Callable[[T, T], T]) -> list[T]:
        """:meth:`rehash` with any ``combine(left, right)``: the proof's shape, hash-free.

        Lets tests check the node selection at sizes no one can hash (combine leaf ranges).
        """
        if len(values) != len(self.ids):
            raise ValueError(f"got {len(values)} hashes for {len(self.ids)} nodes")
        proof = list(values[: self.begin])
        if self.begin < self.end:
            h = values[self.begin]
            for left in values[self.begin + 1 : self.end]:
                h = combine(left, h)  # Each next node is bigger and further left.
            proof.append(h)
        proof.extend(values[max(self.end, self.begin) :])
        return proof


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """The perfect subtrees tiling leaves [begin, end), left to right (a compact range).

    Greedy: at each step take the largest aligned perfect subtree starting at ``begin`` that
    fits. Requires 0 <= begin <= end.
    """
    if not 0 <= begin <= end:
        raise ValueError(f"need 0 <= begin <= end, got {begin}, {end}")
    out: list[NodeId] = []
    while begin < end:
        level = (begin & -begin).bit_length() - 1 if begin else (end - begin).bit_length() - 1
        while begin + (1 << level) > end:
            level -= 1
        out.append((level, begin >> level))
        begin += 1 << level
    return out


def root_nodes(size: int) -> tuple[NodeId, ...]:
    """The perfect subtrees whose fold is the root at ``size``: one per set bit, largest first.

    Requires size >= 0; the empty tree has none (its root is merkle.EMPTY_ROOT).
    """
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    return tuple(range_nodes(0, size))


def root_from(hashes: Sequence[bytes]) -> bytes:
    """MTH from the hashes of :func:`root_nodes` (largest first): fold from the right."""
    if not hashes:
        return merkle.EMPTY_ROOT
    r = hashes[-1]
    for h in reversed(hashes[:-1]):
        r = merkle.node_hash(h, r)
    return r


def inclusion_nodes(index: int, size: int) -> ProofNodes:
    """Nodes of the inclusion proof for leaf ``index`` in the tree of ``size`` leaves.

    Requires 0 <= index < size.
    """
    if not 0 <= index < size:
        raise ValueError(f"need 0 <= index < size, got {index}, {size}")
    return _skip_first(_nodes(index, 0, size))


def consistency_nodes(size1: int, size2: int) -> ProofNodes:
    """Nodes of the consistency proof from the tree of ``size1`` leaves to ``size2``.

    Requires 0 <= size1 <= size2. For size1 == 0 or size1 == size2 the proof is empty (the
    empty tree is a prefix of every tree, a tree is consistent with itself), as in
    merkle.consistency_proof and merkle.verify_consistency.
    """
    if not 0 <= size1 <= size2:
        raise ValueError(f"need 0 <= size1 <= size2, got {size1}, {size2}")
    if size1 in (0, size2):
        return ProofNodes(())
    # The biggest perfect subtree of [0, size1) ending at size1; the proof is that node (unless
    # it is the whole old tree, which the client knows from its checkpoint) plus its inclusion
    # path into the new tree.
    level = (size1 & -size1).bit_length() - 1
    nodes = _nodes((size1 - 1) >> level, level, size2)
    return _skip_first(nodes) if size1 & (size1 - 1) == 0 else nodes


def _nodes(index: int, level: int, size: int) -> ProofNodes:
    """Nodes proving that perfect subtree (level, index) is in the tree of ``size`` leaves.

    First the node itself, then its siblings up to the ``fork`` (where its path leaves the path
    to the tree's right border), then the subtrees tiling the fork's incomplete sibling
    (smallest first, to be folded), then those tiling everything left of the fork (lowest
    first). transparency-dev/merkle proof.nodes, transcribed.
    """
    inner = (index ^ (size >> level)).bit_length() - 1
    fork_level, fork_index = level + inner, index >> inner
    begin, end = fork_index << fork_level, (fork_index + 1) << fork_level
    ids: list[NodeId] = [(level, index)]
    lvl, idx = level, index
    while lvl < fork_level:
        ids.append((lvl, idx ^ 1))
        lvl, idx = lvl + 1, idx >> 1
    first = len(ids)
    ids.extend(reversed(range_nodes(end, size)))
    last = len(ids)
    ids.extend(reversed(range_nodes(0, begin)))
    if first >= last:
        first = last = 0
    return ProofNodes(tuple(ids), first, last)


def _skip_first(nodes: ProofNodes) -> ProofNodes:
    """Drop the proven node itself (the verifier has it), keeping the fold range aligned."""
    if nodes.begin < nodes.end:
        return ProofNodes(nodes.ids[1:], nodes.begin - 1, nodes.end - 1)
    return ProofNodes(nodes.ids[1:])
