"""Proofs from stored subtrees (gateway.audit.proofs): equal to the RFC 9162 reference, and sound.

Provenance: the known-answer proofs are transparency-dev/merkle's (tests/test_merkle.py says
which commit); here they are rebuilt from that repository's node-hash vectors through
``inclusion_nodes`` / ``consistency_nodes`` + ``rehash``, i.e. the way the log serves them.
The exhaustive and property tests compare with ``merkle.inclusion_proof`` /
``merkle.consistency_proof`` (the RFC's recursive definitions over all leaves). The corruption
suite mirrors transparency-dev/merkle ``proof/verify_test.go`` (corruptInclusionProof,
corruptConsistencyProof), run on many random trees instead of one.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import merkle, proofs
from gateway.audit.merkle import ProofError
from gateway.audit.sqlite import SqliteAuditStore
from tests.test_merkle import CONSISTENCY_PROOFS, INCLUSION_PROOFS, NH, _hex

MAX = 70  # Exhaustive up to this size: every power-of-two boundary up to 64, and past it.
Fetch = Callable[[list[tuple[int, int]]], list[bytes]]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[bytes], Fetch]]:
    """A real SqliteAuditStore of MAX leaves, appended in uneven batches; its leaf hashes."""
    store = SqliteAuditStore(str(tmp_path_factory.mktemp("proofs") / "audit.db"))
    records = [b'{"n":%d}' % i for i in range(MAX)]
    start = 0
    for n in [1, 2, 5, 8, 13, 3, 21, 17]:
        store.append_batch(records[start : start + n])
        start += n
    assert store.size() == MAX
    yield [merkle.leaf_hash(r) for r in records], lambda ids: store.subtree_hashes(ids)
    store.close()


def _complete_at(ids: tuple[tuple[int, int], ...], size: int) -> bool:
    return all((index + 1) << level <= size for level, index in ids)


# -- known answers -------------------------------------------------------------------------


def _vector_fetch(ids: tuple[tuple[int, int], ...]) -> list[bytes]:
    return [NH[level][index] for level, index in ids]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_nodes_rebuild_the_vector_proofs(index: int, size: int, proof: list[str]) -> None:
    nodes = proofs.inclusion_nodes(index, size)
    assert nodes.rehash(_vector_fetch(nodes.ids)) == _hex(proof)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY_PROOFS)
def test_consistency_nodes_rebuild_the_vector_proofs(
    size1: int, size2: int, proof: list[str]
) -> None:
    nodes = proofs.consistency_nodes(size1, size2)
    assert nodes.rehash(_vector_fetch(nodes.ids)) == _hex(proof)


def test_the_ephemeral_node_of_a_size_7_tree_is_folded_from_two_stored_subtrees() -> None:
    """Leaf 0 of 7: the proof's last hash covers leaves 4..6, which no stored node does."""
    nodes = proofs.inclusion_nodes(0, 7)
    assert nodes.ids == ((0, 1), (1, 1), (0, 6), (1, 2))
    assert nodes.ids[nodes.begin : nodes.end] == ((0, 6), (1, 2))
    assert nodes.rehash(_vector_fetch(nodes.ids))[-1] == merkle.node_hash(NH[1][2], NH[0][6])


# -- exhaustive, against the reference, on a real store ------------------------------------


def test_inclusion_from_stored_nodes_equals_the_reference_for_every_index_and_size(
    tree: tuple[list[bytes], Fetch],
) -> None:
    leaves, fetch = tree
    for size in range(1, MAX + 1):
        root = merkle.root(leaves[:size])
        for index in range(size):
            nodes = proofs.inclusion_nodes(index, size)
            assert _complete_at(nodes.ids, size), (index, size)
            proof = nodes.rehash(fetch(list(nodes.ids)))
            assert proof == merkle.inclusion_proof(index, size, leaves), (index, size)
            merkle.verify_inclusion(leaves[index], index, size, proof, root)


def test_consistency_from_stored_nodes_equals_the_reference_for_every_pair_of_sizes(
    tree: tuple[list[bytes], Fetch],
) -> None:
    leaves, fetch = tree
    roots = [merkle.root(leaves[:n]) for n in range(MAX + 1)]
    for size2 in range(MAX + 1):
        for size1 in range(size2 + 1):
            nodes = proofs.consistency_nodes(size1, size2)
            assert _complete_at(nodes.ids, size2), (size1, size2)
            proof = nodes.rehash(fetch(list(nodes.ids)))
            assert proof == merkle.consistency_proof(size1, size2, leaves), (size1, size2)
            merkle.verify_consistency(size1, size2, proof, roots[size1], roots[size2])


def test_root_at_every_size_folds_from_stored_nodes(tree: tuple[list[bytes], Fetch]) -> None:
    leaves, fetch = tree
    for size in range(MAX + 1):
        ids = proofs.root_nodes(size)
        assert len(ids) == size.bit_count() and _complete_at(ids, size)
        assert proofs.root_from(fetch(list(ids))) == merkle.root(leaves[:size])


def test_preconditions_are_value_errors() -> None:
    for index, size in [(0, 0), (5, 5), (-1, 3)]:
        with pytest.raises(ValueError):
            proofs.inclusion_nodes(index, size)
    # (0, -1) and (-1, -1) would otherwise pass as "empty tree" and "same size": empty proofs.
    for size1, size2 in [(3, 2), (-1, 2), (0, -1), (-1, -1)]:
        with pytest.raises(ValueError):
            proofs.consistency_nodes(size1, size2)
    with pytest.raises(ValueError):
        proofs.root_nodes(-1)
    with pytest.raises(ValueError):
        proofs.range_nodes(5, 4)


def test_rehash_refuses_a_wrong_number_of_hashes() -> None:
    """A store answering short or long must be an error, not a proof that fails later."""
    nodes = proofs.inclusion_nodes(3, 7)
    hashes = _vector_fetch(nodes.ids)
    with pytest.raises(ValueError):
        nodes.rehash(hashes[:-1])
    with pytest.raises(ValueError):
        nodes.rehash([*hashes, hashes[0]])


def test_the_nodes_of_a_proof_cannot_be_altered_between_fetch_and_rehash() -> None:
    """The ids fetched from the store and the fold range applied to their hashes are one
    value: changing either in between would fold the wrong nodes."""
    nodes = proofs.inclusion_nodes(3, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        nodes.begin = 0  # type: ignore[misc]


def test_trivial_consistency_needs_no_node() -> None:
    assert proofs.consistency_nodes(0, 0).ids == ()
    assert proofs.consistency_nodes(0, 9).ids == ()
    assert proofs.consistency_nodes(9, 9).ids == ()
    assert proofs.root_from([]) == merkle.EMPTY_ROOT


# -- any size: the node selection, checked symbolically ------------------------------------
#
# Hashing a tree of 2**50 leaves is out of reach, but which nodes a proof needs does not depend
# on hash values. So each node stands for the leaf range it covers, "hashing" two adjacent
# ranges joins them, and the result must be exactly the ranges of the RFC's PATH / SUBPROOF.


def _join(left: tuple[int, int], right: tuple[int, int]) -> tuple[int, int]:
    assert left[1] == right[0], (left, right)
    return left[0], right[1]


def _span(node: tuple[int, int]) -> tuple[int, int]:
    level, index = node
    return index << level, (index + 1) << level


def _split(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def _path(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    if hi - lo == 1:
        return []
    k = lo + _split(hi - lo)
    return [*_path(m, lo, k), (k, hi)] if m < k else [*_path(m, k, hi), (lo, k)]


def _subproof(m: int, lo: int, hi: int, complete: bool) -> list[tuple[int, int]]:
    if m == hi:
        return [] if complete else [(lo, hi)]
    k = lo + _split(hi - lo)
    if m <= k:
        return [*_subproof(m, lo, k, complete), (k, hi)]
    return [*_subproof(m, k, hi, False), (lo, k)]


sizes = st.integers(1, 2**62)


@settings(max_examples=500)
@given(sizes, st.data())
def test_inclusion_nodes_have_the_rfc_shape_at_any_size(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    nodes = proofs.inclusion_nodes(index, size)
    assert _complete_at(nodes.ids, size)
    assert len(nodes.ids) <= 2 * size.bit_length()
    assert nodes.fold([_span(n) for n in nodes.ids], _join) == _path(index, 0, size)


@settings(max_examples=500)
@given(sizes, st.data())
def test_consistency_nodes_have_the_rfc_shape_at_any_size(size2: int, data: st.DataObject) -> None:
    size1 = data.draw(st.integers(1, size2), label="size1")
    nodes = proofs.consistency_nodes(size1, size2)
    assert _complete_at(nodes.ids, size2)
    assert len(nodes.ids) <= 2 * size2.bit_length()
    expected = [] if size1 == size2 else _subproof(size1, 0, size2, True)
    assert nodes.fold([_span(n) for n in nodes.ids], _join) == expected


def test_a_compact_range_is_the_aligned_subtrees_tiling_it() -> None:
    """[3, 11) = leaf 3, leaves 4-7, leaves 8-9, leaf 10: each node starts at a multiple of
    its size (worked out by hand from the definition, not by this code)."""
    assert proofs.range_nodes(3, 11) == [(0, 3), (2, 1), (1, 4), (0, 10)]
    assert proofs.range_nodes(4, 12) == [(2, 1), (2, 2)]  # Aligned: not (3, 0) = leaves 0-7.
    assert proofs.range_nodes(0, 6) == [(2, 0), (1, 2)]
    assert proofs.range_nodes(5, 5) == []
    for begin, end in [(-1, 2), (3, 2)]:
        with pytest.raises(ValueError):
            proofs.range_nodes(begin, end)


@given(st.integers(0, 2**62), st.integers(0, 2**62))
def test_range_nodes_tile_any_range_with_aligned_maximal_subtrees(a: int, b: int) -> None:
    begin, end = sorted((a, b))
    ids = proofs.range_nodes(begin, end)
    spans = [_span(n) for n in ids]
    assert [lo for lo, _ in spans] == [begin, *(hi for _, hi in spans[:-1])][: len(spans)]
    assert (spans[-1][1] if spans else begin) == end
    for (l1, i1), (l2, i2) in itertools.pairwise(ids):
        assert not (l1 == l2 and i1 % 2 == 0 and i2 == i1 + 1)  # Siblings would be one node.


@given(st.integers(0, 2**62))
def test_root_nodes_tile_the_tree_largest_first(size: int) -> None:
    spans = [_span(n) for n in proofs.root_nodes(size)]
    assert [b for b, _ in spans] == [0, *(e for _, e in spans[:-1])][: len(spans)]
    assert (spans[-1][1] if spans else 0) == size
    assert all(e - b > e2 - b2 for (b, e), (b2, e2) in itertools.pairwise(spans))


# -- corruption suite on many random trees -------------------------------------------------


class _MemoryNodes:
    """Every perfect subtree of a tree, as a store keeps them (merkle.Frontier reports them)."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.hashes: dict[tuple[int, int], bytes] = {}
        frontier = merkle.Frontier()
        for i, h in enumerate(leaves):
            self.hashes[(0, i)] = h
            for node in frontier.append(h):
                self.hashes[(node.level, node.index)] = node.hash

    def proof(self, nodes: proofs.ProofNodes) -> list[bytes]:
        return nodes.rehash([self.hashes[i] for i in nodes.ids])

    def root(self, size: int) -> bytes:
        return proofs.root_from([self.hashes[i] for i in proofs.root_nodes(size)])


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = (int.from_bytes(out[i], "big") ^ (1 << bit)).to_bytes(32, "big")
    return out


def _random_trees(count: int) -> Iterator[tuple[random.Random, list[bytes], _MemoryNodes]]:
    rng = random.Random(9162)  # Fixed: a failure must reproduce.
    for _ in range(count):
        size = rng.choice([rng.randint(1, 40), rng.randint(41, 300)])
        # Distinct leaves: two equal sibling leaves really do share one proof.
        leaves = [
            merkle.leaf_hash(b"%d:" % i + rng.randbytes(rng.randint(0, 40))) for i in range(size)
        ]
        yield rng, leaves, _MemoryNodes(leaves)


def _refused(check: Callable[[], None], what: str) -> None:
    with pytest.raises(ProofError):
        check()
        pytest.fail(f"altered proof verified: {what}")


def test_altered_inclusion_proofs_fail_and_good_ones_pass_on_many_trees() -> None:
    some = merkle.leaf_hash(b"some other leaf")
    for t, (rng, leaves, store) in enumerate(_random_trees(40)):
        size = rng.randint(1, len(leaves))
        root = store.root(size)
        for index in {0, size - 1, rng.randrange(size)}:
            lh, p = leaves[index], store.proof(proofs.inclusion_nodes(index, size))
            merkle.verify_inclusion(lh, index, size, p, root)  # The good one passes.
            probes: dict[str, tuple[bytes, int, int, list[bytes], bytes]] = {
                "index-1": (lh, index - 1, size, p, root),
                "index+1": (lh, index + 1, size, p, root),
                "index^2": (lh, index ^ 2, size, p, root),
                "size*2": (lh, index, size * 2, p, root),
                "size/2": (lh, index, size // 2, p, root),
                "other leaf hash": (some, index, size, p, root),
                "empty root": (lh, index, size, p, merkle.EMPTY_ROOT),
                "root of another size": (lh, index, size, p, store.root(size - 1)),
                "extra hash at the end": (lh, index, size, [*p, root], root),
                "extra hash in front": (lh, index, size, [root, *p], root),
                "empty extra hash": (lh, index, size, [*p, b""], root),
            }
            if p:
                probes["truncated"] = (lh, index, size, p[:-1], root)
                probes["first dropped"] = (lh, index, size, p[1:], root)
            if len(p) > 1:
                probes["reversed"] = (lh, index, size, p[::-1], root)
            other = (index + 1 + rng.randrange(size - 1)) % size if size > 1 else None
            if other is not None and leaves[other] != lh:
                op = store.proof(proofs.inclusion_nodes(other, size))
                probes["proof of another leaf"] = (lh, index, size, op, root)
                probes["another leaf at its index"] = (lh, other, size, op, root)
            bits = range(256) if t < 5 else rng.sample(range(256), 8)  # Every bit, then samples.
            for i in range(len(p)):
                for bit in bits:
                    probes[f"bit {bit} of proof[{i}]"] = (lh, index, size, _flip(p, i, bit), root)
            for what, (plh, pi, ps, pp, pr) in probes.items():
                if (plh, pi, ps, pp, pr) == (lh, index, size, p, root):
                    continue  # E.g. index ^ 2 == index cannot happen, but stay exact.
                _refused(lambda a=(plh, pi, ps, pp, pr): merkle.verify_inclusion(*a), what)


def test_altered_consistency_proofs_fail_and_good_ones_pass_on_many_trees() -> None:
    wrong = merkle.leaf_hash(b"WrongRoot")
    for t, (rng, leaves, store) in enumerate(_random_trees(40)):
        if len(leaves) < 2:
            continue
        size2 = rng.randint(2, len(leaves))
        for size1 in {1, size2 - 1, rng.randint(1, size2 - 1)}:
            r1, r2 = store.root(size1), store.root(size2)
            p = store.proof(proofs.consistency_nodes(size1, size2))
            merkle.verify_consistency(size1, size2, p, r1, r2)  # The good one passes.
            probes: dict[str, tuple[int, int, list[bytes], bytes, bytes]] = {
                "size1-1": (size1 - 1, size2, p, r1, r2),
                "size1+1": (size1 + 1, size2, p, r1, r2),
                "size1^2": (size1 ^ 2, size2, p, r1, r2),
                "size2*2": (size1, size2 * 2, p, r1, r2),
                "size2/2": (size1, size2 // 2, p, r1, r2),
                "wrong root1": (size1, size2, p, wrong, r2),
                "wrong root2": (size1, size2, p, r1, wrong),
                "swapped roots": (size1, size2, p, r2, r1),
                "empty proof": (size1, size2, [], r1, r2),
                "truncated": (size1, size2, p[:-1], r1, r2),
                "extra root1 at the end": (size1, size2, [*p, r1], r1, r2),
                "extra root2 at the end": (size1, size2, [*p, r2], r1, r2),
                "extra root1 in front": (size1, size2, [r1, *p], r1, r2),
                "extra root2 in front": (size1, size2, [r2, *p], r1, r2),
                "first repeated": (size1, size2, [p[0], *p], r1, r2),
                "empty extra hash": (size1, size2, [*p, b""], r1, r2),
            }
            if size1 + 1 < size2:
                op = store.proof(proofs.consistency_nodes(size1 + 1, size2))
                probes["proof from another size"] = (size1, size2, op, r1, r2)
            bits = range(256) if t < 5 else rng.sample(range(256), 8)
            for i in range(len(p)):
                for bit in bits:
                    probes[f"bit {bit} of proof[{i}]"] = (size1, size2, _flip(p, i, bit), r1, r2)
            for what, args in probes.items():
                _refused(lambda a=args: merkle.verify_consistency(*a), what)
