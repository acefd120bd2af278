"""The offer scheduler (Mesos-style): a master hosted on the metadata
leader's Raft log, agents beside the storage nodes, and the framework SDK.

* master side (in every metad, active on the leader): ``state.py`` (the
  replicated frameworks, agents and tasks: a pure state machine on the
  metadata log, op codes 1000-1999), ``allocator.py`` (DRF offers: pure),
  ``master.py`` (the leader-only runtime), ``service.py`` (its gRPC face
  and the ``SchedulerExtension`` that cli/meta.py hands to MetaServer);
* agent side (in every ``cistern node``): ``agent.py``, ``isolation.py``;
* framework side: ``client.py`` (``MasterConnection``, shared with the
  agent), ``locality.py`` (delay scheduling: pure), ``framework.py`` (the
  SDK), ``jobs.py`` (``cistern run``);
* ``model.py`` and ``limits.py``: the operations, records and limits;
  ``proto/scheduler.proto``: the wire.

May import: cistern.core, cistern.metadata, cistern.blockstore, cistern.client.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
