"""RFC 9162 Merkle tree: known answers from transparency-dev/merkle, plus hypothesis properties.

Provenance of the known-answer vectors (hex copied verbatim, not recomputed here):

* Leaf inputs, node hashes of every perfect subtree, root hashes for sizes 0..8 and the compact
  ranges: transparency-dev/merkle ``testonly/constants.go`` (LeafInputs, NodeHashes, RootHashes,
  CompactTrees), commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1. The same 8-leaf tree is the
  test tree of google/certificate-transparency ``cpp/merkletree/merkle_tree_test.cc``.
* Inclusion and consistency proofs: transparency-dev/merkle ``proof/verify_test.go``
  (inclusionProofs, consistencyProofs; leaf numbers there are 1-based, here 0-based indexes),
  commit 02194e9afb6c1d95b5381350007963aa70fff472. The corruption probes mirror its
  corruptInclusionProof / corruptConsistencyProof.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import merkle
from gateway.audit.merkle import Frontier, ProofError

LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]

NODE_HASHES = [  # [level][index]
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]
NH = [[bytes.fromhex(h) for h in level] for level in NODE_HASHES]

ROOTS = [  # By tree size, 0..8.
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]

COMPACT_TREES = [  # Frontier hashes by size, as (level, index) into NH.
    [],
    [(0, 0)],
    [(1, 0)],
    [(1, 0), (0, 2)],
    [(2, 0)],
    [(2, 0), (0, 4)],
    [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)],
    [(3, 0)],
]

INCLUSION_PROOFS = [  # (index, size, proof)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

CONSISTENCY_PROOFS = [  # (size1, size2, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
LEAF_HASHES = [merkle.leaf_hash(d) for d in LEAVES]


def _hex(proof: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in proof]


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ (1 << bit)]) + out[i][1:]
    return out


# -- known answers -------------------------------------------------------------------------


def test_leaf_hash_has_0x00_prefix_and_matches_vectors() -> None:
    assert NH[0] == LEAF_HASHES
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()


def test_node_hash_has_0x01_prefix() -> None:
    assert merkle.node_hash(NH[0][0], NH[0][1]) == NH[1][0]
    assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


def test_empty_tree_root_is_sha256_of_empty_string() -> None:
    assert merkle.root([]) == merkle.EMPTY_ROOT == ROOTS[0]
    assert Frontier().root() == ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_root_matches_vectors_for_every_size(size: int) -> None:
    assert merkle.root(LEAF_HASHES[:size]) == ROOTS[size]


def test_perfect_subtree_hashes_match_vectors() -> None:
    for level, hashes in enumerate(NH):
        for index, expected in enumerate(hashes):
            width = 1 << level
            assert merkle.root(LEAF_HASHES[index * width : (index + 1) * width]) == expected


def test_frontier_matches_compact_tree_vectors_and_roots() -> None:
    """The frontier after n appends is the compact range of transparency-dev, root included."""
    f = Frontier()
    for size in range(9):
        assert f.size == size
        assert list(f.hashes) == [NH[level][index] for level, index in COMPACT_TREES[size]]
        assert f.root() == ROOTS[size]
        if size < 8:
            f.append(LEAF_HASHES[size])


def test_frontier_reports_each_completed_subtree_once_with_its_vector_hash() -> None:
    f = Frontier()
    completed = [node for lh in LEAF_HASHES for node in f.append(lh)]
    expected = {(lvl, i): h for lvl in range(1, 4) for i, h in enumerate(NH[lvl])}
    assert {(n.level, n.index): n.hash for n in completed} == expected
    assert len(completed) == len(expected)


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_proof_vectors(index: int, size: int, proof: list[str]) -> None:
    expected = _hex(proof)
    assert merkle.inclusion_proof(index, size, LEAF_HASHES) == expected
    merkle.verify_inclusion(LEAF_HASHES[index], index, size, expected, ROOTS[size])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_PROOFS)
def test_corrupted_inclusion_proofs_are_rejected(index: int, size: int, proof: list[str]) -> None:
    """Every probe of transparency-dev's corruptInclusionProof must raise."""
    p, lh, r = _hex(proof), LEAF_HASHES[index], ROOTS[size]
    probes: list[tuple[int, int, bytes, list[bytes], bytes]] = [
        (index - 1, size, lh, p, r),
        (index + 1, size, lh, p, r),
        (index ^ 2, size, lh, p, r),
        (index, size * 2, lh, p, r),
        (index, size // 2, lh, p, r),
        (index, size, merkle.leaf_hash(b"WrongLeaf"), p, r),
        (index, size, lh, p, merkle.EMPTY_ROOT),
        (index, size, lh, p, SOME_HASH),
        (index, size, lh, [*p, b""], r),
        (index, size, lh, [*p, r], r),
        (index, size, lh, [b"", *p], r),
        (index, size, lh, [r, *p], r),
    ]
    probes += [(index, size, lh, _flip(p, i, 3), r) for i in range(len(p))]
    if p:
        probes.append((index, size, lh, p[:-1], r))
    if len(p) > 1:
        probes.append((index, size, lh, [p[0], SOME_HASH, *p[1:]], r))
    for i, (pi, ps, plh, pp, pr) in enumerate(probes):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(plh, pi, ps, pp, pr)
            pytest.fail(f"probe {i} verified")


def test_inclusion_in_single_leaf_tree_is_leaf_equals_root() -> None:
    h = merkle.leaf_hash(b"data")
    merkle.verify_inclusion(h, 0, 1, [], h)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(h, 0, 1, [], SOME_HASH)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(b"", 0, 1, [], b"")  # Wrong hash sizes.


def test_a_hash_of_the_wrong_length_is_refused_and_named() -> None:
    """Every input hash is checked for 32 bytes first, and the refusal says which one: the
    verify API reports "exactly why not". A 31-byte leaf equal to a 31-byte root is no tree."""
    index, size, proof = INCLUSION_PROOFS[2]  # Leaf 5 of 8: three proof hashes.
    lh, p, r = LEAF_HASHES[index], _hex(proof), ROOTS[size]
    assert len(p) == 3
    short = b"\x00" * 31
    with pytest.raises(ProofError, match=r"^leaf hash is 31 bytes"):
        merkle.verify_inclusion(short, 0, 1, [], short)
    with pytest.raises(ProofError, match=r"^root is 33 bytes"):
        merkle.verify_inclusion(lh, index, size, p, r + b"\x00")
    with pytest.raises(ProofError, match=r"^proof\[1\] is 31 bytes"):
        merkle.verify_inclusion(lh, index, size, [p[0], p[1][:31], *p[2:]], r)
    with pytest.raises(ProofError, match=r"^root1 is 31 bytes"):
        merkle.verify_consistency(3, 3, [], short, short)
    with pytest.raises(ProofError, match=r"^root2 is 31 bytes"):
        merkle.verify_consistency(3, 3, [], ROOTS[3], ROOTS[3][:31])
    c = _hex(CONSISTENCY_PROOFS[2][2])
    s1, s2 = CONSISTENCY_PROOFS[2][0], CONSISTENCY_PROOFS[2][1]
    assert len(c) == 3
    with pytest.raises(ProofError, match=r"^proof\[1\] is 31 bytes"):
        merkle.consistency_roots(s1, s2, [c[0], c[1][:31], *c[2:]], ROOTS[s1])


def test_a_proof_one_hash_too_long_is_refused_as_longer_than_the_path() -> None:
    """The RFC's own check (step 4a / 6a), not merely a root mismatch further on."""
    index, size, proof = INCLUSION_PROOFS[2]
    p = _hex(proof)
    with pytest.raises(ProofError, match="longer than the path"):
        merkle.verify_inclusion(LEAF_HASHES[index], index, size, [*p, SOME_HASH], ROOTS[size])
    s1, s2, cproof = CONSISTENCY_PROOFS[2]
    c = _hex(cproof)
    with pytest.raises(ProofError, match="longer than the path"):
        merkle.verify_consistency(s1, s2, [*c, SOME_HASH], ROOTS[s1], ROOTS[s2])


@pytest.mark.parametrize(("size1", "size2"), [(2, 1), (-1, 2), (0, -1), (-2, -1)])
def test_consistency_between_sizes_that_go_backwards_or_below_zero_is_refused(
    size1: int, size2: int
) -> None:
    """Including "from the empty tree to size -1", which the empty-tree shortcut would pass."""
    e = merkle.EMPTY_ROOT
    with pytest.raises(ProofError, match="sizes go backwards or are negative"):
        merkle.verify_consistency(size1, size2, [], e, e)


@pytest.mark.parametrize(("size1", "size2"), [(0, 3), (3, 3), (4, 3), (-1, 3)])
def test_consistency_roots_exist_only_for_a_real_step(size1: int, size2: int) -> None:
    """consistency_roots (the witness's tool) has no trivial cases: those are the caller's."""
    with pytest.raises(ProofError, match="no consistency proof between sizes"):
        merkle.consistency_roots(size1, size2, [SOME_HASH, SOME_HASH], SOME_HASH)


@pytest.mark.parametrize(("m", "n"), [(3, 2), (-1, 2), (1, 9), (9, 9)])
def test_a_reference_consistency_proof_outside_the_leaves_is_a_value_error(m: int, n: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= m <= n <= 8"):
        merkle.consistency_proof(m, n, LEAF_HASHES)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (-1, 1)])
def test_inclusion_outside_the_tree_is_rejected(index: int, size: int) -> None:
    with pytest.raises(ProofError):
        merkle.verify_inclusion(SOME_HASH, index, size, [], merkle.EMPTY_ROOT)
    with pytest.raises(ValueError):
        merkle.inclusion_proof(index, size, LEAF_HASHES)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY_PROOFS)
def test_consistency_proof_vectors(size1: int, size2: int, proof: list[str]) -> None:
    expected = _hex(proof)
    assert merkle.consistency_proof(size1, size2, LEAF_HASHES) == expected
    merkle.verify_consistency(size1, size2, expected, ROOTS[size1], ROOTS[size2])


@pytest.mark.parametrize(("size1", "size2", "proof"), [c for c in CONSISTENCY_PROOFS if c[2]])
def test_corrupted_consistency_proofs_are_rejected(
    size1: int, size2: int, proof: list[str]
) -> None:
    """Every probe of transparency-dev's corruptConsistencyProof must raise."""
    p, r1, r2 = _hex(proof), ROOTS[size1], ROOTS[size2]
    wrong = merkle.leaf_hash(b"WrongRoot")
    probes: list[tuple[int, int, list[bytes], bytes, bytes]] = [
        (size1 - 1, size2, p, r1, r2),
        (size1 + 1, size2, p, r1, r2),
        (size1 ^ 2, size2, p, r1, r2),
        (size1, size2 * 2, p, r1, r2),
        (size1, size2 // 2, p, r1, r2),
        (size1, size2, p, wrong, r2),
        (size1, size2, p, r1, wrong),
        (size1, size2, p, r2, r1),
        (size1, size2, [], r1, r2),
        (size1, size2, [*p, b""], r1, r2),
        (size1, size2, [*p, r1], r1, r2),
        (size1, size2, [*p, r2], r1, r2),
        (size1, size2, [b"", *p], r1, r2),
        (size1, size2, [r1, *p], r1, r2),
        (size1, size2, [r2, *p], r1, r2),
        (size1, size2, [p[0], *p], r1, r2),
        (size1, size2, p[:-1], r1, r2),
    ]
    probes += [(size1, size2, _flip(p, i, 4), r1, r2) for i in range(len(p))]
    for i, (s1, s2, pp, pr1, pr2) in enumerate(probes):
        with pytest.raises(ProofError):
            merkle.verify_consistency(s1, s2, pp, pr1, pr2)
            pytest.fail(f"probe {i} verified")


def test_trivial_consistency_cases_are_strict() -> None:
    """Equal sizes need equal roots and no proof; from size 0 the first root must be empty."""
    merkle.verify_consistency(0, 0, [], merkle.EMPTY_ROOT, merkle.EMPTY_ROOT)
    merkle.verify_consistency(0, 5, [], merkle.EMPTY_ROOT, ROOTS[5])
    merkle.verify_consistency(3, 3, [], ROOTS[3], ROOTS[3])
    bad = [
        (3, 3, [], ROOTS[3], ROOTS[4]),  # Same size, different roots: a fork.
        (3, 3, [ROOTS[3]], ROOTS[3], ROOTS[3]),  # Proof must be empty.
        (0, 5, [ROOTS[5]], merkle.EMPTY_ROOT, ROOTS[5]),
        (0, 5, [], ROOTS[1], ROOTS[5]),  # Size 0 has the empty root.
        (2, 1, [], ROOTS[2], ROOTS[1]),  # Time travel.
        (1, 2, [], ROOTS[1], ROOTS[2]),  # Empty proof for a real step.
        (-1, 2, [], ROOTS[1], ROOTS[2]),
    ]
    for s1, s2, p, r1, r2 in bad:
        with pytest.raises(ProofError):
            merkle.verify_consistency(s1, s2, p, r1, r2)


def test_a_frontier_equals_only_a_frontier_and_prints_its_size_not_its_hashes() -> None:
    f = Frontier()
    f.append(LEAF_HASHES[0])
    assert f == Frontier.from_bytes(f.to_bytes())
    assert f != Frontier()
    assert f != f.to_bytes()  # Another type: not equal, and no AttributeError.
    assert (f == f.to_bytes()) is False
    other = Frontier()
    other.append(LEAF_HASHES[1])
    assert f != other  # Same size, another leaf.
    size_2 = Frontier.from_bytes((2).to_bytes(8, "big") + LEAF_HASHES[0])
    assert size_2.hashes == f.hashes and f != size_2  # Same hashes, another size.
    assert repr(f) == "Frontier(size=1)"


def test_a_completed_subtree_reported_by_the_frontier_cannot_be_altered() -> None:
    """A store persists what append() reports; the report itself stays as computed."""
    f = Frontier()
    f.append(LEAF_HASHES[0])
    [completed] = f.append(LEAF_HASHES[1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        completed.hash = SOME_HASH  # type: ignore[misc]


def test_frontier_serialization_roundtrip_and_validation() -> None:
    f = Frontier()
    for lh in LEAF_HASHES[:7]:
        f.append(lh)
    data = f.to_bytes()
    assert len(data) == 8 + 3 * 32
    g = Frontier.from_bytes(data)
    assert g == f and g.root() == ROOTS[7]
    g.append(LEAF_HASHES[7])
    assert g.root() == ROOTS[8] and f.size == 7  # A copy, not a view.
    for broken in (b"", data[:-1], data + b"\x00" * 32, (8).to_bytes(8, "big") + data[8:]):
        with pytest.raises(ValueError):
            Frontier.from_bytes(broken)
    assert Frontier.from_bytes(Frontier().to_bytes()) == Frontier()


def test_frontier_rejects_a_leaf_hash_of_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        Frontier().append(b"short")


# -- properties ----------------------------------------------------------------------------

# Distinct leaves: with duplicates, a proof for one copy legitimately verifies for the other.
leaf_lists = st.lists(st.binary(max_size=8), min_size=1, max_size=70, unique=True)


# No deadline: reference proofs are O(n log n) and machines are shared; slowness is no bug.
@settings(deadline=None)
@given(leaf_lists)
def test_frontier_root_equals_reference_root_at_every_size(leaves: list[bytes]) -> None:
    hashes = [merkle.leaf_hash(d) for d in leaves]
    f = Frontier()
    nodes = {}
    for size, h in enumerate(hashes, start=1):
        for n in f.append(h):
            nodes[(n.level, n.index)] = n.hash
        assert f.root() == merkle.root(hashes[:size])
        assert Frontier.from_bytes(f.to_bytes()) == f
    for (level, index), h in nodes.items():  # Every reported node is that perfect subtree.
        assert merkle.root(hashes[index << level : (index + 1) << level]) == h
    # Perfect interior subtrees of n leaves: sum of n >> level for level >= 1 = n - popcount(n).
    assert len(nodes) == len(hashes) - len(hashes).bit_count()


@settings(deadline=None)
@given(leaf_lists, st.data())
def test_every_inclusion_proof_verifies_and_any_change_breaks_it(
    leaves: list[bytes], data: st.DataObject
) -> None:
    hashes = [merkle.leaf_hash(d) for d in leaves]
    size = data.draw(st.integers(1, len(hashes)), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = merkle.inclusion_proof(index, size, hashes)
    r = merkle.root(hashes[:size])
    merkle.verify_inclusion(hashes[index], index, size, proof, r)

    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        bad = list(proof)
        bad[i] = (int.from_bytes(bad[i], "big") ^ (1 << bit)).to_bytes(32, "big")
        with pytest.raises(ProofError):
            merkle.verify_inclusion(hashes[index], index, size, bad, r)
    for wrong_index in {index - 1, index + 1, index ^ 2} - {index}:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(hashes[index], wrong_index, size, proof, r)
    for wrong_size in (size * 2, size // 2):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(hashes[index], index, wrong_size, proof, r)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(merkle.leaf_hash(b"not a leaf" * 2), index, size, proof, r)


@settings(max_examples=150, deadline=None)
@given(leaf_lists, st.data())
def test_every_consistency_proof_verifies_and_any_change_breaks_it(
    leaves: list[bytes], data: st.DataObject
) -> None:
    hashes = [merkle.leaf_hash(d) for d in leaves]
    size2 = data.draw(st.integers(0, len(hashes)), label="size2")
    size1 = data.draw(st.integers(0, size2), label="size1")
    proof = merkle.consistency_proof(size1, size2, hashes)
    r1, r2 = merkle.root(hashes[:size1]), merkle.root(hashes[:size2])
    merkle.verify_consistency(size1, size2, proof, r1, r2)
    if not proof:  # Trivial step (0 -> n or n -> n): nothing to corrupt.
        return

    i = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 255), label="bit")
    bad = list(proof)
    bad[i] = (int.from_bytes(bad[i], "big") ^ (1 << bit)).to_bytes(32, "big")
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, bad, r1, r2)
    for wrong1 in (size1 - 1, size1 + 1):
        with pytest.raises(ProofError):
            merkle.verify_consistency(wrong1, size2, proof, r1, r2)
    for wrong2 in (size2 * 2, size2 // 2):
        with pytest.raises(ProofError):
            merkle.verify_consistency(size1, wrong2, proof, r1, r2)
    with pytest.raises(ProofError):
        merkle.verify_consistency(size1, size2, proof, r2, r1)
