"""Stream semantics (pure logic): order, one outcome per frame, bounded in-flight, drops, cancellation."""

from __future__ import annotations

import asyncio
import random

import pytest

from mobidem.errors import InvalidArgument
from mobidem.streaming import DropPolicy, StreamFrame, StreamSession, StreamStats


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
    async def process(frame):
        await asyncio.sleep(random.Random(frame.sequence).uniform(0, 0.02))
        return frame.sequence * 10

    out = run(collect(StreamSession(process, 8, DropPolicy.NONE), frames_of(50)))
    assert [o.frame.sequence for o in out] == list(range(1, 51))
    assert [o.value for o in out] == [s * 10 for s in range(1, 51)]


def test_in_flight_never_exceeds_the_bound_without_drops():
    stats = StreamStats()
    peak = 0

    async def process(frame):
        nonlocal peak
        peak = max(peak, stats.in_flight)
        await asyncio.sleep(0.005)
        return frame.sequence

    out = run(collect(StreamSession(process, 3, DropPolicy.NONE, stats), frames_of(30)))
    assert len(out) == 30 and all(o.status == "ok" for o in out)
    assert peak <= 3 and stats.in_flight == 0 and stats.active_streams == 0


def test_latest_frame_wins_drops_waiting_frames_with_a_reason_and_keeps_the_newest():
    async def process(frame):
        await asyncio.sleep(0.02)
        return frame.sequence

    out = run(collect(StreamSession(process, 2, DropPolicy.LATEST_FRAME_WINS), frames_of(20, gap=0.001)))
    assert [o.frame.sequence for o in out] == list(range(1, 21))
    dropped = [o for o in out if o.status == "dropped"]
    assert dropped and all("superseded" in o.drop_reason for o in dropped)
    assert out[-1].status == "ok"
    assert out[0].status == "ok", "work already started is finished, not wasted"


def test_a_failing_frame_fails_alone():
    async def process(frame):
        if frame.sequence == 2:
            raise InvalidArgument("bad frame")
        return frame.sequence

    out = run(collect(StreamSession(process, 4, DropPolicy.NONE), frames_of(3)))
    assert [o.status for o in out] == ["ok", "failed", "ok"]
    assert str(out[1].error) == "bad frame"


def test_sequence_must_increase():
    async def process(frame):
        return frame.sequence

    async def frames():
        for seq in (1, 2, 2):
            yield StreamFrame(seq, seq)

    with pytest.raises(InvalidArgument, match="must increase"):
        run(collect(StreamSession(process, 4, DropPolicy.NONE), frames()))


def test_cancelling_the_stream_cancels_all_work_at_once():
    stats = StreamStats()
    started, cancelled = [], []

    async def process(frame):
        started.append(frame.sequence)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(frame.sequence)
            raise

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
