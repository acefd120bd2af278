"""Generated gRPC stubs of the block service (blockstore.proto). Regenerate
with ``python -m cistern.core.protogen``; never edit the *_pb2* files."""
