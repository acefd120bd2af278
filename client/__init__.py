"""The filesystem client: an ``os``-like API (and an asynchronous form) over
the metadata and block clients. The one way in for the CLI, the mount, the
benchmark and the frameworks.

May import: cistern.core, cistern.metadata, cistern.blockstore.

Public surface:

* ``connect(cluster=None, *, uid=None, gid=None, groups=None, timeout_s=30.0,
  stale_reads=False, umask=0o022) -> Client`` — ``api.py``.
* ``Client``: the ``os``-like methods (contracts in ``api.py`` and
  ``plans.py``), ``with_creds(uid, gid, groups)`` for cheap per-caller views,
  ``client.futures`` (``Futures``: every method returns a
  ``concurrent.futures.Future``) and ``client.aio`` (``AsyncClient``: every
  method is a coroutine) — ``aio.py``.
* The data path (blocking only): ``Client.open(path, mode, ...)`` (a
  ``files.File`` or a TextIOWrapper over one), ``read_file``,
  ``write_file``, ``block_locations(path)``, ``layout(path)``;
  ``extents.py`` (pure: mode parsing, a handle's view of the file's
  blocks and buffers), ``files.py`` (the file object), ``blocks.py``
  (``DataPath``: placement, uploads, replica choice and failover,
  bad-replica reports, the lease renewer).
* ``TIME_NOW``: a time for ``setattr`` meaning "the service's clock".
* ``paths.py``: how path arguments become wire paths (pure);
  ``plans.py``: every operation written once as a generator of metadata
  operations, driven by the three faces; ``testing.py``: an in-process
  metadata backend for unit tests.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
from cistern.metadata.model import TIME_NOW

from .api import Client, DirEntry, Futures, connect
from .plans import ST_DEV, stat_result

__all__ = ["Client", "DirEntry", "Futures", "connect", "stat_result", "ST_DEV", "TIME_NOW", "AsyncClient"]


def __getattr__(name):
    # aio is imported on first use so `import cistern.client` stays light.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(name)
