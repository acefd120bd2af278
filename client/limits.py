"""Limits of the client role (the data path's memory), with units in their
names, in one place. The metadata limits the client checks requests
against live in ``cistern.metadata.limits``."""

MiB = 1 << 20

# Bytes of whole blocks a process holds for its sequential readers, over all
# its open files (JuiceFS's --buffer-size is the model): a block a read needs
# now is always fetched, blocks ahead of a reader only while they fit. One
# file reading ahead holds up to ``files.read_ahead_blocks + 2`` blocks (40
# MiB at 4 MiB blocks), so this lets about three files read ahead in full.
read_ahead_bytes_max = 128 * MiB

assert read_ahead_bytes_max >= 16 * MiB
