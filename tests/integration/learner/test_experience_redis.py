"""Redis Streams backend on a real redis-server: msgpack payloads, ack, and no loss when a consumer dies."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import msgpack
import pytest

from learner.experience import PAYLOAD_FIELD, RedisExperienceStream
from rollout.trajectory import Group

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


def ids(groups):
    return [g["group_id"] for g in groups]


@pytest.fixture()
def stream_name():
    return f"test:exp:{uuid.uuid4().hex[:8]}"


def test_put_get_ack_roundtrip_in_msgpack(redis_url, stream_name, groups_factory):
    s = RedisExperienceStream(redis_url, stream_name, consumer="c0")
    groups = groups_factory(3, 2, seed=1)
    s.put(groups)
    raw = s.client.xrange(stream_name)
    assert Group.from_dict(msgpack.unpackb(raw[0][1][PAYLOAD_FIELD], raw=False)).to_dict() == groups[0]
    assert s.size() == 3
    got = s.get(2, timeout=1.0)
    assert got == groups[:2] and s.pending() == 2 and s.size() == 1
    assert s.ack() == 2 and s.pending() == 0
    assert s.get(5, timeout=0.2) == groups[2:]  # fewer than asked after the timeout


def test_malformed_entry_is_skipped_and_acknowledged(redis_url, stream_name, groups_factory):
    s = RedisExperienceStream(redis_url, stream_name, consumer="c0")
    s.client.xadd(stream_name, {PAYLOAD_FIELD: b"\x93not a group"})
    s.put(groups_factory(1, 2, seed=2))
    got = s.get(2, timeout=0.3)
    assert len(got) == 1 and s.bad_entries == 1


CONSUMER = """
import json, os, signal, sys
from learner.experience import RedisExperienceStream
s = RedisExperienceStream(sys.argv[1], sys.argv[2], consumer="doomed")
first = s.get(8, timeout=5.0)
s.ack()                                   # trained and checkpointed
second = s.get(5, timeout=5.0)            # delivered, never acknowledged
print(json.dumps({"acked": [g["group_id"] for g in first], "lost": [g["group_id"] for g in second]}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)      # the learner crashes
"""


@pytest.mark.parametrize("restart_name", ["doomed", "fresh"])
def test_killed_consumer_loses_nothing(redis_url, stream_name, restart_name, groups_factory):
    producer = RedisExperienceStream(redis_url, stream_name, consumer="producer-only")
    groups = groups_factory(20, 2, seed=3)
    producer.put(groups)
    proc = subprocess.run([sys.executable, "-c", CONSUMER, redis_url, stream_name], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(seen["acked"]) == 8 and len(seen["lost"]) == 5
    # the restarted learner (same or a new consumer name) first gets the 5 unacknowledged groups back
    restarted = RedisExperienceStream(redis_url, stream_name, consumer=restart_name)
    got = restarted.get(20, timeout=1.0)
    assert ids(got)[:5] == seen["lost"]
    restarted.ack()
    assert sorted(seen["acked"] + ids(got)) == sorted(ids(groups))  # every group exactly once
    assert restarted.pending() == 0 and restarted.size() == 0
