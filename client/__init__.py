"""The filesystem client: an ``os``-like API (and an asynchronous form) over
the metadata and block clients. The one way in for the CLI, the mount, the
benchmark and the frameworks.

May import: cistern.core, cistern.metadata, cistern.blockstore.
"""
