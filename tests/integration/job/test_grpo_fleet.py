"""``rollout.fleet.RolloutFleet`` on real Ray with small fake rollout workers (seconds, not minutes).

The fakes implement exactly what the fleet calls on a ``rollout.worker.RolloutWorker`` (``health``,
``watch``, ``ready``, ``load_weights``, ``start_continuous``, ``stop_continuous``, ``stats``, and
``generate`` for ``map``) and record every call of their incarnation, so a test can read what a restarted
worker was told and in which order. A worker can be held inside one method (while a file exists) to
freeze a rejoin at a chosen step. Ray restarts them for real (``max_restarts``), so the fleet sees the
same errors (``ActorDiedError``, ``ActorUnavailableError``) as with vLLM workers; the end-to-end version
with real vLLM workers is ``test_job_faults.py`` (minutes).

- a killed worker's leases are re-queued, it goes rejoining -> up, and gets the current weights before
  its continuous loop restarts; killed again with its restarts used up, it is dropped;
- a publish made while a worker rejoins reaches it (before or after its engine start, and while it loads
  the older version);
- a publish Ray delivered to the restarted incarnation before the driver noticed the death is awaited,
  not repeated: the update is applied once and the worker rejoins (it used to be declared dead on the
  refused duplicate, "stale weight update: version 4 <= current version 4", ending the job);
- a worker whose restarts are used up is dropped, the other serves on; with none left ``poll`` fails
  naming them;
- collective transport: workers that cannot join the weight group are reported with the reason and get
  every update through the object store (no second join attempt per update);
- ``map`` runs a payload whose worker died again on a live incarnation;
- a restarted worker whose engine start hangs counts as dead after ``REJOIN_TIMEOUT_S`` (it used to
  stay "rejoining" forever: with one worker the job hung).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from rollout.fleet import RolloutFleet
from rollout.weight_update import WeightUpdate, check_version

DEADLINE_S = 60.0
IDS = ["rollout-0", "rollout-1"]


@ray.remote(num_cpus=0)
class FakeWorker:
    """What ``RolloutFleet`` needs of a rollout worker; an async actor like the real one, so ``watch``
    never blocks the other calls. ``__init__`` runs again on a Ray restart: a new incarnation, version 0,
    no loop, an empty call record."""

    def __init__(self, worker_id: str, hold_dir: str) -> None:
        self.worker_id, self.hold_dir = worker_id, Path(hold_dir)
        self.incarnation = uuid.uuid4().hex
        self.version = 0
        self.continuous = False
        self.record: list[tuple] = []

    async def _enter(self, *call: Any) -> None:
        """Record the call, then wait while ``<hold_dir>/<worker_id>.<method>`` exists."""
        self.record.append(call)
        while (self.hold_dir / f"{self.worker_id}.{call[0]}").exists():
            await asyncio.sleep(0.02)

    async def health(self) -> dict[str, Any]:
        await self._enter("health")
        return {"worker_id": self.worker_id, "incarnation": self.incarnation, "pid": os.getpid(),
                "version": self.version, "continuous": self.continuous}

    async def watch(self) -> None:
        await asyncio.Event().wait()

    async def ready(self) -> dict:
        await self._enter("ready")
        return await self.stats()

    async def load_weights(self, update: WeightUpdate) -> dict:
        await self._enter("load_weights", update.version, await update.tensors)
        self.version = check_version(update.version, self.version)  # the engine's check: stale is refused
        return {"version": update.version}

    async def join_collective(self, handle: dict) -> str:
        await self._enter("join_collective", handle["epoch"])
        return "this stand-in has no engine process to join with"

    async def start_continuous(self, source, sink, sampling: dict, max_in_flight: int) -> None:
        await self._enter("start_continuous", self.version, sampling, max_in_flight)
        await source.lease.remote(self.worker_id, 2)  # the prompts a real loop would hold in flight
        self.continuous = True

    async def stop_continuous(self) -> int:
        await self._enter("stop_continuous")
        self.continuous = False
        return 0

    async def stats(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "version": self.version}

    async def generate(self, payload: dict, sampling: dict) -> dict:
        """``payload["x"] * 2``; with ``die_once`` (a path) the first incarnation to see it exits mid-call."""
        await self._enter("generate", payload["x"])
        marker = payload.get("die_once")
        if marker and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
        return {"y": payload["x"] * 2, "worker": self.worker_id, "incarnation": self.incarnation}

    async def calls(self) -> list[tuple]:
        """Every call this incarnation got, in arrival order (test only)."""
        return list(self.record)


@ray.remote(num_cpus=0)
class FakePromptSource:
    """Leases per worker and a record of ``requeue_lessee`` calls (``rollout.prompts.PromptSource``'s API)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (one source serves every test of the module: an actor less to start each)."""
        self.leases: dict[str, int] = {}
        self.requeued: list[tuple[str, int]] = []

    def lease(self, worker_id: str, n: int) -> None:
        self.leases[worker_id] = self.leases.get(worker_id, 0) + n

    def leased(self, worker_id: str) -> int:
        return self.leases.get(worker_id, 0)

    def requeue_lessee(self, worker_id: str) -> int:
        n = self.leases.pop(worker_id, 0)
        self.requeued.append((worker_id, n))
        return n

    def requeue_calls(self) -> list[tuple[str, int]]:
        return list(self.requeued)


def update(version: int) -> WeightUpdate:
    """What the learner publishes: the version, and the tensors (here a stand-in dict) in the object store."""
    return WeightUpdate(version, tensors=ray.put({"w": float(version)}))


def wait_until(what: str, cond: Callable[[], bool], fleet: RolloutFleet | None = None,
               deadline_s: float = DEADLINE_S) -> None:
    """Poll ``cond`` (and ``fleet.poll()``, as the driver loop does) until true; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while True:
        if fleet is not None:
            fleet.poll()
        if cond():
            return
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s:.0f} s: {what}"
                                 + (f" (fleet states {fleet.state})" if fleet is not None else ""))
        time.sleep(0.02)


def answers(worker: Any, method: str = "health") -> Any:
    """The worker's answer, or None while Ray has it dead or restarting."""
    try:
        return ray.get(getattr(worker, method).remote(), timeout=10)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return None


@pytest.fixture(scope="module")
def prompt_source(local_ray):
    source = FakePromptSource.remote()
    yield source
    ray.kill(source)


@pytest.fixture
def make_fleet(prompt_source, tmp_path, monkeypatch):
    """``make_fleet(max_restarts)`` -> (fleet, workers, source, hold_dir); the workers are killed afterwards."""
    monkeypatch.setattr(RolloutFleet, "HEALTH_RETRY_S", 0.05)
    ray.get(prompt_source.reset.remote())
    made: list[RolloutFleet] = []

    def make(max_restarts: int) -> tuple[RolloutFleet, list[Any], Any, Path]:
        hold = tmp_path / "hold"
        hold.mkdir(exist_ok=True)
        workers = [FakeWorker.options(max_restarts=max_restarts).remote(w, str(hold)) for w in IDS]
        fleet = RolloutFleet(workers)
        made.append(fleet)
        return fleet, workers, prompt_source, hold

    yield make
    for fleet in made:
        fleet.kill()


def start_generating(fleet: RolloutFleet, workers: list[Any], source: Any) -> None:
    """``start_continuous`` on the fleet and wait until every worker's loop holds its leases."""
    fleet.start_continuous(source, None, {"n": 2}, 4)
    wait_until("both loops started", lambda: all(answers(w)["continuous"] for w in workers))
    assert ray.get([source.leased.remote(w) for w in IDS]) == [2, 2]


def test_killed_worker_is_requeued_and_rejoins_with_the_current_weights(make_fleet):
    fleet, workers, source, _ = make_fleet(max_restarts=1)
    old = fleet.incarnation[0]
    fleet.publish(update(3), wait=True)
    start_generating(fleet, workers, source)

    ray.kill(workers[0], no_restart=False)
    wait_until("the death is noticed", lambda: fleet.state[0] != "up", fleet)
    assert fleet.state == ["rejoining", "up"]
    assert ray.get(source.requeue_calls.remote()) == [("rollout-0", 2)]  # its leases went back, only its
    wait_until("rollout-0 is up again", lambda: fleet.state[0] == "up", fleet)

    assert fleet.restarts == 1 and fleet.incarnation[0] != old
    assert [(r["worker"], r["version"], r["requeued"]) for r in fleet.recoveries] == [("rollout-0", 3, 2)]
    calls = [c for c in ray.get(workers[0].calls.remote()) if c[0] != "health"]
    assert calls == [("ready",), ("load_weights", 3, {"w": 3.0}), ("start_continuous", 3, {"n": 2}, 4)]
    h = answers(workers[0])
    assert (h["incarnation"], h["version"], h["continuous"]) == (fleet.incarnation[0], 3, True)
    assert ray.get(source.leased.remote("rollout-0")) == 2  # the new loop leases again
    assert [c[0] for c in ray.get(workers[1].calls.remote())].count("start_continuous") == 1  # untouched

    ray.kill(workers[0], no_restart=False)  # max_restarts=1 is used up: this time it stays dead
    wait_until("rollout-0 is dropped", lambda: fleet.state[0] == "dead", fleet)
    assert fleet.state == ["dead", "up"] and fleet.restarts == 1 and len(fleet.recoveries) == 1
    assert ray.get(source.requeue_calls.remote()) == [("rollout-0", 2), ("rollout-0", 2)]


@pytest.mark.parametrize("held, loads", [("ready", [4]), ("load_weights", [3, 4])],
                         ids=["during-engine-start", "during-older-load"])
def test_publish_while_rejoining_reaches_the_worker(make_fleet, held, loads):
    fleet, workers, source, hold = make_fleet(max_restarts=1)
    fleet.publish(update(3), wait=True)
    start_generating(fleet, workers, source)
    (hold / f"rollout-0.{held}").touch()  # the new incarnation stops inside `held`

    ray.kill(workers[0], no_restart=False)
    wait_until(f"the restarted rollout-0 is inside {held}",
               lambda: fleet.restarts == 1 and held in [c[0] for c in answers(workers[0], "calls") or []], fleet)
    assert fleet.state == ["rejoining", "up"]
    fleet.publish(update(4), wait=True)  # reaches rollout-1 now, rollout-0 once it is back
    assert answers(workers[1])["version"] == 4
    (hold / f"rollout-0.{held}").unlink()
    wait_until("rollout-0 is up again", lambda: fleet.state[0] == "up", fleet)

    calls = [c for c in ray.get(workers[0].calls.remote()) if c[0] != "health"]
    assert [c[1] for c in calls if c[0] == "load_weights"] == loads
    assert calls[-1][:2] == ("start_continuous", 4)  # generating only once the newest weights are in
    assert [r["version"] for r in fleet.recoveries] == [4]
    assert answers(workers[0])["version"] == 4


def test_publish_that_reaches_the_restarted_incarnation_is_applied_once(make_fleet):
    """The race behind "stale weight update: version 4 <= current version 4" ending a job: Ray restarted
    the worker before the driver polled, so a publish made in between went to the *new* incarnation.
    The fleet awaits that publish before it decides what the worker holds: v4 is applied once, the rejoin
    sends no second copy, and the worker is up (it used to be declared dead on the refused duplicate)."""
    fleet, workers, source, hold = make_fleet(max_restarts=1)
    fleet.publish(update(3), wait=True)
    start_generating(fleet, workers, source)
    old = fleet.incarnation[0]

    ray.kill(workers[0], no_restart=False)
    wait_until("Ray restarted rollout-0 (the fleet has not polled yet)",
               lambda: (answers(workers[0]) or {}).get("incarnation", old) != old)
    assert fleet.state == ["up", "up"]
    (hold / "rollout-0.load_weights").touch()  # the new incarnation holds the update it was just sent
    fleet.publish(update(4), wait=False)
    wait_until("the fleet waits for the publish it had in flight",
               lambda: 0 in fleet._rejoin and fleet._rejoin[0].step == "settle", fleet)
    (hold / "rollout-0.load_weights").unlink()
    wait_until("rollout-0 is up again", lambda: fleet.state[0] == "up", fleet)

    calls = [c for c in ray.get(workers[0].calls.remote()) if c[0] != "health"]
    assert [c[1] for c in calls if c[0] == "load_weights"] == [4]  # once: not skipped, not sent twice
    assert calls[-1][:2] == ("start_continuous", 4)
    assert [(r["worker"], r["version"]) for r in fleet.recoveries] == [("rollout-0", 4)]
    assert fleet.state == ["up", "up"] and answers(workers[0])["version"] == 4
    fleet.wait_published()
    assert answers(workers[1])["version"] == 4


def test_workers_that_cannot_join_the_weight_group_get_updates_through_the_object_store(make_fleet, caplog):
    """Collective transport: a worker that cannot join is reported with its reason and falls back to the
    object store; the update still reaches every worker, once."""
    fleet, workers, _, _ = make_fleet(max_restarts=0)
    collective = RolloutFleet(workers, transport="collective", collective={"join_timeout_s": 2.0})
    try:
        collective.publish(update(6), wait=True)
        assert collective.weight_group.fallback == {i: "this stand-in has no engine process to join with"
                                                    for i in (0, 1)}
        assert "cannot join the weight group (this stand-in has no engine process" in caplog.text
        assert collective.last_publish["transport"] == "object_store"
        assert [answers(w)["version"] for w in workers] == [6, 6]
        collective.publish(update(7), wait=True)  # no second try to join: straight through the object store
        for w in workers:
            calls = [c for c in ray.get(w.calls.remote()) if c[0] in ("join_collective", "load_weights")]
            assert [c[0] for c in calls] == ["join_collective"] + ["load_weights"] * 2  # one try, two updates
    finally:
        ray.kill(collective.weight_group.broadcaster)


def test_worker_without_restarts_is_dropped_then_the_job_fails_naming_them(make_fleet):
    fleet, workers, source, _ = make_fleet(max_restarts=0)
    start_generating(fleet, workers, source)

    ray.kill(workers[0], no_restart=False)  # max_restarts=0: Ray does not bring it back
    wait_until("rollout-0 is dropped", lambda: fleet.state[0] == "dead", fleet)
    assert fleet.state == ["dead", "up"] and fleet.up() == [1]
    assert fleet.restarts == 0 and fleet.recoveries == []
    assert ray.get(source.requeue_calls.remote()) == [("rollout-0", 2)]
    fleet.publish(update(5), wait=True)  # the other one serves on
    assert answers(workers[1])["version"] == 5
    assert [s["worker_id"] for s in fleet.stats()] == ["rollout-1"]
    assert [r["worker"] for r in fleet.map("generate", [{"x": 1}, {"x": 2}], {})] == ["rollout-1"] * 2

    ray.kill(workers[1], no_restart=False)
    with pytest.raises(RuntimeError, match="every rollout worker died for good") as err:
        wait_until("poll() fails", lambda: False, fleet)
    assert "rollout-0, rollout-1" in str(err.value)
    assert fleet.state == ["dead", "dead"]


def test_map_runs_a_payload_whose_worker_died_again_on_a_live_incarnation(make_fleet, tmp_path):
    fleet, _, _, _ = make_fleet(max_restarts=1)
    first = list(fleet.incarnation)
    payloads = [{"x": 0, "die_once": str(tmp_path / "died")}, {"x": 1}, {"x": 2}, {"x": 3}]

    out = fleet.map("generate", payloads, {})  # payload 0 goes to rollout-0 (round robin), which exits

    assert (tmp_path / "died").exists()
    assert [r["y"] for r in out] == [0, 2, 4, 6]
    assert (out[0]["worker"], out[0]["incarnation"]) != ("rollout-0", first[0])  # not the dead incarnation
    wait_until("rollout-0 is up again", lambda: fleet.state == ["up", "up"] and fleet.restarts == 1, fleet)
    assert [r["worker"] for r in fleet.recoveries] == ["rollout-0"]


def test_worker_whose_engine_start_hangs_counts_as_dead_after_the_rejoin_timeout(make_fleet, monkeypatch):
    fleet, workers, _, hold = make_fleet(max_restarts=1)
    (hold / "rollout-0.ready").touch()  # the new incarnation's engine start never finishes
    ray.kill(workers[0], no_restart=False)
    wait_until("the restarted rollout-0 is inside ready",
               lambda: fleet.restarts == 1 and "ready" in [c[0] for c in answers(workers[0], "calls") or []], fleet)
    monkeypatch.setattr(RolloutFleet, "REJOIN_TIMEOUT_S", 0.5)  # only now: Ray's restart itself takes seconds
    wait_until("rollout-0 counts as dead (REJOIN_TIMEOUT_S 0.5 s)", lambda: fleet.state[0] == "dead", fleet,
               deadline_s=5.0)  # 10x the timeout
    assert fleet.state[1] == "up"
