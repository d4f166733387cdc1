"""The scheduler's admission policy, pure: no event loop, no tasks, no sleeps.

:class:`Admission` is told which calls arrived (in the model's order) and which finished, and
answers which may start. These tests drive it by hand, and a Hypothesis state walk checks the
safety and liveness rules for any arrival and finish order.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotloop.runtime import Admission, CallEffects


def reads(*keys: str) -> CallEffects:
    return CallEffects(reads=frozenset(keys))


def writes(*keys: str) -> CallEffects:
    return CallEffects(writes=frozenset(keys))


EXCLUSIVE = CallEffects(exclusive=True)
PURE = CallEffects()


def admission(*calls: CallEffects, max_concurrency: int = 8) -> Admission:
    policy = Admission(max_concurrency)
    for effects in calls:
        policy.submit(effects)
    return policy


# -- conflicts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "conflict"),
    [
        (reads("x"), reads("x"), False),
        (reads("x"), reads("y"), False),
        (reads("x"), writes("x"), True),
        (writes("x"), reads("x"), True),
        (writes("x"), writes("x"), True),
        (writes("x"), writes("y"), False),
        (writes("x"), reads("y"), False),
        (PURE, writes("x"), False),
        (PURE, PURE, False),
        (EXCLUSIVE, PURE, True),
        (PURE, EXCLUSIVE, True),
        (EXCLUSIVE, EXCLUSIVE, True),
        (CallEffects(reads=frozenset({"a", "b"})), CallEffects(writes=frozenset({"b"})), True),
    ],
)
def test_conflicts_are_symmetric(a: CallEffects, b: CallEffects, conflict: bool) -> None:
    assert a.conflicts_with(b) is conflict
    assert b.conflicts_with(a) is conflict


# -- admission ----------------------------------------------------------------------------


def test_reads_of_different_and_same_resources_overlap() -> None:
    policy = admission(reads("file:a"), reads("file:b"), reads("file:a"))
    assert policy.ready() == [0, 1, 2]
    assert policy.running == 3
    assert policy.ready() == []  # already started


def test_a_write_waits_for_earlier_accesses_and_later_accesses_wait_for_it() -> None:
    policy = admission(
        reads("file:a"),  # 0
        reads("file:a"),  # 1
        writes("file:a"),  # 2: after 0 and 1
        reads("file:a"),  # 3: after 2
        writes("file:a"),  # 4: after 3
        reads("file:b"),  # 5: unrelated, runs at once
    )
    assert policy.ready() == [0, 1, 5]
    policy.finish(1)
    assert policy.ready() == []  # 0 still reads file:a
    policy.finish(0)
    assert policy.ready() == [2]
    policy.finish(2)
    assert policy.ready() == [3]
    policy.finish(3)
    assert policy.ready() == [4]
    policy.finish(5)
    policy.finish(4)
    assert policy.all_finished


def test_later_call_never_overtakes_a_waiting_conflicting_one() -> None:
    # 2 (read b) does not conflict with 0 (write a), but it conflicts with 1 (read a, write
    # b), which waits for 0: 2 must not start before 1 has finished, although 1 has not even
    # started yet.
    policy = admission(
        writes("a"), CallEffects(reads=frozenset({"a"}), writes=frozenset({"b"})), reads("b")
    )
    assert policy.ready() == [0]
    policy.finish(0)
    assert policy.ready() == [1]
    policy.finish(1)
    assert policy.ready() == [2]


def test_exclusive_waits_for_all_earlier_and_blocks_all_later() -> None:
    policy = admission(PURE, reads("a"), EXCLUSIVE, PURE, writes("b"))
    assert policy.ready() == [0, 1]
    policy.finish(0)
    assert policy.ready() == []
    policy.finish(1)
    assert policy.ready() == [2]
    assert policy.running == 1
    policy.finish(2)
    assert policy.ready() == [3, 4]


def test_calls_submitted_later_are_admitted_later() -> None:
    policy = Admission()
    first = policy.submit(writes("x"))
    assert policy.ready() == [first]
    second = policy.submit(reads("x"))
    third = policy.submit(reads("y"))
    assert (first, second, third) == (0, 1, 2)
    assert len(policy) == 3
    assert policy.ready() == [third]
    policy.finish(first)
    assert policy.ready() == [second]


def test_max_concurrency_bounds_running_calls() -> None:
    policy = admission(*(PURE for _ in range(5)), max_concurrency=2)
    assert policy.ready() == [0, 1]
    assert policy.ready() == []
    policy.finish(1)
    assert policy.ready() == [2]
    policy.finish(0)
    policy.finish(2)
    assert policy.ready() == [3, 4]
    assert policy.running == 2


def test_finish_of_a_call_that_is_not_running_is_an_error() -> None:
    policy = admission(PURE, EXCLUSIVE)
    assert policy.ready() == [0]
    with pytest.raises(ValueError, match="call 1 is not running"):
        policy.finish(1)
    policy.finish(0)
    with pytest.raises(ValueError, match="call 0 is not running"):
        policy.finish(0)


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


def test_an_empty_turn_is_finished() -> None:
    assert Admission().all_finished
    assert Admission().ready() == []


# -- property: safety and liveness for any arrival and finish order -----------------------

RESOURCES = ["a", "b", "c"]

call_effects = st.one_of(
    st.builds(
        CallEffects,
        reads=st.frozensets(st.sampled_from(RESOURCES), max_size=2),
        writes=st.frozensets(st.sampled_from(RESOURCES), max_size=2),
    ),
    st.just(EXCLUSIVE),
)


@settings(max_examples=300, deadline=None)
@given(
    calls=st.lists(call_effects, min_size=1, max_size=10),
    max_concurrency=st.integers(min_value=1, max_value=4),
    data=st.data(),
)
def test_conflicting_calls_never_overlap_and_keep_model_order(
    calls: list[CallEffects], max_concurrency: int, data: st.DataObject
) -> None:
    policy = Admission(max_concurrency)
    submitted = 0
    running: set[int] = set()
    started_at: dict[int, int] = {}
    finished_at: dict[int, int] = {}
    clock = 0

    def admit() -> None:
        nonlocal clock
        for index in policy.ready():
            clock += 1
            # Safety: nothing running conflicts with the call that starts.
            for other in running:
                assert not calls[index].conflicts_with(calls[other]), (index, other)
            running.add(index)
            started_at[index] = clock
        assert len(running) == policy.running <= max_concurrency

    while submitted < len(calls) or running:
        # Calls keep arriving in the model's order while earlier ones finish in any order.
        arrive = submitted < len(calls) and (not running or data.draw(st.booleans()))
        if arrive:
            policy.submit(calls[submitted])
            submitted += 1
        else:
            index = data.draw(st.sampled_from(sorted(running)))
            policy.finish(index)
            running.discard(index)
            clock += 1
            finished_at[index] = clock
        admit()

    # Liveness: every call started and finished.
    assert sorted(started_at) == list(range(len(calls)))
    assert policy.all_finished
    # Model order: of two conflicting calls, the later one starts after the earlier finished.
    for later in range(len(calls)):
        for earlier in range(later):
            if calls[earlier].conflicts_with(calls[later]):
                assert finished_at[earlier] < started_at[later], (earlier, later)
