"""Offline verification of a whole audit log: every record, the tree, the head and checkpoints.

Why: the log is only tamper-evident if someone actually recomputes it. A security officer holding
a copy of the database (or an export) and the checkpoint verifier key must be able to prove, with
no help from the running gateway, that

* every record still hashes to its stored leaf hash (nothing was edited in place),
* the indexes run 0..N-1 with no gap, duplicate or reordering (nothing was deleted or moved),
* the tree recomputed from those leaves has the stored head and stored interior nodes,
* every signed checkpoint verifies and its root is the recomputed root at its size: since all of
  them are roots of one recomputed tree, this also proves them consistent with each other, and
* a checkpoint trusted from earlier (a saved note, or the published file ``audit.published``) is
  still a prefix of the log: the log was neither truncated nor restored from an older copy.

How: one pass in index order with a :class:`merkle.Frontier` (O(n) time, O(log n) memory: a
million records never sit in memory), checking stored nodes as the frontier completes them and
each checkpoint when the frontier reaches its size. The first problem stops the pass and is
raised as :class:`LogInvalid` naming the first bad index (or the checkpoint), because that is
where an investigation starts; everything after a broken point is meaningless anyway.

Pure: no I/O, no clock, no logging. The caller reads the database or the export and passes
iterables (they may be lazy cursors); see :func:`verify_log` for the preconditions.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.audit import checkpoint as cp
from gateway.audit import merkle

__all__ = [
    "Cause",
    "Head",
    "LogInvalid",
    "LogReport",
    "NoteToCheck",
    "Row",
    "verify_log",
]

Row = tuple[int, bytes | None, bytes]
"""One leaf as read: (index, stored leaf hash or None when the source has none, leaf bytes).

The leaf bytes are exactly what was hashed: the stored record bytes from the database, or the
RFC 8785 canonical JSON of an exported record. A SQLite row ``(idx, leaf_hash, record)`` is
already this shape, so the hot loop converts nothing.
"""

Cause = Literal[
    "record-changed",  # the record does not hash to its stored leaf hash
    "sequence",  # index missing, duplicated or out of order
    "node-mismatch",  # a stored interior node disagrees with the recomputed tree
    "node-missing",  # a complete subtree has no stored node
    "truncated",  # fewer records than the head or a stored checkpoint says
    "head-mismatch",  # the stored head (size, root, frontier) disagrees with the records
    "checkpoint-invalid",  # a checkpoint note does not verify or contradicts its table row
    "fork",  # a validly signed checkpoint has another root than the log at its size
    "rollback",  # a trusted or published checkpoint is ahead of the log
    "unreadable",  # the source itself is malformed (an export line that is no record)
]

_NODE_LEVEL_LIMIT: Final = 64


class LogInvalid(Exception):
    """The log does not hold; ``cause`` is a stable slug, ``index``/``checkpoint`` say where.

    ``index`` is the first leaf index known to be bad (None when the problem is a checkpoint and
    no single index can be blamed); ``checkpoint`` names the checkpoint involved, if any.
    """

    def __init__(
        self, cause: Cause, message: str, *, index: int | None = None, checkpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.cause: Cause = cause
        self.message = message
        self.index = index
        self.checkpoint = checkpoint


@dataclass(frozen=True, slots=True)
class Head:
    """The stored tree head: size, root and (optionally) the serialized frontier."""

    size: int
    root: bytes
    frontier: bytes | None = None


@dataclass(frozen=True, slots=True)
class NoteToCheck:
    """A signed checkpoint note to check against the recomputed log.

    ``trusted`` notes (``--trusted``, the published file) were saved outside the database: one
    ahead of the log means the database was rolled back. Stored notes come from the database
    with their table columns ``size``/``root``, which must agree with the signed text.
    """

    note: bytes
    label: str
    trusted: bool = False
    size: int | None = None
    root: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Point:
    """A verified checkpoint waiting for the frontier to reach its size."""

    size: int
    root: bytes
    label: str
    trusted: bool


@dataclass(slots=True)
class LogReport:
    """What was proven. ``root`` is the recomputed root over all ``size`` records."""

    size: int
    root: bytes
    head_checked: bool
    nodes_checked: int
    checkpoints_checked: int
    latest_checkpoint: int | None
    trusted: list[tuple[str, int]] = field(default_factory=list)  # (label, size) of each
    signers: list[str] = field(default_factory=list)


def _verify_note(
    item: NoteToCheck, verifiers: Sequence[cp.NoteVerifier], origin: str | None, signers: set[str]
) -> _Point:
    try:
        verified = cp.verify_note(item.note, verifiers)
    except cp.NoteError as e:
        raise LogInvalid(
            "checkpoint-invalid",
            f"{item.label}: signature does not verify: {e}",
            checkpoint=item.label,
        ) from None
    c = verified.checkpoint
    if origin is not None and c.origin != origin:
        raise LogInvalid(
            "checkpoint-invalid",
            f"{item.label}: origin {c.origin!r} is not this log's origin {origin!r}",
            checkpoint=item.label,
        )
    if (item.size is not None and item.size != c.size) or (
        item.root is not None and item.root != c.root
    ):
        raise LogInvalid(
            "checkpoint-invalid",
            f"{item.label}: the table row (size {item.size}) disagrees with the signed note "
            f"(size {c.size})",
            checkpoint=item.label,
        )
    signers.update(f"{s.name}+{s.key_id:08x}" for s in verified.signers)
    return _Point(c.size, c.root, item.label, item.trusted)


def _points(
    stored: Iterable[NoteToCheck],
    trusted: Iterable[NoteToCheck],
    verifiers: Sequence[cp.NoteVerifier],
    origin: str | None,
    signers: set[str],
) -> Iterator[_Point]:
    """Stored checkpoints (ascending by size, streamed) merged with the few trusted ones."""

    def stored_points() -> Iterator[_Point]:
        last = -1
        for item in stored:
            point = _verify_note(item, verifiers, origin, signers)
            if point.size < last:
                raise ValueError("stored checkpoints must come in ascending size order")
            last = point.size
            yield point

    extra = sorted((_verify_note(t, verifiers, origin, signers) for t in trusted), key=_size)
    return heapq.merge(stored_points(), extra, key=_size)


def _size(p: _Point) -> int:
    return p.size


class _Nodes:
    """Checks completed subtrees against stored nodes, one ascending cursor per level."""

    def __init__(self, source: Callable[[int], Iterable[tuple[int, bytes]]]) -> None:
        self._source = source
        self._cursors: dict[int, Iterator[tuple[int, bytes]]] = {}
        self.checked = 0

    def _next(self, level: int) -> tuple[int, bytes] | None:
        cursor = self._cursors.get(level)
        if cursor is None:
            cursor = self._cursors[level] = iter(self._source(level))
        return next(cursor, None)

    def check(self, node: merkle.SubtreeHash) -> None:
        first = node.index << node.level
        last = ((node.index + 1) << node.level) - 1
        row = self._next(node.level)
        if row is None or row[0] != node.index:
            raise LogInvalid(
                "node-missing",
                f"stored node (level {node.level}, index {node.index}) over records "
                f"{first}..{last} is missing (found {None if row is None else row[0]})",
                index=first,
            )
        if bytes(row[1]) != node.hash:
            raise LogInvalid(
                "node-mismatch",
                f"stored node (level {node.level}, index {node.index}) does not match records "
                f"{first}..{last}: a record there was replaced or moved together with its leaf "
                "hash, or the node was altered",
                index=first,
            )
        self.checked += 1

    def check_no_more(self, size: int) -> None:
        """No stored node may lie beyond the tree (a tail cut off with its head rewritten)."""
        for level in range(1, min(size.bit_length() + 1, _NODE_LEVEL_LIMIT)):
            row = self._next(level)
            if row is not None:
                raise LogInvalid(
                    "truncated",
                    f"stored node (level {level}, index {row[0]}) covers records beyond the "
                    f"log's end ({size} records): records were cut off",
                    index=size,
                )


def _sequence_error(index: int, expected: int) -> LogInvalid:
    if index > expected:
        what = f"record {expected} is missing (the next record has index {index})"
    elif index == expected - 1:
        what = f"record {index} appears twice"
    else:
        what = f"record {index} comes after record {expected - 1}: rows are out of order"
    return LogInvalid("sequence", f"index {expected}: {what}", index=expected)


def _fork(point: _Point, last_good: int) -> LogInvalid:
    if point.trusted:
        why = "the log was rewritten after this checkpoint was saved"
    else:
        why = "the checkpoint and the log disagree (a fork, or records rewritten with their hashes)"
    return LogInvalid(
        "fork",
        f"{point.label} (size {point.size}) is validly signed but its root is not the log's root "
        f"at that size: {why}; records {last_good}..{point.size - 1} are in question",
        checkpoint=point.label,
    )


def _ahead(point: _Point, size: int) -> LogInvalid:
    if point.trusted:
        return LogInvalid(
            "rollback",
            f"{point.label} has size {point.size} but the log has only {size} records: the "
            "database was restored from an older copy or cut short",
            index=size,
            checkpoint=point.label,
        )
    return LogInvalid(
        "truncated",
        f"{point.label} has size {point.size} but the log has only {size} records: records "
        f"{size}..{point.size - 1} were removed",
        index=size,
        checkpoint=point.label,
    )


def _check_head(head: Head, frontier: merkle.Frontier) -> None:
    n = frontier.size
    if n < head.size:
        raise LogInvalid(
            "truncated",
            f"index {n}: the head says {head.size} records but the log ends at {n - 1}: records "
            f"{n}..{head.size - 1} are missing",
            index=n,
        )
    if n > head.size:
        raise LogInvalid(
            "head-mismatch",
            f"index {head.size}: the head says {head.size} records but there are {n}: records "
            "were added outside the appender",
            index=head.size,
        )
    if head.root != frontier.root():
        raise LogInvalid(
            "head-mismatch", "the stored head root is not the root recomputed from the records"
        )
    if head.frontier is not None and head.frontier != frontier.to_bytes():
        raise LogInvalid(
            "head-mismatch", "the stored frontier is not the frontier recomputed from the records"
        )


class _Checkpoints:
    """The checkpoints in size order, each compared with the recomputed root at its size."""

    def __init__(self, points: Iterator[_Point], signers: set[str]) -> None:
        self._points = points
        self.signers = signers  # filled in by ``points`` as it verifies each note
        self.pending = next(points, None)  # the next checkpoint to compare; None when done
        self.last_good = 0
        self.stored = 0
        self.latest: int | None = None
        self.trusted: list[tuple[str, int]] = []

    def reached(self, frontier: merkle.Frontier) -> int:
        """Compare the checkpoints of the frontier's size; return the next size due (-1: none)."""
        while (point := self.pending) is not None and point.size == frontier.size:
            if point.root != frontier.root():
                raise _fork(point, self.last_good)
            self.last_good = point.size
            if point.trusted:
                self.trusted.append((point.label, point.size))
            else:
                self.stored += 1
                self.latest = point.size
            self.pending = next(self._points, None)
        return -1 if self.pending is None else self.pending.size


def _end(
    frontier: merkle.Frontier, head: Head | None, points: _Checkpoints, node_check: _Nodes | None
) -> LogReport:
    """After the last record: check the head, that nothing lies beyond it; report."""
    size = frontier.size
    if head is not None:
        _check_head(head, frontier)
    if points.pending is not None:
        raise _ahead(points.pending, size)
    if node_check is not None:
        node_check.check_no_more(size)
    return LogReport(
        size=size,
        root=frontier.root(),
        head_checked=head is not None,
        nodes_checked=node_check.checked if node_check is not None else 0,
        checkpoints_checked=points.stored,
        latest_checkpoint=points.latest,
        trusted=points.trusted,
        signers=sorted(points.signers),
    )


def verify_log(
    rows: Iterable[Row],
    *,
    verifiers: Sequence[cp.NoteVerifier] = (),
    checkpoints: Iterable[NoteToCheck] = (),
    trusted: Iterable[NoteToCheck] = (),
    head: Head | None = None,
    nodes: Callable[[int], Iterable[tuple[int, bytes]]] | None = None,
    origin: str | None = None,
) -> LogReport:
    """Verify a whole log in one pass; return what was proven or raise :class:`LogInvalid`.

    Preconditions: ``rows`` in the order the source stores them (index order for a sound log;
    any disorder is reported, not sorted away); ``checkpoints`` in ascending size order (the
    stored ones: streamed); ``trusted`` small (held in memory); ``nodes(level)`` yields the stored
    ``(index, hash)`` of that level in ascending index order. ``verifiers`` are
    :class:`gateway.audit.checkpoint.NoteVerifier` objects for the checkpoint signatures;
    ``origin``, when given, is required on every checkpoint. ``head`` is the stored head, when
    the source has one (an export does not: its latest checkpoint is then the head).
    """
    signers: set[str] = set()
    points = _Checkpoints(_points(checkpoints, trusted, verifiers, origin, signers), signers)
    node_check = _Nodes(nodes) if nodes is not None else None
    frontier = merkle.Frontier()
    leaf_hash, append = merkle.leaf_hash, frontier.append
    due = expected = 0  # due: the size of the next checkpoint (0: look at once; -1: none left)
    rows_iter = iter(rows)
    while True:
        if expected == due:  # Checkpoints of this size: compare before the next leaf.
            due = points.reached(frontier)
        row = next(rows_iter, None)
        if row is None:
            break
        index, stored, data = row
        if index != expected:
            raise _sequence_error(index, expected)
        h = leaf_hash(data)
        if stored is not None and stored != h:
            raise LogInvalid(
                "record-changed",
                f"index {index}: the record does not hash to its stored leaf hash: the record "
                "was changed",
                index=index,
            )
        completed = append(h)
        if completed and node_check is not None:
            for node in completed:
                node_check.check(node)
        expected += 1
    return _end(frontier, head, points, node_check)
