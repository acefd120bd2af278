"""Every limit of the metadata service, with its unit in its name, in one place.

The relations between limits are asserted at import, so a bad edit fails fast.
"""

name_length_max_bytes = 255          # POSIX NAME_MAX
path_length_max_bytes = 4096         # POSIX PATH_MAX
symlink_follow_max = 40              # Linux's MAXSYMLINKS: ELOOP beyond it
symlink_target_length_max_bytes = 4096
xattr_name_length_max_bytes = 255    # Linux XATTR_NAME_MAX
xattr_value_size_max_bytes = 65536   # Linux XATTR_SIZE_MAX
xattr_count_max = 1024               # per inode; keeps one inode's xattrs small
readdir_page_entries_max = 4096      # one READDIR reply at most
txn_ops_max = 128                    # operations in one TXN
txn_conditions_max = 128
batch_ops_max = 4096                 # operations in one Raft entry (group commit)
batch_bytes_max = 4 * 1024 * 1024    # one Raft entry at most
op_args_bytes_max = 256 * 1024       # one encoded operation at most
layout_blocks_max = 1 << 20          # blocks in one file's layout
file_size_max_bytes = 1 << 60
lease_ttl_s = 30                     # a write lease lapses when not renewed for this long
lease_renew_interval_s = 5
session_ttl_s = 3600                 # a client's dedupe table is dropped after an hour idle

assert lease_renew_interval_s * 3 < lease_ttl_s
assert name_length_max_bytes < path_length_max_bytes
assert batch_ops_max * 64 <= batch_bytes_max

# Added with the namespace state machine (metadata/state.py).
lease_holder_length_max_bytes = 255  # a holder id is a client's name for itself
inodes_max = 1 << 40                 # files + dirs + symlinks; ENOSPC beyond it
supplementary_gids_max = 65536       # Linux NGROUPS_MAX: a cred's group list at most
block_id_length_bytes = 16           # layout block ids are random 128-bit values
block_checksum_length_max_bytes = 64 # one block's checksum (xxh3-128 is 16)
block_replicas_max = 16              # node ids listed for one block in a layout

assert 0 < block_replicas_max <= 255

# Added with the storage-node bookkeeping (state ops FSCK_SCAN .. CLEAR_FREED).
fsck_scan_files_max = 1024           # files in one FSCK_SCAN page
fsck_scan_blocks_max = 65536         # a page ends after the file that reaches this many blocks
block_owners_max = 4096              # block ids in one BLOCK_OWNERS
freed_scan_max = 4096                # freed blocks in one FREED_SCAN page
replica_updates_max = 4096           # block entries in one UPDATE_REPLICAS
node_lost_scan_files_max = 4096      # files one NODE_LOST step scans
clear_freed_max = 4096               # block ids in one CLEAR_FREED

assert replica_updates_max * 64 <= op_args_bytes_max
assert clear_freed_max * 24 <= op_args_bytes_max

# Storage nodes, as the leader sees them (metadata/nodes.py, placement.py,
# replication.py, nodes_service.py). NodesConf copies these and may override.
replication_default = 3              # a file's replication factor unless its xattr says otherwise
heartbeat_interval_s = 3.0           # a node heartbeats this often (told in every reply)
node_dead_after_s = 30.0             # silent this long: NodeLost, its replicas leave the layouts
orphan_grace_s = 3600.0              # a reported block in no layout is deleted once this old
replication_timeout_s = 120.0        # a Replicate not confirmed by then is given up and re-planned
monitor_interval_s = 1.0             # the leader's healing pass
replications_per_node_max = 4        # Replicate instructions in flight per node (as source or target)
instructions_per_heartbeat_max = 256 # handed out in one heartbeat reply
delete_ids_per_instruction_max = 1024
allocate_blocks_max = 256            # blocks in one Allocate
registry_nodes_max = 10_000          # nodes the leader tracks; more heartbeats are refused
orphan_checks_per_pass_max = 4096    # orphan candidates looked up per healing pass
corrupt_reports_max = 100_000        # (block, node) corrupt marks held at most

assert heartbeat_interval_s * 3 < node_dead_after_s
assert 1 <= replication_default <= block_replicas_max
assert monitor_interval_s < node_dead_after_s
assert allocate_blocks_max <= block_owners_max

# Directory create delegations (state ops DELEG_*; client/delegation.py).
delegation_term_s = 0.3              # a delegation lapses when its holder has not renewed it for this long
delegation_renew_interval_s = 0.075  # its holder renews this often while it creates, and so hears of a recall
delegation_idle_release_s = 0.3      # a holder releases a delegation it has not created under for this long
delegation_inodes_max = 4096         # inode numbers one grant reserves at most
delegation_listing_entries_max = 16384   # a larger directory is not delegated (its listing rides the grant)
delegation_listing_bytes_max = 1 << 20   # nor one whose names take more than this
delegation_creates_max = 1024        # creates one DELEG_CREATE commits at most

assert delegation_renew_interval_s * 3 < delegation_term_s
assert delegation_idle_release_s <= delegation_term_s
assert delegation_creates_max <= batch_ops_max
assert delegation_listing_bytes_max < batch_bytes_max   # a grant's reply fits one reply message
