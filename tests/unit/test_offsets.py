"""kcron.offsets: only the contiguous finished prefix of a partition is committable."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kcron.offsets import OffsetTracker, PartitionOffsets

P0 = ("kcron.jobs", 0)
P1 = ("kcron.jobs", 1)


def test_nothing_committable_at_first():
    part = PartitionOffsets()
    assert part.committable is None
    assert part.in_flight == 0


def test_in_order_finishes_move_the_position_each_time():
    part = PartitionOffsets()
    for offset in (10, 11, 12):
        part.taken(offset)
    assert part.in_flight == 3
    assert part.finished(10) == 11
    assert part.finished(11) == 12
    assert part.finished(12) == 13
    assert part.committable == 13
    assert part.in_flight == 0


def test_out_of_order_finish_waits_for_the_earlier_run():
    part = PartitionOffsets()
    for offset in (5, 6, 7, 8):
        part.taken(offset)
    assert part.finished(7) is None  # 5 and 6 still running
    assert part.finished(6) is None
    assert part.committable is None
    assert part.in_flight == 2  # 5 and 8
    assert part.finished(5) == 8  # 5, 6, 7 all done: resume at 8
    assert part.committable == 8
    assert part.in_flight == 1
    assert part.finished(8) == 9


def test_a_slow_run_holds_back_the_commit_until_it_finishes():
    part = PartitionOffsets()
    for offset in range(100, 110):
        part.taken(offset)
    for offset in range(101, 110):
        assert part.finished(offset) is None
    assert part.committable is None
    assert part.in_flight == 1
    assert part.finished(100) == 110


def test_gaps_in_offsets_are_fine():
    # Compacted topics and transaction markers leave holes in the offsets taken.
    part = PartitionOffsets()
    for offset in (3, 7, 20):
        part.taken(offset)
    assert part.finished(7) is None
    assert part.finished(3) == 8
    assert part.finished(20) == 21


def test_unknown_or_repeated_finish_changes_nothing():
    part = PartitionOffsets()
    part.taken(1)
    part.taken(2)
    assert part.finished(99) is None
    assert part.finished(1) == 2
    assert part.finished(1) is None  # already committed
    assert part.committable == 2
    assert part.finished(2) == 3
    assert part.finished(2) is None
    assert part.committable == 3


def test_finishing_twice_before_commit_does_not_skip_ahead():
    part = PartitionOffsets()
    for offset in (1, 2, 3):
        part.taken(offset)
    assert part.finished(2) is None
    assert part.finished(2) is None
    assert part.finished(1) == 3  # 3 still running
    assert part.committable == 3
    assert part.in_flight == 1


def test_in_flight_counts_each_offset_once_whatever_the_order_of_events():
    # The worker pauses a partition on this count: drifting up would stall it forever.
    part = PartitionOffsets()
    part.taken(1)
    part.taken(1)  # delivered again (after a seek) while still pending
    part.taken(2)
    assert part.in_flight == 2
    part.finished(2)
    part.finished(2)
    assert part.in_flight == 1
    part.taken(2)  # finished but not committable yet, then taken again
    assert part.in_flight == 2
    part.finished(2)
    part.finished(1)
    assert part.in_flight == 0


def test_position_stays_after_everything_finished():
    part = PartitionOffsets()
    part.taken(4)
    part.finished(4)
    part.taken(5)
    assert part.committable == 5
    assert part.in_flight == 1


# -- OffsetTracker -------------------------------------------------------------------


def test_partitions_are_tracked_separately():
    tracker = OffsetTracker()
    tracker.taken(P0, 10)
    tracker.taken(P1, 10)
    tracker.taken(P0, 11)
    assert tracker.in_flight() == 3
    assert tracker.in_flight(P0) == 2
    assert tracker.in_flight(P1) == 1
    assert tracker.finished(P1, 10) == 11
    assert tracker.finished(P0, 11) is None
    assert tracker.in_flight() == 1
    assert tracker.finished(P0, 10) == 12


def test_unknown_partition():
    tracker = OffsetTracker()
    assert tracker.finished(P0, 1) is None
    assert tracker.in_flight(P0) == 0
    assert tracker.in_flight() == 0
    tracker.forget(P0)  # no error


def test_forget_on_revoke_drops_the_partition():
    tracker = OffsetTracker()
    tracker.taken(P0, 1)
    tracker.taken(P0, 2)
    tracker.taken(P1, 1)
    tracker.forget(P0)
    assert tracker.in_flight(P0) == 0
    assert tracker.in_flight() == 1
    # a run of the revoked partition finishing later must not produce a commit
    assert tracker.finished(P0, 1) is None
    assert tracker.finished(P0, 2) is None
    assert tracker.finished(P1, 1) == 2


def test_partition_reassigned_after_forget_starts_fresh():
    tracker = OffsetTracker()
    tracker.taken(P0, 1)
    tracker.taken(P0, 2)
    tracker.finished(P0, 2)
    tracker.forget(P0)
    tracker.taken(P0, 1)  # redelivered to us after the rebalance
    assert tracker.in_flight(P0) == 1
    assert tracker.finished(P0, 1) == 2  # not 3: offset 2 must run again


# -- property: the tracker agrees with a simple model --------------------------------


@st.composite
def take_and_finish(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Strictly increasing offsets, and an interleaving of takes and finishes."""
    gaps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=30))
    offsets, current = [], draw(st.integers(0, 1000))
    for gap in gaps:
        current += gap
        offsets.append(current)
    finish_order = draw(st.permutations(offsets))
    events: list[tuple[str, int]] = []
    taken_count = 0
    pending = list(finish_order)
    while taken_count < len(offsets) or pending:
        can_finish = [o for o in pending if o in offsets[:taken_count]]
        take = taken_count < len(offsets) and (not can_finish or draw(st.booleans()))
        if take:
            events.append(("take", offsets[taken_count]))
            taken_count += 1
        else:
            offset = can_finish[0]
            pending.remove(offset)
            events.append(("finish", offset))
            if draw(st.booleans()):
                events.append(("finish", offset))  # a duplicate report
    return offsets, events


@settings(max_examples=300, deadline=None)
@given(take_and_finish())
def test_matches_a_simple_model(case):
    offsets, events = case
    part = PartitionOffsets()
    taken: list[int] = []
    done: set[int] = set()
    committed: int | None = None
    for kind, offset in events:
        if kind == "take":
            part.taken(offset)
            taken.append(offset)
            continue
        done.add(offset)
        # model: one past the last offset of the finished prefix of what was taken
        prefix_end = None
        for o in taken:
            if o not in done:
                break
            prefix_end = o + 1
        expected_move = prefix_end if prefix_end != committed else None
        assert part.finished(offset) == expected_move
        if expected_move is not None:
            committed = expected_move
        assert part.committable == committed
        assert part.in_flight == sum(1 for o in taken if o not in done)
    assert committed == offsets[-1] + 1
    assert part.in_flight == 0
