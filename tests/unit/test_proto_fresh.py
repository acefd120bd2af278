"""Generated protobuf code is committed and never edited: every committed stub
must equal what ``python -m cistern.core.protogen`` produces from its .proto."""

import pathlib

import pytest

from cistern.core import protogen

PROTOS = protogen.proto_files()


def test_the_repository_has_proto_files():
    assert any(p.name == "metadata.proto" for p in PROTOS), PROTOS


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: str(p.relative_to(protogen.REPO)))
def test_committed_stubs_equal_freshly_generated_ones(proto, tmp_path: pathlib.Path):
    for fresh in protogen.generate(proto, tmp_path):
        committed = proto.parent / fresh.name
        assert committed.exists(), f"{committed} is missing: run python -m cistern.core.protogen"
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.relative_to(protogen.REPO)} is stale: run python -m cistern.core.protogen"
        )


def test_stubs_import_as_a_package_and_use_relative_imports():
    from cistern.metadata.proto import metadata_pb2, metadata_pb2_grpc

    assert metadata_pb2.RequestBatch.DESCRIPTOR.full_name == "cistern.metadata.RequestBatch"
    assert hasattr(metadata_pb2_grpc, "MetadataStub")
    source = pathlib.Path(metadata_pb2_grpc.__file__).read_text()
    assert "from . import metadata_pb2" in source
