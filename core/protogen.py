"""Regenerate every ``<role>/proto/*.proto`` in the repository.

Run ``python -m cistern.core.protogen`` after editing a .proto file and commit
the results; ``tests/unit/test_proto_fresh.py`` fails when the committed stubs
differ from what this produces. Generated code is never edited by hand.

protoc writes ``import metadata_pb2 as metadata__pb2`` into the gRPC stubs, an
absolute import that only works with the proto folder on ``sys.path``; the one
fix we apply makes it package-relative (``from . import metadata_pb2 ...``).

This is a development tool: it needs grpcio-tools (the ``test`` extra), which
the daemons never import.
"""

from __future__ import annotations

import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def proto_files(root: pathlib.Path = REPO) -> list[pathlib.Path]:
    """Every .proto under a top-level ``<role>/proto/`` folder, sorted."""
    return sorted(p for p in root.glob("*/proto/*.proto") if ".venv" not in p.parts)


def generate(proto: pathlib.Path, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate the stubs of one .proto into out_dir; return the written paths."""
    from grpc_tools import protoc  # a dev dependency: imported only when generating

    # protoc's own well-known types (google/protobuf/*.proto) ship with grpc_tools.
    include = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto.parent}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {proto}")
    stem = proto.stem
    written = [out_dir / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES]
    for path in written:
        assert path.exists(), path
        path.write_text(_relative_imports(path.read_text()))
    return written


def _relative_imports(source: str) -> str:
    # Only the imports of sibling *_pb2 modules are rewritten; google.protobuf
    # and grpc imports stay absolute.
    return re.sub(r"^import (\w+_pb2) as (\w+)$", r"from . import \1 as \2", source, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    protos = proto_files()
    for proto in protos:
        for path in generate(proto, proto.parent):
            print(path.relative_to(REPO))
    if not protos:
        print("no */proto/*.proto files found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
