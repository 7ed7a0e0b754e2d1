"""Regenerate the Python modules for ``protos/*.proto``: ``python -m protos.generate``.

The generated ``*_pb2.py`` / ``*_pb2_grpc.py`` / ``*_pb2.pyi`` files are committed; a unit test
regenerates them into a temporary folder and fails when the committed ones are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("*.proto"))


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto; return the files written under ``out_dir``."""
    from grpc_tools import protoc

    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out_dir / "protos").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for f in generate():
        print(f"wrote {f.relative_to(ROOT)}")
    sys.exit(0)
