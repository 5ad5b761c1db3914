"""The topic index: the same answers as the one-pattern matcher, whatever the bindings; cost by words."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kelp._topic_trie import TopicTrie, pattern_words
from kelp.routing import BindingTable, Destination, topic_match

Q = Destination.queue

words = st.sampled_from(["a", "b", "c", "", "*", "#", "ab"])
key_words = st.sampled_from(["a", "b", "c", "", "ab", "*", "#"])
patterns = st.lists(words, max_size=6).map(".".join)
keys = st.lists(key_words, max_size=6).map(".".join)


def naive(bindings: list[tuple[str, str]], key: str) -> set[Destination]:
    return {Q(queue) for pattern, queue in bindings if topic_match(pattern, key)}


def test_pattern_words_collapse_hash_runs() -> None:
    assert pattern_words("") == ()
    assert pattern_words("#.#.a.#.#.#") == ("#", "a", "#")
    assert pattern_words("a..b") == ("a", "", "b")


@given(
    st.lists(st.tuples(patterns, st.sampled_from("qrst")), max_size=25),
    st.lists(keys, min_size=1, max_size=8),
)
def test_table_matches_naive_scan(bindings: list[tuple[str, str]], probe: list[str]) -> None:
    table = BindingTable("topic")
    table.topic_memo_size = 0  # every answer from the trie itself
    for pattern, queue in bindings:
        table.add(Q(queue), pattern)
    for key in probe:
        assert table.match(key) == naive(bindings, key)


@given(
    st.lists(st.tuples(patterns, st.sampled_from("qrst")), max_size=25),
    st.data(),
    st.lists(keys, min_size=1, max_size=8),
)
def test_add_remove_and_copies_keep_the_index_right(
    bindings: list[tuple[str, str]], data: st.DataObject, probe: list[str]
) -> None:
    table = BindingTable("topic")
    for pattern, queue in bindings:
        table.add(Q(queue), pattern)
    before = list(dict.fromkeys(bindings))
    snapshot = table.copy()
    # Change the copy: remove some bindings, a whole destination, add others.
    removed = data.draw(st.lists(st.sampled_from(before), unique=True) if before else st.just([]))
    for pattern, queue in removed:
        assert snapshot.remove(Q(queue), pattern)
    gone = data.draw(st.sampled_from("qrst"))
    snapshot.remove_destination(Q(gone))
    added = data.draw(st.lists(st.tuples(patterns, st.sampled_from("qrst")), max_size=6))
    for pattern, queue in added:
        snapshot.add(Q(queue), pattern)
    after = [b for b in before if b not in removed and b[1] != gone] + added
    for key in probe:
        assert snapshot.match(key) == naive(after, key)
        assert table.match(key) == naive(before, key)  # the original is untouched
    # And the original can still change without touching the copy.
    for pattern, queue in before:
        table.remove(Q(queue), pattern)
    for key in probe:
        assert table.match(key) == set()
        assert snapshot.match(key) == naive(after, key)


def test_removing_everything_prunes_the_trie() -> None:
    trie = TopicTrie()
    for pattern in ("a.b.c", "a.*.#", "#", "a.b"):
        trie.add(pattern, "q")
    for pattern in ("a.b.c", "a.*.#", "#", "a.b"):
        trie.remove(pattern, "q")
    assert trie.match("a.b.c") == set()
    assert trie.visits == 1  # only the root is left


def test_match_cost_grows_with_words_not_bindings() -> None:
    table = BindingTable("topic")
    table.topic_memo_size = 0
    for i in range(10_000):
        table.add(Q(f"q{i}"), f"orders.region{i}.#" if i % 2 else f"events.*.kind{i}")
    table.add(Q("audit"), "#")
    table.add(Q("eu"), "orders.*.created")
    assert table.match("orders.region7.created") == {Q("q7"), Q("audit"), Q("eu")}
    # root, "orders", "region7", its "#" at two stops, "*", "created", the root "#" at four stops.
    assert table.topic_visits <= 12
    assert table.match("events.x.kind8") == {Q("q8"), Q("audit")}
    assert table.topic_visits <= 12


def test_many_hashes_do_not_make_the_walk_explode() -> None:
    table = BindingTable("topic")
    table.topic_memo_size = 0
    pattern = ".".join(["#", "a"] * 12) + ".b"
    table.add(Q("q"), pattern)
    assert table.match(".".join(["a"] * 120)) == set()
    # Each (node, word position) pair is visited at most once: 26 nodes, 121 positions.
    assert table.topic_visits <= 26 * 121
    assert table.match(".".join(["a"] * 120) + ".b") == {Q("q")}


def test_a_key_of_many_words_does_not_recurse() -> None:
    table = BindingTable("topic")
    words = ["w"] * 5000
    table.add(Q("long"), ".".join(words))
    table.add(Q("tail"), "#.w")
    assert table.match(".".join(words)) == {Q("long"), Q("tail")}
