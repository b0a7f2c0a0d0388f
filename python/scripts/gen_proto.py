#!/usr/bin/env python3
"""Generates tether_client/_proto from proto/proto/tether.proto, or checks the committed copy.

The generated modules are committed so `pip install ./python` needs no protoc; they are never
edited by hand. The protoc used is the one inside the pinned grpcio-tools of
requirements-dev.txt, so every developer and CI produce the same bytes.

    python scripts/gen_proto.py           # regenerate in place
    python scripts/gen_proto.py --check   # regenerate into a temp dir; fail if the copy differs
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

PYTHON_DIR = Path(__file__).resolve().parent.parent
PROTO_DIR = PYTHON_DIR.parent / "proto" / "proto"
PROTO_FILE = "tether.proto"
OUT_DIR = PYTHON_DIR / "tether_client" / "_proto"
GENERATED = ("tether_pb2.py", "tether_pb2.pyi")


def generate(out: Path) -> None:
    """Runs the bundled protoc, writing the generated modules into `out`."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("gen_proto: grpcio-tools is missing: pip install -r python/requirements-dev.txt")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        str(PROTO_DIR / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        sys.exit("gen_proto: protoc failed")


def check() -> int:
    """Regenerates into a temporary directory; returns 1 (with a diff) if the copy is stale."""
    stale = False
    with tempfile.TemporaryDirectory() as tmp:
        fresh_dir = Path(tmp)
        generate(fresh_dir)
        for name in GENERATED:
            fresh = (fresh_dir / name).read_text()
            committed_path = OUT_DIR / name
            committed = committed_path.read_text() if committed_path.exists() else ""
            if fresh != committed:
                stale = True
                diff = difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    f"committed/{name}",
                    f"generated/{name}",
                    n=1,
                )
                sys.stderr.writelines(list(diff)[:60])
    if stale:
        print(
            "gen_proto: tether_client/_proto is stale against proto/proto/tether.proto; "
            "run `python python/scripts/gen_proto.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    print("gen_proto: generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    if parser.parse_args().check:
        return check()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    generate(OUT_DIR)
    print(f"gen_proto: wrote {', '.join(GENERATED)} to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
