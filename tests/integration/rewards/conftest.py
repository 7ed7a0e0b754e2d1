"""Fixtures: a real ``flywheel serve-reward`` process (uvicorn + gRPC) with a real Redis cache."""

from __future__ import annotations

import pytest
from reward_server_process import TOKEN, start_server, stop_server


@pytest.fixture(scope="module")
def reward_server(redis_url):
    proc, http_port, grpc_port = start_server(
        "--redis_url", redis_url, "--auth_token", TOKEN, "--max_batch_items", "16", "--max_item_chars", "5000",
        "--max_request_bytes", "40000", "--timeout_s", "10.0")
    yield {"http": f"http://127.0.0.1:{http_port}", "grpc": f"127.0.0.1:{grpc_port}", "proc": proc}
    assert stop_server(proc) == 0
