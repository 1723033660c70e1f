"""Fails when the committed *_pb2 files differ from what grpcio-tools makes now."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
GENERATED_DIR = PROTO_DIR / "batchinfer" / "v1"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in GENERATED_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I",
                str(PROTO_DIR),
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                *protos,
            ],
            check=True,
        )
        fresh = Path(out) / "batchinfer" / "v1"
        stale = []
        for made in sorted(fresh.iterdir()):
            committed = GENERATED_DIR / made.name
            if not committed.exists() or not filecmp.cmp(made, committed, shallow=False):
                stale.append(made.name)
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run `make protos`", file=sys.stderr)
        return 1
    print(f"generated code matches {len(protos)} .proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
