"""Generated gRPC stubs of the scheduler's services (``scheduler.proto``);
regenerate with ``python -m cistern.core.protogen``."""
