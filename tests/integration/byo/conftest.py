"""Fixtures of the bring-your-own tests: released-style tiny checkpoints of each family, the datasets a user
brings (a MATH-style Parquet file, TRL SFT and DPO files), and one local Ray shared by every engine."""

from __future__ import annotations

import json
import os

import pytest

ROWS = [{"problem": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}."}
        for a in range(1, 7) for b in range(1, 5)]


@pytest.fixture(scope="session")
def byo_ray():
    """A local Ray (4 logical CPUs: learner + rollout worker + a served worker + slack) for the session."""
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def byo_data(tmp_path_factory) -> dict:
    """``{"math": parquet, "sft": jsonl, "dpo": jsonl}``: MATH-style problems, SFT ``messages`` rows and
    conversational DPO pairs (8 rows each: 2 steps at batch size 4)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("byo-data")
    pq.write_table(pa.Table.from_pylist(ROWS), str(root / "math.parquet"))
    sft = [{"messages": [{"role": "user", "content": r["problem"]}, {"role": "assistant", "content": r["solution"]}]}
           for r in ROWS[:8]]
    (root / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in sft) + "\n")
    dpo = [{"prompt": [{"role": "user", "content": r["problem"]}],
            "chosen": [{"role": "assistant", "content": r["solution"]}],
            "rejected": [{"role": "assistant", "content": r["solution"].replace("boxed{", "boxed{1")}]}
           for r in ROWS[:8]]
    (root / "dpo.jsonl").write_text("\n".join(json.dumps(r) for r in dpo) + "\n")
    return {"math": root / "math.parquet", "sft": root / "sft.jsonl", "dpo": root / "dpo.jsonl"}
