"""Generate the riskd.v1 Python modules from protos/riskd/v1/*.proto.

Output goes to riskd/v1/ (gitignored): message modules, gRPC stubs, and
mypy-protobuf .pyi files. Run with the interpreter that has the dev extra:

    .venv/bin/python clients/python/generate.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "riskd" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
INIT_TEXT = '"""Generated from protos/riskd/v1 by clients/python/generate.py; do not edit."""\n'


def main() -> int:
    protos = sorted(PROTO_ROOT.glob("riskd/v1/*.proto"))
    if not protos:
        print(f"generate: no .proto files under {PROTO_ROOT}", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    # Start clean so a deleted or renamed .proto leaves no stale module behind.
    for path in OUT_DIR.iterdir():
        if path.name.endswith(GENERATED_SUFFIXES):
            path.unlink()
    # protoc looks up protoc-gen-mypy{,_grpc} on PATH; the venv's bin dir is not
    # on it unless the venv is activated.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT.relative_to(ROOT)}",
        "--python_out=.",
        "--grpc_python_out=.",
        "--mypy_out=.",
        "--mypy_grpc_out=.",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if result.returncode != 0:
        return result.returncode
    (OUT_DIR / "__init__.py").write_text(INIT_TEXT)
    print(f"generate: {len(protos)} protos -> {OUT_DIR.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
