"""The FUSE mount: a thin adapter from fusepy callbacks to the client library.

May import: cistern.client, cistern.core, and fusepy (as ``import fuse as
fusepy``, only in this package). This folder is ``cistern.fuse``; it never
shadows fusepy's top-level ``fuse`` module because the repository root is never
put on sys.path.
"""
