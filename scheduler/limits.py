"""Every limit and default of the scheduler master, with its unit in its
name, in one place. Relations between them are asserted at import.

The master's timings can be overridden per process through
``CISTERN_SCHED_<NAME>`` environment variables (``master.MasterConf.from_env``);
real-process tests shorten them that way.
"""

# -- identifiers and sizes (checked by the replicated state machine) -----------
id_length_max_bytes = 128            # task, framework, agent, offer and node ids
name_length_max_bytes = 255          # a framework's or task's name
address_length_max_bytes = 255
reason_length_max_bytes = 128
status_message_length_max_bytes = 4096
output_tail_max_bytes = 16 * 1024    # stdout/stderr tails carried in one status update
uuid_length_max_bytes = 32           # a status update's uuid (the master and agents use 16)
argv_items_max = 4096
argv_bytes_max = 64 * 1024           # all of argv together
env_items_max = 1024
env_bytes_max = 64 * 1024
inputs_per_task_max = 1024
task_spec_bytes_max = 192 * 1024     # one encoded TaskSpec (must fit one Raft op)
tasks_per_accept_max = 1024
reconcile_tasks_max = 100_000        # task ids in one explicit reconcile call
completed_tasks_max = 10_000         # acknowledged terminal tasks remembered (oldest forgotten first)
status_history_max = 8               # (state, time) pairs kept per task
cpus_max = 1 << 16
mem_bytes_max = 1 << 50
disk_bytes_max = 1 << 56

# -- the wire ---------------------------------------------------------------------
message_bytes_max = 4 * 1024 * 1024  # one stream message either way

# -- timings (master defaults) ------------------------------------------------------
agent_heartbeat_interval_s = 1.0     # told to agents in `registered`
agent_unreachable_after_s = 5.0      # no heartbeat for this long: unreachable, tasks LOST
agent_reregister_grace_s = 10.0      # a new master waits this long for known agents to come back
framework_heartbeat_interval_s = 2.0 # heartbeat events to frameworks
framework_failover_timeout_default_s = 60.0
framework_failover_timeout_max_s = 7 * 24 * 3600.0
allocation_interval_s = 0.1          # offers are made in batches this often (and on demand)
allocation_soon_s = 0.02             # resources freed (a task ended, an accept left some): offer them this soon
offer_timeout_s = 10.0               # an unused offer is rescinded after this
refuse_seconds_default = 5.0         # decline filter when the framework names none (Mesos's default)
refuse_seconds_max = 3600.0
update_resend_interval_s = 2.0       # an unacknowledged status update goes to the framework again
raft_write_timeout_s = 10.0          # one commit through Raft at most
leader_check_interval_s = 0.1        # how often the master looks at replica.is_leader()

# -- resources ----------------------------------------------------------------------
cpus_min_per_task = 0.01             # a task asks at least this much cpu
mem_bytes_min_per_task = 4 << 20     # and this much memory
offer_cpus_min = 0.01                # less free than this on an agent: no offer
offer_mem_bytes_min = 4 << 20

assert agent_heartbeat_interval_s * 3 < agent_unreachable_after_s
assert agent_unreachable_after_s <= agent_reregister_grace_s
assert allocation_soon_s <= allocation_interval_s < offer_timeout_s
assert refuse_seconds_default <= refuse_seconds_max
assert output_tail_max_bytes * 2 + status_message_length_max_bytes < message_bytes_max
assert task_spec_bytes_max * 2 < message_bytes_max
assert argv_bytes_max + env_bytes_max < task_spec_bytes_max
