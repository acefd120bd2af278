from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "rpc_address", "capacity_bytes", "used_bytes", "block_count", "failed_block_ids", "reports_pending")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    rpc_address: str
    capacity_bytes: int
    used_bytes: int
    block_count: int
    failed_block_ids: _containers.RepeatedScalarFieldContainer[bytes]
    reports_pending: int
    def __init__(self, node_id: _Optional[str] = ..., rpc_address: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., block_count: _Optional[int] = ..., failed_block_ids: _Optional[_Iterable[bytes]] = ..., reports_pending: _Optional[int] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("kind", "block_ids", "source_node", "source_address")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Instruction.Kind]
        REPLICATE: _ClassVar[Instruction.Kind]
        DELETE: _ClassVar[Instruction.Kind]
    UNKNOWN: Instruction.Kind
    REPLICATE: Instruction.Kind
    DELETE: Instruction.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    kind: Instruction.Kind
    block_ids: _containers.RepeatedScalarFieldContainer[bytes]
    source_node: str
    source_address: str
    def __init__(self, kind: _Optional[_Union[Instruction.Kind, str]] = ..., block_ids: _Optional[_Iterable[bytes]] = ..., source_node: _Optional[str] = ..., source_address: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("not_leader", "leader", "instructions", "send_full_report", "heartbeat_interval_s")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    SEND_FULL_REPORT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    instructions: _containers.RepeatedCompositeFieldContainer[Instruction]
    send_full_report: bool
    heartbeat_interval_s: float
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., instructions: _Optional[_Iterable[_Union[Instruction, _Mapping]]] = ..., send_full_report: _Optional[bool] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class ReportedBlock(_message.Message):
    __slots__ = ("block_id", "length")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    length: int
    def __init__(self, block_id: _Optional[bytes] = ..., length: _Optional[int] = ...) -> None: ...

class BlockReportRequest(_message.Message):
    __slots__ = ("node_id", "full", "more", "added", "removed")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    full: bool
    more: bool
    added: _containers.RepeatedCompositeFieldContainer[ReportedBlock]
    removed: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, node_id: _Optional[str] = ..., full: _Optional[bool] = ..., more: _Optional[bool] = ..., added: _Optional[_Iterable[_Union[ReportedBlock, _Mapping]]] = ..., removed: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BlockReportReply(_message.Message):
    __slots__ = ("not_leader", "leader", "send_full_report")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SEND_FULL_REPORT_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    send_full_report: bool
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., send_full_report: _Optional[bool] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("replication", "writer_node", "count", "exclude", "block_size_bytes")
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    WRITER_NODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    replication: int
    writer_node: str
    count: int
    exclude: _containers.RepeatedScalarFieldContainer[str]
    block_size_bytes: int
    def __init__(self, replication: _Optional[int] = ..., writer_node: _Optional[str] = ..., count: _Optional[int] = ..., exclude: _Optional[_Iterable[str]] = ..., block_size_bytes: _Optional[int] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class AllocatedBlock(_message.Message):
    __slots__ = ("block_id", "targets")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    targets: _containers.RepeatedCompositeFieldContainer[Target]
    def __init__(self, block_id: _Optional[bytes] = ..., targets: _Optional[_Iterable[_Union[Target, _Mapping]]] = ...) -> None: ...

class AllocateReply(_message.Message):
    __slots__ = ("not_leader", "leader", "blocks")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    blocks: _containers.RepeatedCompositeFieldContainer[AllocatedBlock]
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[AllocatedBlock, _Mapping]]] = ...) -> None: ...

class BadReplica(_message.Message):
    __slots__ = ("block_id", "node_id", "reporter", "reason")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    node_id: str
    reporter: str
    reason: str
    def __init__(self, block_id: _Optional[bytes] = ..., node_id: _Optional[str] = ..., reporter: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class BadReplicaReply(_message.Message):
    __slots__ = ("not_leader", "leader")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ...) -> None: ...

class FsckRequest(_message.Message):
    __slots__ = ("path", "files_max")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILES_MAX_FIELD_NUMBER: _ClassVar[int]
    path: str
    files_max: int
    def __init__(self, path: _Optional[str] = ..., files_max: _Optional[int] = ...) -> None: ...

class BlockProblem(_message.Message):
    __slots__ = ("index", "block_id", "states", "good_nodes", "corrupt_nodes", "recorded_nodes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    GOOD_NODES_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_NODES_FIELD_NUMBER: _ClassVar[int]
    RECORDED_NODES_FIELD_NUMBER: _ClassVar[int]
    index: int
    block_id: bytes
    states: _containers.RepeatedScalarFieldContainer[str]
    good_nodes: _containers.RepeatedScalarFieldContainer[str]
    corrupt_nodes: _containers.RepeatedScalarFieldContainer[str]
    recorded_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., block_id: _Optional[bytes] = ..., states: _Optional[_Iterable[str]] = ..., good_nodes: _Optional[_Iterable[str]] = ..., corrupt_nodes: _Optional[_Iterable[str]] = ..., recorded_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class FileReport(_message.Message):
    __slots__ = ("ino", "path", "replication", "blocks", "at_risk", "problems")
    INO_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REPLICATION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ino: int
    path: str
    replication: int
    blocks: int
    at_risk: bool
    problems: _containers.RepeatedCompositeFieldContainer[BlockProblem]
    def __init__(self, ino: _Optional[int] = ..., path: _Optional[str] = ..., replication: _Optional[int] = ..., blocks: _Optional[int] = ..., at_risk: _Optional[bool] = ..., problems: _Optional[_Iterable[_Union[BlockProblem, _Mapping]]] = ...) -> None: ...

class FsckReply(_message.Message):
    __slots__ = ("not_leader", "leader", "files", "at_risk", "complete", "summary_json")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    AT_RISK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    files: _containers.RepeatedCompositeFieldContainer[FileReport]
    at_risk: bool
    complete: bool
    summary_json: str
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileReport, _Mapping]]] = ..., at_risk: _Optional[bool] = ..., complete: _Optional[bool] = ..., summary_json: _Optional[str] = ...) -> None: ...

class NodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeEntry(_message.Message):
    __slots__ = ("node_id", "address", "capacity_bytes", "used_bytes", "block_count", "last_heartbeat_s_ago", "full_report")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_S_AGO_FIELD_NUMBER: _ClassVar[int]
    FULL_REPORT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    capacity_bytes: int
    used_bytes: int
    block_count: int
    last_heartbeat_s_ago: float
    full_report: bool
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., block_count: _Optional[int] = ..., last_heartbeat_s_ago: _Optional[float] = ..., full_report: _Optional[bool] = ...) -> None: ...

class NodesReply(_message.Message):
    __slots__ = ("not_leader", "leader", "nodes", "under_replicated_blocks", "missing_blocks", "pending_replications", "settled")
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MISSING_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PENDING_REPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    not_leader: bool
    leader: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeEntry]
    under_replicated_blocks: int
    missing_blocks: int
    pending_replications: int
    settled: bool
    def __init__(self, not_leader: _Optional[bool] = ..., leader: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeEntry, _Mapping]]] = ..., under_replicated_blocks: _Optional[int] = ..., missing_blocks: _Optional[int] = ..., pending_replications: _Optional[int] = ..., settled: _Optional[bool] = ...) -> None: ...
