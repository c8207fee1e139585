import random

from hypothesis import given
from hypothesis import strategies as st

from merklesync import merkle
from merklesync.model import key_of

leaves = st.lists(
    st.tuples(st.binary(min_size=8, max_size=8), st.binary(min_size=32, max_size=32)),
    max_size=60,
    unique_by=lambda p: p[0],
)


@given(leaves, st.randoms())
def test_root_independent_of_order(pairs: list[tuple[bytes, bytes]], rnd: random.Random) -> None:
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    assert merkle.root_of(pairs) == merkle.root_of(shuffled)


@given(leaves, st.integers(1, 4), st.integers(1, 4))
def test_node_fingerprint_independent_of_stored_depth(
    pairs: list[tuple[bytes, bytes]], d1: int, d2: int
) -> None:
    a, b = merkle.Accumulator(d1), merkle.Accumulator(d2)
    for key, leaf in pairs:
        a.add(key, leaf)
        b.add(key, leaf)
    for node in set(a.nodes) & set(b.nodes):
        assert a.nodes[node] == b.nodes[node]


@given(leaves, st.binary(min_size=32, max_size=32))
def test_change_is_a_delta(pairs: list[tuple[bytes, bytes]], new: bytes) -> None:
    if not pairs:
        return
    acc = merkle.Accumulator(2)
    for key, leaf in pairs:
        acc.add(key, leaf)
    key, old = pairs[0]
    acc.change(key, old, new)
    fresh = merkle.Accumulator(2)
    for k, leaf in [(key, new), *pairs[1:]]:
        fresh.add(k, leaf)
    for node, (total, count) in fresh.nodes.items():
        assert acc.nodes[node][0] % merkle.MODULUS == total % merkle.MODULUS
        assert acc.nodes[node][1] == count


@given(leaves, st.integers(0, 4))
def test_a_tree_made_in_one_go_is_the_one_made_leaf_by_leaf(
    pairs: list[tuple[bytes, bytes]], depth: int
) -> None:
    """tree_of (a whole index's tree, in flat arrays) gives the nodes the
    Accumulator gives (the incremental one), deepest first, each level in
    prefix order, with the root's sum and count."""
    acc = merkle.Accumulator(depth)
    for key, leaf in pairs:
        acc.add(key, leaf)
    made = list(merkle.tree_of(iter(pairs), depth))
    assert made == sorted(made, key=lambda n: (-n[0], n[1]))
    expected = {node: (t % merkle.MODULUS, c) for node, (t, c) in acc.nodes.items() if c}
    assert {(level, prefix): (t, c) for level, prefix, t, c in made} == expected
    assert len(made) == len(expected)
    root = [(t, c) for level, _prefix, t, c in made if level == 0]
    total = sum(merkle.leaf_value(leaf) for _key, leaf in pairs) % merkle.MODULUS
    assert root == ([(total, len(pairs))] if pairs else [])


def test_key_range_covers_prefix() -> None:
    key = key_of("some/file")
    for level in range(0, 5):
        node = (level, merkle.prefix_of(key, level))
        lo, hi = merkle.key_range(node)
        assert lo <= key and (hi is None or key < hi)
    assert merkle.key_range(merkle.ROOT) == (bytes(8), None)


def test_depth_grows_with_count() -> None:
    assert merkle.depth_for(0) == 1
    assert merkle.depth_for(100_000) == 3
    assert merkle.depth_for(1_000_000) == 4
    assert merkle.depth_for(10**12) == 6


def test_empty_node_fingerprint_is_zero() -> None:
    assert merkle.fingerprint(0, 0) == bytes(merkle.FINGERPRINT_BYTES)
    assert merkle.fingerprint(5, 1) != merkle.fingerprint(5, 2)


def test_check_node_rejects_out_of_range() -> None:
    assert merkle.check_node([1, 15]) == (1, 15)
    for bad in ([1, 16], [-1, 0], [0, 1], "x", [1], [True, 0], [99, 0]):
        try:
            merkle.check_node(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
