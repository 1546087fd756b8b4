"""Unit tests of app.batcher with a gated fake model (no torch, no HTTP)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.batcher import BatchQueue, batch_work
from app.cost import CostModel, plan_chunks
from app.errors import (
    ClientDisconnectedError,
    OverloadedError,
    QueueTimeoutError,
    UnhealthyError,
)
from app.metrics import ServeMetrics


class FakeModel:
    """Records every batch; each batch waits for ``gate`` (open by default); may fail."""

    def __init__(self, *, gated: bool = False) -> None:
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.batches: list[list[str]] = []
        self.started = asyncio.Event()
        self.fail_next = False

    async def __call__(self, batch):
        self.batches.append([p.payload for p in batch])
        self.started.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return [f"out:{p.payload}" for p in batch]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_full_batch_flushes_early_without_waiting():
    async def main():
        model = FakeModel()
        q = BatchQueue(model, max_batch_size=4, max_wait_s=30.0)
        q.start()
        t0 = time.monotonic()
        pendings = [q.submit([3], payload=str(i)) for i in range(4)]
        results = await asyncio.gather(*(q.wait(p) for p in pendings))
        assert time.monotonic() - t0 < 5.0  # far below max_wait_s
        assert results == ["out:0", "out:1", "out:2", "out:3"]
        assert model.batches == [["0", "1", "2", "3"]]
        await q.stop()

    run(main())


def test_timeout_flushes_partial_batch():
    async def main():
        model = FakeModel()
        q = BatchQueue(model, max_batch_size=8, max_wait_s=0.1)
        q.start()
        t0 = time.monotonic()
        pendings = [q.submit([3], payload=str(i)) for i in range(2)]
        await asyncio.sleep(0.03)
        assert model.batches == []  # still waiting for company
        results = await asyncio.gather(*(q.wait(p) for p in pendings))
        elapsed = time.monotonic() - t0
        assert 0.09 <= elapsed < 5.0
        assert results == ["out:0", "out:1"]
        assert model.batches == [["0", "1"]]
        await q.stop()

    run(main())


def test_no_wait_for_company_when_no_request_is_on_its_way():
    async def main():
        arriving = [0]
        model = FakeModel()
        q = BatchQueue(model, max_batch_size=8, max_wait_s=30.0, arriving=lambda: arriving[0])
        q.start()
        t0 = time.monotonic()
        assert await q.wait(q.submit([3], payload="alone")) == "out:alone"
        assert time.monotonic() - t0 < 5.0  # closed at once, not after max_wait_s
        # With a request on its way, the batch waits for it (and stops waiting once it is in).
        arriving[0] = 1
        first = q.submit([3], payload="first")
        await asyncio.sleep(0.05)
        assert model.batches == [["alone"]]  # still gathering
        arriving[0] = 0
        second = q.submit([3], payload="second")
        assert await asyncio.gather(q.wait(first), q.wait(second)) == ["out:first", "out:second"]
        assert model.batches == [["alone"], ["first", "second"]]
        await q.stop()

    run(main())


def test_token_budget_splits_batches_and_item_goes_back_to_front():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=32, max_batch_tokens=20, max_wait_s=0.01)
        q.start()
        blocker = q.submit([1], payload="blocker")
        await model.started.wait()  # worker busy: the rest queue up together
        a = q.submit([10], payload="a")
        b = q.submit([10], payload="b")  # 2 x 10 = 20 fits
        c = q.submit([10], payload="c")  # 3 x 10 = 30 does not
        d = q.submit([2, 2], payload="d")  # would fit with c (3 x 10 = 30 > 20: no), own batch
        model.gate.set()
        await asyncio.gather(*(q.wait(p) for p in (blocker, a, b, c, d)))
        assert model.batches == [["blocker"], ["a", "b"], ["c"], ["d"]]
        await q.stop()

    run(main())


def test_batch_size_counts_inputs_not_requests():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=4, max_wait_s=0.01)
        q.start()
        blocker = q.submit([1], payload="blocker")
        await model.started.wait()
        a = q.submit([3, 3, 3], payload="a")
        b = q.submit([3, 3], payload="b")  # 3 + 2 > 4: next batch
        c = q.submit([3], payload="c")
        model.gate.set()
        await asyncio.gather(*(q.wait(p) for p in (blocker, a, b, c)))
        assert model.batches == [["blocker"], ["a"], ["b", "c"]]
        await q.stop()

    run(main())


def test_groups_never_share_a_batch():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=8, max_wait_s=0.01)
        q.start()
        blocker = q.submit([1], payload="blocker", group="v1")
        await model.started.wait()
        ps = [
            q.submit([2], payload="a1", group="v1"),
            q.submit([2], payload="b2", group="v2"),
            q.submit([2], payload="c2", group="v2"),
        ]
        model.gate.set()
        await asyncio.gather(q.wait(blocker), *(q.wait(p) for p in ps))
        assert model.batches == [["blocker"], ["a1"], ["b2", "c2"]]
        await q.stop()

    run(main())


def test_exception_reaches_every_caller_and_worker_survives():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=8, max_wait_s=0.01)
        q.start()
        model.fail_next = True
        a, b = q.submit([2], payload="a"), q.submit([2], payload="b")
        model.gate.set()
        results = await asyncio.gather(q.wait(a), q.wait(b), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
        assert q.is_alive
        c = q.submit([2], payload="c")
        assert await q.wait(c) == "out:c"
        await q.stop()

    run(main())


def test_cancelled_and_disconnected_requests_are_skipped_before_compute():
    async def main():
        metrics = ServeMetrics()
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=8, max_wait_s=0.01, metrics=metrics)
        q.start()
        blocker = q.submit([1], payload="blocker")
        await model.started.wait()
        b = q.submit([2], payload="b")
        c = q.submit([2], payload="c")
        d = q.submit([2], payload="d")
        waiter_b = asyncio.create_task(q.wait(b))
        gone = asyncio.get_running_loop().create_future()
        waiter_c = asyncio.create_task(q.wait(c, disconnected=gone))
        await asyncio.sleep(0.01)
        waiter_b.cancel()
        gone.set_result(None)  # c's client went away
        with pytest.raises(ClientDisconnectedError):
            await waiter_c
        with pytest.raises(asyncio.CancelledError):
            await waiter_b
        assert b.future.cancelled() and c.future.cancelled()
        model.gate.set()
        assert await q.wait(d) == "out:d"
        await q.wait(blocker)
        assert model.batches == [["blocker"], ["d"]]
        dropped = metrics.dropped
        assert dropped.labels(reason="cancelled")._value.get() == 1
        assert dropped.labels(reason="client_disconnected")._value.get() == 1
        await q.stop()

    run(main())


def test_started_request_is_not_dropped_on_disconnect():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=8, max_wait_s=0.0)
        q.start()
        a = q.submit([2], payload="a")
        await model.started.wait()
        gone = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(q.wait(a, disconnected=gone))
        gone.set_result(None)
        await asyncio.sleep(0.01)
        assert not waiter.done()  # compute runs anyway; the result is simply delivered
        model.gate.set()
        assert await waiter == "out:a"
        await q.stop()

    run(main())


def test_full_queue_gives_overloaded_error():
    async def main():
        metrics = ServeMetrics()
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=1, max_wait_s=0.0, max_queue=2, metrics=metrics)
        q.start()
        running = q.submit([1], payload="running")
        await model.started.wait()
        queued = [q.submit([1], payload=f"q{i}") for i in range(2)]
        assert len(q) == 2
        assert metrics.queue_size._value.get() == 2
        with pytest.raises(OverloadedError) as err:
            q.submit([1], payload="one too many")
        assert err.value.status_code == 429 and err.value.headers["Retry-After"]
        assert metrics.dropped.labels(reason="overloaded")._value.get() == 1
        model.gate.set()
        assert await asyncio.gather(*(q.wait(p) for p in [running, *queued])) == [
            "out:running",
            "out:q0",
            "out:q1",
        ]
        await q.stop()

    run(main())


def test_queue_deadline_gives_timeout_and_started_requests_finish():
    async def main():
        metrics = ServeMetrics()
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=1, max_wait_s=0.0, metrics=metrics)
        q.start()
        running = q.submit([1], payload="running", timeout_s=0.05)
        await model.started.wait()
        late = q.submit([1], payload="late", timeout_s=0.05)
        with pytest.raises(QueueTimeoutError):
            await q.wait(late)
        model.gate.set()
        # Its deadline passed too, but its batch had started: it completes.
        assert await q.wait(running) == "out:running"
        assert model.batches == [["running"]]
        assert metrics.dropped.labels(reason="deadline")._value.get() == 1
        await q.stop()

    run(main())


def test_metrics_are_updated_by_the_queue():
    async def main():
        metrics = ServeMetrics()
        q = BatchQueue(FakeModel(), max_batch_size=8, max_wait_s=0.0, metrics=metrics)
        q.start()
        p = q.submit([4, 7], payload="x")
        await q.wait(p)
        await q.stop()
        text = metrics.render()[0].decode()
        assert "bert_batch_size_sum 2.0" in text
        assert "bert_batch_tokens_sum 14.0" in text  # 2 inputs padded to 7
        assert "bert_inference_duration_seconds_count 1.0" in text
        assert "bert_queue_duration_seconds_count 1.0" in text

    run(main())


def test_stop_fails_queued_requests_and_refuses_new_ones():
    async def main():
        model = FakeModel(gated=True)
        q = BatchQueue(model, max_batch_size=1, max_wait_s=0.0)
        q.start()
        running = q.submit([1], payload="running")
        await model.started.wait()
        queued = q.submit([1], payload="queued")
        await q.stop(drain_timeout_s=0.05)
        assert not q.is_alive
        for p in (running, queued):
            with pytest.raises(UnhealthyError):
                await q.wait(p)
        with pytest.raises(UnhealthyError):
            q.submit([1])

    run(main())


def test_stop_drains_queue_when_given_time():
    async def main():
        model = FakeModel()
        q = BatchQueue(model, max_batch_size=1, max_wait_s=0.0)
        q.start()
        ps = [q.submit([1], payload=str(i)) for i in range(3)]
        await q.stop(drain_timeout_s=5.0)
        assert [p.future.result() for p in ps] == ["out:0", "out:1", "out:2"]

    run(main())


def test_stop_answers_a_batch_still_gathering_company():
    """A request taken off the queue into a batch that waits for company (max_wait) is neither
    queued nor computing; stop() must still answer it, and a drain closes that batch at once
    instead of letting it wait out max_wait."""

    async def main():
        model = FakeModel()
        q = BatchQueue(model, max_batch_size=8, max_wait_s=30.0)
        q.start()
        caught = q.submit([1], payload="caught")
        await _until(lambda: len(q) == 0)  # the worker took it and waits for company
        await q.stop(drain_timeout_s=0.0)
        with pytest.raises(UnhealthyError):
            await asyncio.wait_for(q.wait(caught), 2.0)
        assert model.batches == []

        model = FakeModel()
        q = BatchQueue(model, max_batch_size=8, max_wait_s=30.0)
        q.start()
        drained = q.submit([1], payload="drained")
        await _until(lambda: len(q) == 0)
        t0 = time.monotonic()
        await q.stop(drain_timeout_s=5.0)
        assert time.monotonic() - t0 < 2.0  # far below max_wait_s
        assert drained.future.result() == "out:drained"

    run(main())


def test_plan_chunks_known_answers():
    assert plan_chunks([]) == []
    assert plan_chunks([5, 6, 7]) == [(0, 3)]
    assert plan_chunks([5, 5, 6, 100]) == [(0, 3), (3, 4)]
    # Without overhead every distinct length is its own pass.
    assert plan_chunks([2, 2, 3], CostModel(overhead=0)) in ([(0, 2), (2, 3)], [(0, 3)])
    # A model that drops padding pays for it only in attention: no split for a short outlier...
    unpadded = CostModel(overhead=64, attention=0.001, padded=False)
    assert plan_chunks([5, 5, 6, 100], unpadded) == [(0, 4)]
    # ...but a long one's (n, T, T) attention outweighs a pass of overhead.
    assert plan_chunks([5, 5, 6, 6, 6, 500], unpadded) == [(0, 5), (5, 6)]
    with pytest.raises(ValueError, match="sorted"):
        plan_chunks([3, 2])


@given(st.lists(st.integers(1, 512), min_size=1, max_size=40), st.integers(0, 256))
def test_plan_chunks_covers_inputs_and_never_costs_more_than_one_pass(lengths, overhead):
    lengths = sorted(lengths)
    chunks = plan_chunks(lengths, CostModel(overhead=overhead))
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all(s < e for s, e in chunks)
    cost = sum(overhead + lengths[e - 1] * (e - s) for s, e in chunks)
    assert cost <= overhead + lengths[-1] * len(lengths)


def test_batch_work_padded_and_unpadded():
    from app.batcher import Pending

    loop = asyncio.new_event_loop()
    try:
        ps = [Pending([3, 9], None, loop.create_future()), Pending([4], None, loop.create_future())]
        assert batch_work(ps, CostModel()) == 27  # 3 inputs padded to 9
        unpadded = CostModel(attention=0.5, padded=False)
        assert batch_work(ps, unpadded) == 16 + 0.5 * 3 * 9 * 9
    finally:
        loop.close()
