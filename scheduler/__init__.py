"""The offer scheduler: a Mesos-style master hosted on the metadata leader's
Raft log, agents beside the storage nodes, and the framework SDK.

May import: cistern.core, cistern.metadata, cistern.blockstore, cistern.client.
"""
