"""Stream semantics (pure logic): order, one outcome per frame, bounded in-flight, drops, cancellation."""

from __future__ import annotations

import asyncio
import random

import pytest

from mobidem.errors import DeadlineExceeded, InvalidArgument
from mobidem.streaming import DropPolicy, StreamFrame, StreamSession, StreamStats, idle_bounded


async def frames_of(n: int, gap: float = 0.0, start: int = 1):
    for seq in range(start, start + n):
        yield StreamFrame(seq, seq)
        if gap:
            await asyncio.sleep(gap)


def run(coro):
    return asyncio.run(coro)


async def collect(session, frames):
    return [o async for o in session.results(frames)]


def test_results_in_order_even_when_work_finishes_out_of_order():
    async def process(frame, turn):
        await asyncio.sleep(random.Random(frame.sequence).uniform(0, 0.02))
        return frame.sequence * 10

    out = run(collect(StreamSession(process, 8, DropPolicy.NONE), frames_of(50)))
    assert [o.frame.sequence for o in out] == list(range(1, 51))
    assert [o.value for o in out] == [s * 10 for s in range(1, 51)]


def test_in_flight_never_exceeds_the_bound_without_drops():
    stats = StreamStats()
    peak = 0

    async def process(frame, turn):
        nonlocal peak
        peak = max(peak, stats.in_flight)
        await asyncio.sleep(0.005)
        return frame.sequence

    out = run(collect(StreamSession(process, 3, DropPolicy.NONE, stats), frames_of(30)))
    assert len(out) == 30 and all(o.status == "ok" for o in out)
    assert peak <= 3 and stats.in_flight == 0 and stats.active_streams == 0


def test_latest_frame_wins_drops_waiting_frames_with_a_reason_and_keeps_the_newest():
    async def process(frame, turn):
        await asyncio.sleep(0.02)
        return frame.sequence

    out = run(collect(StreamSession(process, 2, DropPolicy.LATEST_FRAME_WINS), frames_of(20, gap=0.001)))
    assert [o.frame.sequence for o in out] == list(range(1, 21))
    dropped = [o for o in out if o.status == "dropped"]
    assert dropped and all("superseded" in o.drop_reason for o in dropped)
    assert out[-1].status == "ok"
    assert out[0].status == "ok", "work already started is finished, not wasted"


def test_a_failing_frame_fails_alone():
    async def process(frame, turn):
        if frame.sequence == 2:
            raise InvalidArgument("bad frame")
        return frame.sequence

    out = run(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(3)))
    assert [o.status for o in out] == ["ok", "failed", "ok"]
    assert str(out[1].error) == "bad frame"


def test_sequence_must_increase():
    async def process(frame, turn):
        return frame.sequence

    async def frames():
        for seq in (1, 2, 2):
            yield StreamFrame(seq, seq)

    with pytest.raises(InvalidArgument, match="must increase"):
        run(collect(StreamSession(process, 4, DropPolicy.NONE), frames()))


def _sleeper(started: list, cancelled: list):
    """A frame's work that sleeps 10 s, noting the frames it started and those cancelled."""
    async def process(frame, turn):
        started.append(frame.sequence)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(frame.sequence)
            raise
    return process


def test_cancelling_the_stream_cancels_all_work_at_once():
    stats = StreamStats()
    started, cancelled = [], []
    process = _sleeper(started, cancelled)

    async def main():
        session = StreamSession(process, 4, DropPolicy.NONE, stats)
        task = asyncio.ensure_future(collect(session, frames_of(100)))
        await asyncio.sleep(0.05)
        assert stats.in_flight == 4
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    run(main())
    assert started and sorted(cancelled) == sorted(started)
    assert stats.in_flight == 0 and stats.active_streams == 0


def test_default_in_flight_follows_the_drop_policy():
    from mobidem.api.analysis import FaceAnalysisServicer
    from mobidem.config import Settings

    s = Settings()
    servicer = FaceAnalysisServicer(None, None, s.default_in_flight, s.max_in_flight,
                                    default_in_flight_latest=s.default_in_flight_latest)
    assert servicer.in_flight(0, DropPolicy.NONE) == s.default_in_flight == 8
    assert servicer.in_flight(0, DropPolicy.LATEST_FRAME_WINS) == s.default_in_flight_latest == 4
    assert servicer.in_flight(2, DropPolicy.NONE) == 2 and servicer.in_flight(12, DropPolicy.LATEST_FRAME_WINS) == 12


def test_an_ordinary_exception_fails_that_frame_only_as_internal():
    from mobidem.errors import Internal

    async def process(frame, turn):
        if frame.sequence == 3:
            raise ValueError("a plugin bug")
        return frame.sequence

    out = run(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(6)))
    assert [o.status for o in out] == ["ok", "ok", "failed", "ok", "ok", "ok"]
    assert isinstance(out[2].error, Internal) and "ref " in str(out[2].error)
    assert "a plugin bug" not in str(out[2].error)  # the client gets a reference, not our internals


@pytest.mark.parametrize("policy", [DropPolicy.NONE, DropPolicy.LATEST_FRAME_WINS])
def test_a_client_that_never_reads_results_holds_back_the_reader(policy):
    """Whatever the client does, a stream holds a bounded number of frames: with results unread, it
    stops reading new frames (gRPC flow control then stops the client); dropped frames let go of
    their payload at once."""
    pulled = []
    dropped_payloads = []

    async def endless():
        seq = 0
        while True:
            seq += 1
            pulled.append(seq)
            yield StreamFrame(seq, b"x" * 1000)

    async def process(frame, turn):
        return len(frame.payload)

    async def scenario():
        session = StreamSession(process, 4, policy)
        results = session.results(endless())
        first = await anext(results)  # the client reads one result, then never again
        await asyncio.sleep(0.3)
        queued = list(session.out._queue)
        dropped_payloads.extend(e.frame.payload for e in queued if e is not None and e.dropped)
        await results.aclose()
        return first, session

    # in a daemon thread, so that a reader that never stops (the bug this guards against) fails the test
    import threading

    done = {}
    worker = threading.Thread(target=lambda: done.update(value=run(scenario())), daemon=True)
    worker.start()
    worker.join(20)
    assert "value" in done, "the stream kept reading frames that nobody will ever get results for"
    first, session = done["value"]
    assert first.status in ("ok", "dropped")
    bound = session.max_queued + session.max_in_flight + 2
    assert len(pulled) <= bound, f"read {len(pulled)} frames for a client that reads nothing (bound {bound})"
    assert all(p is None for p in dropped_payloads)
    if policy == DropPolicy.LATEST_FRAME_WINS:
        assert dropped_payloads, "latest-frame-wins should have dropped frames here"


def test_latest_frame_wins_drops_the_oldest_waiting_frame_not_the_newest():
    """A burst of 10 frames into a stream that holds 4: each new frame pushes out the oldest one still
    waiting, so frames 1-6 are dropped (each superseded by the frame 4 later) and 7-10 are analysed."""
    async def process(frame, turn):
        await asyncio.sleep(0.02)
        return frame.sequence

    out = run(collect(StreamSession(process, 4, DropPolicy.LATEST_FRAME_WINS), frames_of(10)))
    assert [o.status for o in out] == ["dropped"] * 6 + ["ok"] * 4
    assert [o.drop_reason for o in out[:6]] == [f"overload: superseded by frame {s + 4} (latest-frame-wins)"
                                                for s in range(1, 7)]


def test_latest_frame_wins_keeps_the_in_flight_count_and_cancels_superseded_work():
    """Found by the mutation run (docs/TESTING.md): every drop gives its place back (the shared in-flight
    count never exceeds the bound, reads 1 per held frame, and is 0 after), and with max_in_flight 1 the
    frame in progress is cancelled when a newer one arrives (its work is not finished for nothing)."""
    stats = StreamStats()
    seen, cancelled = [], []

    async def process(frame, turn):
        seen.append(stats.in_flight)
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            cancelled.append(frame.sequence)
            raise
        return frame.sequence

    session = StreamSession(process, 1, DropPolicy.LATEST_FRAME_WINS, stats)
    out = run(collect(session, frames_of(5, gap=0.01)))
    assert [o.status for o in out] == ["dropped"] * 4 + ["ok"]
    assert cancelled == [1, 2, 3, 4], "the superseded frames' work went on"
    assert seen == [1] * 5
    assert stats.in_flight == 0 and stats.active_streams == 0


def test_the_defaults_a_session_derives_from_max_in_flight():
    async def process(frame, turn):
        return frame.sequence

    async def build(max_in_flight, policy):
        return StreamSession(process, max_in_flight, policy)

    one = run(build(0, DropPolicy.NONE))  # at least one frame is always held
    assert one.max_in_flight == 1 and one.working._value == 1 and one.max_queued == 10 and one.sections == 0
    eight = run(build(8, DropPolicy.NONE))  # every held frame processed at once
    assert eight.working._value == 8 and eight.max_queued == 2 * 8 + 8
    latest = run(build(8, DropPolicy.LATEST_FRAME_WINS))  # one place kept for a waiting frame
    assert latest.working._value == 7
    assert run(build(32, DropPolicy.NONE)).working._value == 16  # at most 16 at once
    assert run(build(1, DropPolicy.LATEST_FRAME_WINS)).working._value == 1


def test_a_frame_that_ends_early_passes_on_every_section_it_did_not_leave():
    """Found by the mutation run (docs/TESTING.md): section k of a frame runs once every earlier frame has
    left it or was failed (the module docstring). Frame 1 fails before any section, frame 2 after leaving
    section 0 but before section 1; frame 3 must still run both sections, after them, in order."""
    entered = []

    async def process(frame, turn):
        if frame.sequence == 1:
            raise InvalidArgument("frame 1 fails before its sections")
        async with turn.section(0):
            entered.append((frame.sequence, 0))
        if frame.sequence == 2:
            raise InvalidArgument("frame 2 fails between its sections")
        async with turn.section(1):
            entered.append((frame.sequence, 1))
        return frame.sequence

    async def main():
        session = StreamSession(process, 4, DropPolicy.NONE, sections=2)
        return await asyncio.wait_for(collect(session, frames_of(3)), 5)  # a section never passed on hangs

    out = run(main())
    assert [o.status for o in out] == ["failed", "failed", "ok"]
    assert entered == [(2, 0), (3, 0), (3, 1)]


def test_failed_frames_keep_their_frame_and_answered_frames_let_go_of_their_payload():
    """A failed result is still the result of its frame (the API answers with its sequence and capture
    time), and an answered frame's payload goes at once (None, as for a dropped one)."""
    async def process(frame, turn):
        if frame.sequence == 2:
            raise InvalidArgument("bad frame")
        if frame.sequence == 3:
            raise ValueError("a plugin bug")
        return frame.sequence

    out = run(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(4)))
    assert [o.status for o in out] == ["ok", "failed", "failed", "ok"]
    assert [o.frame.sequence for o in out] == [1, 2, 3, 4]
    assert all(o.frame.payload is None for o in out)


def test_the_internal_reference_is_the_one_the_log_line_repeats(caplog):
    """An ordinary exception fails its frame as INTERNAL with a reference that the log line repeats (the
    module docstring): an operator finds the traceback from what the client reports."""
    import re

    async def process(frame, turn):
        if frame.sequence == 3:
            raise ValueError("a plugin bug")
        return frame.sequence

    with caplog.at_level("ERROR", logger="mobidem.streaming"):
        out = run(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(4)))
    found = re.fullmatch(r"internal error on frame 3 \(ref ([0-9a-f]+)\); the server log has details",
                         str(out[2].error))
    assert found, str(out[2].error)
    ref = found.group(1)
    records = [r for r in caplog.records if r.name == "mobidem.streaming"]
    assert [r.getMessage() for r in records] == [f"frame 3 failed (ref {ref})"]
    assert records[0].exc_info and "a plugin bug" in str(records[0].exc_info[1])


def test_streams_sharing_stats_are_each_counted_while_they_run():
    """StreamStats is shared by all streams (metrics): two streams running at once count 2 active
    streams and their held frames, and 0 once both have ended."""
    stats = StreamStats()
    seen = []

    async def process(frame, turn):
        await asyncio.sleep(0.05)
        seen.append((stats.active_streams, stats.in_flight))
        return frame.sequence

    async def main():
        a = StreamSession(process, 2, DropPolicy.NONE, stats)
        b = StreamSession(process, 2, DropPolicy.NONE, stats)
        return await asyncio.gather(collect(a, frames_of(2)), collect(b, frames_of(2)))

    outs = run(main())
    assert [len(o) for o in outs] == [2, 2]
    assert seen[0] == (2, 4)
    assert stats.active_streams == 0 and stats.in_flight == 0


def test_closing_the_stream_cancels_the_held_work_before_anything_else_runs_on():
    """Cancelling the stream cancels every frame's work at once, not when the event loop shuts down."""
    started, cancelled = [], []
    process = _sleeper(started, cancelled)

    async def main():
        task = asyncio.ensure_future(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(100)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        return list(cancelled)

    cancelled_in_loop = run(main())
    assert started == [1, 2, 3, 4] and sorted(cancelled_in_loop) == started


def test_a_reader_that_outlives_its_cancellation_takes_no_frame_into_flight():
    """A stream cancelled while its reader is taking a frame: if the reader goes on anyway (Python 3.11's
    asyncio.wait_for returned a message that arrived with the cancel instead of raising it), the frame it
    takes is not held, so nothing stays in flight after the stream has closed."""
    stats = StreamStats()
    more = asyncio.Event()

    async def stubborn_frames():
        yield StreamFrame(1, 1)
        try:
            await more.wait()
        except asyncio.CancelledError:
            pass  # the cancellation is lost, as in wait_for: one more frame comes
        yield StreamFrame(2, 2)

    async def process(frame, turn):
        return frame.sequence

    async def main():
        session = StreamSession(process, 4, DropPolicy.NONE, stats)
        outcomes = session.results(stubborn_frames())
        first = await anext(outcomes)
        await outcomes.aclose()
        return first

    assert run(main()).value == 1
    assert (stats.in_flight, stats.active_streams) == (0, 0)


def test_idle_bounded_raises_a_cancellation_that_comes_with_a_message():
    """The cancel and the client's next message in the same loop turn: the reader is cancelled (it does not
    take the message, as asyncio.wait_for does in Python 3.11), and a silent client still gets
    DEADLINE_EXCEEDED after the idle bound."""
    async def main():
        arrived = asyncio.Event()

        async def client():
            await arrived.wait()
            yield "frame"
            await asyncio.sleep(10)

        reader = asyncio.ensure_future(anext(idle_bounded(client(), 5.0)))
        await asyncio.sleep(0.01)
        arrived.set()
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

        async def silent():
            await asyncio.sleep(10)
            yield "never"

        with pytest.raises(DeadlineExceeded, match=r"^no message on this stream for 0.05 s "
                                                   r"\(stream_idle_timeout_s\): closed; open a new stream to go on$"):
            await anext(idle_bounded(silent(), 0.05))

    run(main())


def test_idle_bounded_with_no_bound_waits_for_a_slow_client():
    """stream_idle_timeout_s = 0: never closed for silence; every message comes through, then the end."""
    async def slow():
        for m in ("options", "frame 1"):
            await asyncio.sleep(0.05)
            yield m

    async def main():
        return [m async for m in idle_bounded(slow(), 0)]

    assert run(main()) == ["options", "frame 1"]
