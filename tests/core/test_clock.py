from hypothesis import given
from hypothesis import strategies as st

from merklesync.clock import HybridClock, Order, VersionVector

vectors = st.dictionaries(st.sampled_from("abcd"), st.integers(0, 5)).map(VersionVector.of)


@given(vectors, vectors)
def test_merge_commutative(a: VersionVector, b: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)


@given(vectors, vectors, vectors)
def test_merge_associative(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(vectors)
def test_merge_idempotent(a: VersionVector) -> None:
    assert a.merge(a) == a


@given(vectors, vectors)
def test_merge_dominates_both(a: VersionVector, b: VersionVector) -> None:
    m = a.merge(b)
    assert m.dominates(a) and m.dominates(b)


@given(vectors, vectors, vectors)
def test_dominance_is_a_partial_order(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.dominates(a)
    if a.dominates(b) and b.dominates(a):
        assert a == b
    if a.dominates(b) and b.dominates(c):
        assert a.dominates(c)


@given(vectors, vectors)
def test_compare_is_antisymmetric(a: VersionVector, b: VersionVector) -> None:
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    order = a.compare(b)
    assert b.compare(a) == flipped.get(order, order)


@given(vectors, st.sampled_from("abcde"))
def test_bump_makes_a_strictly_newer_version(a: VersionVector, r: str) -> None:
    assert a.bump(r).compare(a) is Order.AFTER


@given(vectors, vectors, st.sampled_from("abcde"))
def test_merge_and_bump_are_the_vectors_of_builds(
    a: VersionVector, b: VersionVector, r: str
) -> None:
    """Canonical as ``of`` makes them (sorted, no zero), so equal vectors
    compare, hash and pack equal."""
    merged = {x: max(a.get(x), b.get(x)) for x in a.as_dict().keys() | b.as_dict().keys()}
    assert a.merge(b).pairs == VersionVector.of(merged).pairs
    assert a.bump(r).pairs == VersionVector.of({**a.as_dict(), r: a.get(r) + 1}).pairs


def test_vectors_keep_only_writers() -> None:
    assert VersionVector.of({"a": 1, "b": 0}).pairs == (("a", 1),)
    assert VersionVector().bump("x").to_wire() == [["x", 1]]


def test_wire_round_trip_and_validation() -> None:
    v = VersionVector.of({"a": 3, "b": 1})
    assert VersionVector.from_wire(v.to_wire()) == v
    for bad in ("x", [["a"]], [["a", -1]], [[1, 1]], [["a", True]]):
        try:
            VersionVector.from_wire(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_hybrid_clock_never_goes_back() -> None:
    times = iter([100, 50, 50, 200])
    clock = HybridClock(now=lambda: next(times))
    stamps = [clock.tick() for _ in range(3)]
    assert stamps == [100, 101, 102]
    clock.observe(500)
    assert clock.tick() == 501
    clock.observe(10)  # an older stamp from elsewhere: no step back
    assert clock.last == 501


@given(st.lists(st.tuples(st.sampled_from(["", "a", "b", "ab", "c"]), st.integers(0, 3))))
def test_any_wire_vector_reads_as_its_canonical_form(pairs: list[tuple[str, int]]) -> None:
    """Sorted or not, with zeros or a replica twice: the same vector as ``of``
    makes of it (a peer's wire form is taken as is only when canonical)."""
    wire = [list(p) for p in pairs]
    assert VersionVector.from_wire(wire) == VersionVector.of(pairs)
    assert VersionVector.from_wire(VersionVector.of(pairs).to_wire()) == VersionVector.of(pairs)


def test_a_replica_id_longer_than_64_characters_is_refused_from_the_wire() -> None:
    import pytest

    from merklesync.clock import VersionVector

    assert VersionVector.from_wire([["a" * 64, 1]]).get("a" * 64) == 1
    with pytest.raises(ValueError, match="malformed"):
        VersionVector.from_wire([["a" * 65, 1]])
