"""Regenerate the committed Python stubs of the quantledger API.

    python protos/generate.py            # rewrite services/quantledger/v1/*_pb2*.py(i)
    python protos/generate.py --out DIR  # write them under DIR instead (the drift test uses this)

The stubs land where their proto package says (quantledger.v1), so the imports inside generated
code need no edits. Needs grpcio-tools (the `dev` extra), pinned so output is reproducible.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import google.rpc.status_pb2
import grpc_tools
from grpc_tools import protoc

PROTOS = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = PROTOS.parent / "services"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc on every .proto under protos/quantledger and return the files written."""
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "quantledger").rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    googleapis = pathlib.Path(google.rpc.status_pb2.__file__).parents[2]
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for source in sources:
        stem = source.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(out / f"{stem}{suffix}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
