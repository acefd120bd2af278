"""The benchmark harness: metadata, data and scheduler workloads and reports.

May import: cistern.core, cistern.metadata, cistern.blockstore, cistern.client.
"""
