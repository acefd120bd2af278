"""The FUSE mount: a thin adapter from fusepy callbacks to the client library.

``operations.py`` translates each fusepy callback into ``cistern.client``
calls (acting as the calling user), ``mount.py`` parses mount options, runs
the FUSE loop, serves metrics and unmounts, ``testing.py`` gives tests real
mounts of real clusters.

May import: cistern.client, cistern.core, and fusepy (as ``import fuse as
fusepy``, only in operations.py and mount.py). This folder is
``cistern.fuse``; it never shadows fusepy's top-level ``fuse`` module
because the repository root is never put on sys.path.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
