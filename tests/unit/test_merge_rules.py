"""Properties of ``merge_remote``: a pulled record merged into a row with local edits.

Values are compared the way SQLite stores them: 1, 1.0 and True (bound as 1) are
equal in Python, but ``_same`` tells them apart by type, so a local 1 against a remote
1.0 counts as a difference and is journaled rather than silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from hypothesis import example, given
from hypothesis import strategies as st

from replicad.store.plan import merge_remote
from replicad.store.values import SQLValue

COLUMNS = ("a", "b", "c", "d", "e")
# Names a protected set may carry that the remote record does not have.
STRANGERS = ("zz", "a_2")

Row = dict[str, SQLValue]
Conflicts = list[tuple[str, SQLValue, SQLValue]]
Tagged = tuple[str, SQLValue]

# Values whose Python equality crosses types (1 == 1.0 == True, 0 == -0.0 == False).
TWINS: list[SQLValue] = [0, 1, 0.0, -0.0, 1.0, True, False, "1", "0", ""]
values: st.SearchStrategy[SQLValue] = st.one_of(
    st.sampled_from(TWINS),
    st.none(),
    st.integers(-3, 3),
    st.floats(-2, 2, allow_nan=False, width=16),
    st.text(max_size=2),
)


def tag(v: SQLValue) -> Tagged:
    """A value with its type, so that comparisons are type-strict like SQLite cells."""
    return (type(v).__name__, v)


def same(a: SQLValue, b: SQLValue) -> bool:
    """Whether two values are the same SQLite cell (same type and equal)."""
    return tag(a) == tag(b)


def tagged_row(row: Mapping[str, SQLValue]) -> dict[str, Tagged]:
    """A row with every value tagged by its type."""
    return {c: tag(v) for c, v in row.items()}


def tagged_conflicts(conflicts: Conflicts) -> list[tuple[str, Tagged, Tagged]]:
    """Conflicts with both sides tagged by type."""
    return [(c, tag(local), tag(remote)) for c, local, remote in conflicts]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Row, Row, set[str] | None]:
    """A local row, a remote record over the same columns, and protected columns.

    The remote value of a column is often the local one, or a twin of it (equal in
    Python, another type), so that "same" and "different" both occur often.
    """
    cols = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, unique=True))
    local = {c: draw(values) for c in cols}
    remote: Row = {}
    for c in cols:
        how = draw(st.sampled_from(["same", "twin", "fresh"]))
        if how == "same":
            remote[c] = local[c]
        elif how == "twin":
            remote[c] = draw(st.sampled_from(TWINS))
        else:
            remote[c] = draw(values)
    protected = draw(
        st.none() | st.sets(st.sampled_from(cols + list(STRANGERS)), max_size=len(cols) + 1)
    )
    return local, remote, protected


def guarded(remote: Mapping[str, SQLValue], protected: AbstractSet[str] | None) -> set[str]:
    """The remote columns a merge must protect (None: a local insert, all of them)."""
    return set(remote) if protected is None else {c for c in remote if c in protected}


def expected_conflicts(local: Row, remote: Row, protected: set[str] | None) -> Conflicts:
    """Every protected column whose local and remote cells differ, in remote order."""
    keep = guarded(remote, protected)
    return [(c, local[c], remote[c]) for c in remote if c in keep and not same(local[c], remote[c])]


@given(cases())
@example(({"a": 1}, {"a": 1.0}, {"a"}))
@example(({"a": 1}, {"a": True}, {"a"}))
@example(({"a": 0.0}, {"a": False}, {"a"}))
@example(({"a": "1"}, {"a": 1}, None))
def test_merge_keeps_protected_local_values_and_takes_the_rest(
    case: tuple[Row, Row, set[str] | None],
) -> None:
    """ "merge" writes every unprotected remote value and never a protected column."""
    local, remote, protected = case
    write, _ = merge_remote(local, remote, protected, "merge")
    keep = guarded(remote, protected)
    assert not set(write) & keep
    assert tagged_row(write) == {c: tag(v) for c, v in remote.items() if c not in keep}
    final = {**local, **write}
    assert tagged_row(final) == {c: tag(local[c] if c in keep else remote[c]) for c in remote}


@given(cases(), st.sampled_from(["merge", "remote"]))
@example(({"a": 1}, {"a": 1.0}, {"a"}), "merge")
@example(({"a": True}, {"a": 1}, {"a"}), "remote")
@example(({"a": -0.0}, {"a": 0.0}, {"a"}), "merge")
def test_conflicts_are_exactly_the_differing_protected_columns(
    case: tuple[Row, Row, set[str] | None], mode: str
) -> None:
    """Both modes journal (column, local, remote) for each protected column whose cells differ."""
    local, remote, protected = case
    _, conflicts = merge_remote(local, remote, protected, mode)
    assert tagged_conflicts(conflicts) == tagged_conflicts(
        expected_conflicts(local, remote, protected)
    )


@given(cases())
def test_remote_mode_writes_every_remote_value(case: tuple[Row, Row, set[str] | None]) -> None:
    """ "remote" writes the whole remote record; the journal keeps the local values that lost."""
    local, remote, protected = case
    write, conflicts = merge_remote(local, remote, protected, "remote")
    assert tagged_row(write) == tagged_row(remote)
    keep = guarded(remote, protected)
    lost = {c: tag(v) for c, v, _ in conflicts}
    assert lost == {c: tag(local[c]) for c in keep if not same(local[c], remote[c])}


@given(cases(), st.sampled_from(["merge", "remote"]))
def test_local_insert_protects_every_column(
    case: tuple[Row, Row, set[str] | None], mode: str
) -> None:
    """protected=None (a local insert) guards every column: "merge" writes nothing."""
    local, remote, _ = case
    write, conflicts = merge_remote(local, remote, None, mode)
    if mode == "merge":
        assert write == {}
    assert [c for c, _, _ in conflicts] == [c for c in remote if not same(local[c], remote[c])]


@given(cases(), st.sampled_from(["merge", "remote"]))
def test_no_local_edit_or_remote_value_is_lost(
    case: tuple[Row, Row, set[str] | None], mode: str
) -> None:
    """For each protected column that differs, the final row plus the journal hold both values."""
    local, remote, protected = case
    snapshot = (tagged_row(local), tagged_row(remote), None if protected is None else {*protected})
    write, conflicts = merge_remote(local, remote, protected, mode)
    final = {**local, **write}
    for c in guarded(remote, protected):
        if same(local[c], remote[c]):
            continue
        kept = {tag(final[c])}
        for col, lv, rv in conflicts:
            if col == c:
                kept |= {tag(lv), tag(rv)}
        assert {tag(local[c]), tag(remote[c])} <= kept, c
    # Unprotected columns hold no local edit: the remote value simply replaces them.
    for c in set(remote) - guarded(remote, protected):
        assert same(final[c], remote[c])
    # The inputs are left as they were.
    assert snapshot == (
        tagged_row(local),
        tagged_row(remote),
        None if protected is None else {*protected},
    )
