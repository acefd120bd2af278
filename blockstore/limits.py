"""Every limit of the storage node, with its unit in its name, in one place.

The relations between limits are asserted at import, so a bad edit fails fast.
"""

KiB = 1024
MiB = 1024 * KiB

block_id_length_bytes = 16                 # a random 128-bit id chosen by the writer
block_size_default_bytes = 4 * MiB         # the cluster's block size unless configured
block_size_max_bytes = 64 * MiB            # no node accepts a block longer than this
block_size_min_bytes = 64 * KiB            # a configured block size is at least one sub-chunk
chunk_size_bytes = 64 * KiB                # one xxh3-64 checksum covers this many bytes
checksum_length_bytes = 16                 # a whole block's xxh3-128 digest
chunk_checksums_max = block_size_max_bytes // chunk_size_bytes

# One message's data on the wire. 1 MiB messages move about twice the bytes
# per second of 64 KiB ones through Python gRPC (per-message CPU dominates).
message_data_max_bytes = 1 * MiB
# The transport's limit is larger than the data limit on purpose: a message
# with too much data then reaches the service, which refuses it with
# INVALID_ARGUMENT and a message, instead of gRPC's bare RESOURCE_EXHAUSTED.
wire_message_bytes_max = 4 * MiB

# Reads also stream over a plain TCP port beside gRPC (transfer.py): a
# third of gRPC's CPU per byte. Each connection is one thread on the node
# holding at most one message of data.
transfer_connections_max = 64              # open transfer connections a node serves at once
transfer_idle_timeout_s = 60.0             # a node closes a connection silent (or stalled) this long
transfer_client_idle_s = 20.0              # a client reuses an idle connection at most this long after use
transfer_idle_connections_max = 8          # idle connections a client keeps per node
transfer_connect_timeout_s = 5.0
transfer_port_recheck_s = 30.0             # a client asks a node without a known transfer port again after this
transfer_deadline_slack_s = 0.25           # a transfer read re-arms its receive timeout to its deadline this often, not per frame
transfer_drain_s = 5.0                     # a node refusing a write early discards the rest of its stream this long at most
transfer_write_reply_max_bytes = 64 * KiB  # a serialized WriteReply on the transfer port

pipeline_depth_max = 8                     # replicas one pipelined write may name
pipeline_queue_messages_max = 8            # messages buffered for a slow downstream node
write_idle_timeout_s = 30.0                # a write stream silent this long is abandoned
write_call_timeout_s = 300.0               # one whole pipelined write, from the client
downstream_ack_timeout_s = 60.0            # waiting for the next node's ack after our fsync
read_call_timeout_s = 120.0
copy_call_timeout_s = 120.0
unary_call_timeout_s = 10.0
address_length_max_bytes = 255

scrub_interval_s = 24 * 3600.0             # a full pass over every block this often
scrub_rate_bytes_per_s = 32 * MiB          # the scrubber's disk bandwidth at most
orphan_grace_s = 3600.0                    # an uncommitted block lives this long (metadata-side GC)

# Durable stores write block files with O_DIRECT from page-aligned staging
# buffers: the page-cache copy of a buffered write() cost a node a third of
# its CPU per byte (three replicas on one host pay it three times). The
# unaligned tail of a block is written through the page cache; fsync stays.
direct_io_align_bytes = 4096               # O_DIRECT offsets, lengths and buffers are multiples of this
direct_io_stage_bytes = 1 * MiB            # one staging buffer per block being written
direct_io_stages_kept_max = 8              # idle staging buffers a store keeps for reuse
# A block streamed to a reader comes from the disk with O_DIRECT (no page-cache
# fill or copy) unless it is among this many blocks read lately: a block read
# again goes through the page cache and stays there (admitted on its second
# read, so a single pass over cold data does not evict hot data).
direct_read_recent_blocks = 16384          # ids remembered (64 GiB of 4 MiB blocks), about 2 MiB of memory
# Such a read goes through a staging buffer of one transparent huge page
# (private, MADV_HUGEPAGE), filled by one O_DIRECT read and sent as messages:
# pinning a huge page for the disk's DMA costs the kernel about 0.04 ms of
# CPU per MiB read against 0.11 for 4 KiB pages (get_user_pages per page).
direct_read_stage_bytes = 2 * MiB          # one huge page on x86-64

# glibc malloc in processes that move block data (see tuning.py).
malloc_mmap_threshold_bytes = 16 * MiB
malloc_trim_threshold_bytes = 32 * MiB
malloc_arenas_max = 4

index_map_size_bytes = 16 << 30            # sparse LMDB map: ~600 bytes per 4 MiB block
index_readers_max = 256
fanout_prefix_hex_chars = 2                # blocks/ab/abcdef...: 256 directories

assert block_id_length_bytes == 16
assert chunk_size_bytes <= block_size_min_bytes <= block_size_default_bytes <= block_size_max_bytes
assert block_size_default_bytes % chunk_size_bytes == 0
assert message_data_max_bytes % chunk_size_bytes == 0          # reads ship whole sub-chunks
assert message_data_max_bytes + chunk_checksums_max * 8 + 64 * KiB < wire_message_bytes_max
assert 1 <= pipeline_depth_max <= 16
assert scrub_rate_bytes_per_s >= block_size_max_bytes / 60     # a max block scrubs within a minute
assert downstream_ack_timeout_s < write_call_timeout_s
assert transfer_client_idle_s < transfer_idle_timeout_s            # a client drops a connection before the node does
assert malloc_mmap_threshold_bytes <= malloc_trim_threshold_bytes
assert direct_io_stage_bytes % direct_io_align_bytes == 0 and direct_io_align_bytes % 512 == 0
assert direct_read_stage_bytes % direct_io_align_bytes == 0 and direct_read_stage_bytes >= message_data_max_bytes
delete_ids_max = 4096                      # block ids in one Delete call
