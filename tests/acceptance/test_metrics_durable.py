"""``/metrics`` counters never go backwards (issue 10): they live in PostgreSQL, not Redis,
so they keep their values while Redis is down, after it loses its data, across restarts
of ntq's processes, and from whichever web process answers; values are exact."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text

from ntq.store import counters as counter_rows
from tests.support.hook import HookServer
from tests.support.procs import Api, Proc, RedisServer, Stack, free_port, wait_http
from tests.support.scrape import Samples, counters, exposition, parse, promtool_check, wait_metrics
from tests.support.scrape import metrics as scrape
from tests.support.tasks import enqueue, eventually, finished

COMPLETED = "ntq_tasks_completed_total"
ENQUEUED = "ntq_tasks_enqueued_total"


class Scraper:
    """Scrapes ``/metrics`` every 50 ms in a thread, as Prometheus would (faster)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.scrapes: list[Samples] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.scrapes.append(scrape(self.base))

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def assert_never_decreased(self) -> None:
        """No counter read lower than before, over enough scrapes to tell (what happened
        may have been quick: the scraping goes on meanwhile)."""
        eventually(lambda: len(self.scrapes) > 10, 15, "more than 10 scrapes")
        last: Samples = {}
        for number, sample in enumerate(self.scrapes):
            seen = counters(sample)
            dropped = {
                name: (last[name], value)
                for name, value in seen.items()
                if value < last.get(name, 0)
            }
            assert not dropped, f"scrape {number}: counters went backwards: {dropped}"
            last = seen


@pytest.fixture
def scraper(stack: Stack, api: Api) -> Iterator[Scraper]:
    with Scraper(stack.url) as running:
        yield running


def deliver(api: Api, url: str, count: int) -> None:
    for task_id in [enqueue(api, url) for _ in range(count)]:
        finished(api, task_id, "COMPLETED")


def test_counters_never_drop_while_redis_is_down_or_after_it_loses_its_data(
    private_api: Api, private_stack: Stack, private_redis: RedisServer, hook: HookServer
) -> None:
    private_stack.worker()
    private_stack.requeue()
    url = hook.script("/ok")
    with Scraper(private_stack.url) as scraper:
        deliver(private_api, url, 5)
        wait_metrics(private_stack.url, lambda s: s[COMPLETED] == 5)

        private_redis.stop()
        ids = [enqueue(private_api, url) for _ in range(5)]  # counted without Redis
        down = wait_metrics(private_stack.url, lambda s: s[ENQUEUED] == 10)
        assert down["ntq_redis_up"] == 0
        assert down[COMPLETED] == 5

        private_redis.start()  # the same port, empty: Redis lost everything
        for task_id in ids:
            finished(private_api, task_id, "COMPLETED")
        wait_metrics(private_stack.url, lambda s: s[COMPLETED] == 10)
        redis.Redis.from_url(private_redis.url).flushall()
        after_flush = scrape(private_stack.url)
    scraper.assert_never_decreased()
    assert after_flush["ntq_redis_up"] == 1
    assert (
        after_flush[ENQUEUED],
        after_flush[COMPLETED],
        after_flush["ntq_attempt_duration_seconds_count"],
    ) == (10, 10, 10)


def test_counters_add_up_across_restarts_and_read_the_same_from_every_web(
    api: Api, stack: Stack, scraper: Scraper, hook: HookServer
) -> None:
    url = hook.script("/ok")
    worker = stack.worker()
    deliver(api, url, 3)
    worker.stop()  # SIGTERM at once: what it has not written yet, it writes on its way out
    worker = stack.worker()
    deliver(api, url, 3)
    wait_metrics(stack.url, lambda s: s[COMPLETED] == 6)
    worker.kill()  # SIGKILL: only what was not yet written can be lost
    stack.worker()
    deliver(api, url, 3)

    other = second_web(stack)
    first = wait_metrics(stack.url, lambda s: s[COMPLETED] == 9)
    assert counters(scrape(other)) == counters(first)
    assert (
        first[ENQUEUED],
        first['ntq_attempts_total{outcome="complete"}'],
        first["ntq_attempt_duration_seconds_count"],
    ) == (9, 9, 9)
    scraper.assert_never_decreased()


def second_web(stack: Stack) -> str:
    """Another web process on the same database and Redis; its base URL."""
    port = free_port()
    proc: Proc = stack.spawn("web", "--port", str(port), "--workers", "1")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", proc)
    return base


def test_a_stopped_web_writes_what_it_counted(api: Api, stack: Stack, hook: HookServer) -> None:
    other = second_web(stack)
    enqueue(api, hook.script("/later"), delay=60)
    api.http.close()
    stack.procs[0].stop()  # at once, before its next flush would have run
    assert scrape(other)[ENQUEUED] == 1


BIG = {
    "enqueued": 1_234_567_891,
    "attempts:complete": 1_000_001,
    "completed": 9_007_199_254,
    "duration_bucket:0": 1_000_003,
    "duration_bucket:13": 2,
    "duration_sum_ms": 1_234_567_891,
}


def test_large_counts_read_exactly_and_promtool_accepts_them(
    api: Api, stack: Stack, engine: Engine
) -> None:
    with engine.begin() as conn:
        counter_rows.write(conn, "elsewhere/1/a", BIG)
        counter_rows.write(conn, "elsewhere/2/b", {"enqueued": 9, "completed": 1})
    body = exposition(stack.url)
    promtool_check(body)
    sample = parse(body)
    assert sample[ENQUEUED] == 1_234_567_900
    assert sample['ntq_attempts_total{outcome="complete"}'] == 1_000_001
    assert sample[COMPLETED] == 9_007_199_255
    assert sample['ntq_attempt_duration_seconds_bucket{le="0.005"}'] == 1_000_003
    assert sample['ntq_attempt_duration_seconds_bucket{le="+Inf"}'] == 1_000_005
    assert sample["ntq_attempt_duration_seconds_count"] == 1_000_005
    assert sample["ntq_attempt_duration_seconds_sum"] == 1_234_567.891


def rows(engine: Engine) -> list[str]:
    with engine.begin() as conn:
        return list(
            conn.execute(text("SELECT DISTINCT process FROM counters ORDER BY 1")).scalars()
        )


def test_the_requeue_poller_folds_quiet_processes_and_the_sums_stay(
    api: Api, stack: Stack, engine: Engine, scraper: Scraper
) -> None:
    with engine.begin() as conn:
        for process in ("gone/1/a", "gone/2/b", "quiet/3/c", "busy/4/d"):
            counter_rows.write(conn, process, BIG)
        conn.execute(
            text(
                "UPDATE counters SET updated = now() - interval '1 hour' "
                "WHERE process <> 'busy/4/d'"
            )
        )
    before = scrape(stack.url)
    stack.requeue()
    eventually(lambda: rows(engine) == ["busy/4/d", counter_rows.FOLDED], 15, "rows folded")
    with engine.begin() as conn:
        counter_rows.write(conn, "quiet/3/c", {"enqueued": 1})  # counting again after the fold
    after = scrape(stack.url)
    assert after[ENQUEUED] == before[ENQUEUED] + 1 == 4 * BIG["enqueued"] + 1
    assert {k: v for k, v in counters(after).items() if k != ENQUEUED} == {
        k: v for k, v in counters(before).items() if k != ENQUEUED
    }
    scraper.assert_never_decreased()
