from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNKNOWN: _ClassVar[TaskState]
    TASK_STAGING: _ClassVar[TaskState]
    TASK_STARTING: _ClassVar[TaskState]
    TASK_RUNNING: _ClassVar[TaskState]
    TASK_FINISHED: _ClassVar[TaskState]
    TASK_FAILED: _ClassVar[TaskState]
    TASK_KILLED: _ClassVar[TaskState]
    TASK_LOST: _ClassVar[TaskState]
    TASK_ERROR: _ClassVar[TaskState]
TASK_UNKNOWN: TaskState
TASK_STAGING: TaskState
TASK_STARTING: TaskState
TASK_RUNNING: TaskState
TASK_FINISHED: TaskState
TASK_FAILED: TaskState
TASK_KILLED: TaskState
TASK_LOST: TaskState
TASK_ERROR: TaskState

class Resources(_message.Message):
    __slots__ = ("cpus", "mem_bytes", "disk_bytes")
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpus: float
    mem_bytes: int
    disk_bytes: int
    def __init__(self, cpus: _Optional[float] = ..., mem_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class InputBlock(_message.Message):
    __slots__ = ("block_id", "path", "file_offset", "length")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    path: str
    file_offset: int
    length: int
    def __init__(self, block_id: _Optional[bytes] = ..., path: _Optional[str] = ..., file_offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "name", "argv", "env", "resources", "inputs", "network", "output_dir", "output_bytes_max", "agent_id")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    name: str
    argv: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    resources: Resources
    inputs: _containers.RepeatedCompositeFieldContainer[InputBlock]
    network: bool
    output_dir: str
    output_bytes_max: int
    agent_id: str
    def __init__(self, task_id: _Optional[str] = ..., name: _Optional[str] = ..., argv: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[InputBlock, _Mapping]]] = ..., network: _Optional[bool] = ..., output_dir: _Optional[str] = ..., output_bytes_max: _Optional[int] = ..., agent_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "framework_id", "agent_id", "state", "reason", "message", "uuid", "timestamp", "exit_code", "stdout_tail", "stderr_tail", "bytes_local", "bytes_remote", "started_at", "finished_at", "node_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TAIL_FIELD_NUMBER: _ClassVar[int]
    STDERR_TAIL_FIELD_NUMBER: _ClassVar[int]
    BYTES_LOCAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_REMOTE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    framework_id: str
    agent_id: str
    state: TaskState
    reason: str
    message: str
    uuid: bytes
    timestamp: float
    exit_code: int
    stdout_tail: bytes
    stderr_tail: bytes
    bytes_local: int
    bytes_remote: int
    started_at: float
    finished_at: float
    node_id: str
    def __init__(self, task_id: _Optional[str] = ..., framework_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., uuid: _Optional[bytes] = ..., timestamp: _Optional[float] = ..., exit_code: _Optional[int] = ..., stdout_tail: _Optional[bytes] = ..., stderr_tail: _Optional[bytes] = ..., bytes_local: _Optional[int] = ..., bytes_remote: _Optional[int] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., node_id: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusUpdate(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: TaskStatus
    def __init__(self, status: _Optional[_Union[TaskStatus, _Mapping]] = ...) -> None: ...

class AgentRegister(_message.Message):
    __slots__ = ("agent_id", "node_id", "address", "total", "tasks")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node_id: str
    address: str
    total: Resources
    tasks: _containers.RepeatedCompositeFieldContainer[TaskStatus]
    def __init__(self, agent_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[TaskStatus, _Mapping]]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "update")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    register: AgentRegister
    heartbeat: Heartbeat
    update: StatusUpdate
    def __init__(self, register: _Optional[_Union[AgentRegister, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., update: _Optional[_Union[StatusUpdate, _Mapping]] = ...) -> None: ...

class AgentRegistered(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval_s")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval_s: float
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class LaunchTask(_message.Message):
    __slots__ = ("framework_id", "task")
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    framework_id: str
    task: TaskSpec
    def __init__(self, framework_id: _Optional[str] = ..., task: _Optional[_Union[TaskSpec, _Mapping]] = ...) -> None: ...

class KillTask(_message.Message):
    __slots__ = ("task_id", "reason", "framework_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    framework_id: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., framework_id: _Optional[str] = ...) -> None: ...

class AckUpdate(_message.Message):
    __slots__ = ("task_id", "uuid")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    uuid: bytes
    def __init__(self, task_id: _Optional[str] = ..., uuid: _Optional[bytes] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("errno", "message", "call", "task_id", "offer_ids")
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    errno: int
    message: str
    call: str
    task_id: str
    offer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, errno: _Optional[int] = ..., message: _Optional[str] = ..., call: _Optional[str] = ..., task_id: _Optional[str] = ..., offer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentCommand(_message.Message):
    __slots__ = ("registered", "launch", "kill", "ack", "error")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    LAUNCH_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    registered: AgentRegistered
    launch: LaunchTask
    kill: KillTask
    ack: AckUpdate
    error: Error
    def __init__(self, registered: _Optional[_Union[AgentRegistered, _Mapping]] = ..., launch: _Optional[_Union[LaunchTask, _Mapping]] = ..., kill: _Optional[_Union[KillTask, _Mapping]] = ..., ack: _Optional[_Union[AckUpdate, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("framework_id", "name", "failover_timeout_s")
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    framework_id: str
    name: str
    failover_timeout_s: float
    def __init__(self, framework_id: _Optional[str] = ..., name: _Optional[str] = ..., failover_timeout_s: _Optional[float] = ...) -> None: ...

class Accept(_message.Message):
    __slots__ = ("offer_ids", "tasks", "refuse_seconds")
    OFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REFUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    offer_ids: _containers.RepeatedScalarFieldContainer[str]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    refuse_seconds: float
    def __init__(self, offer_ids: _Optional[_Iterable[str]] = ..., tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ..., refuse_seconds: _Optional[float] = ...) -> None: ...

class Decline(_message.Message):
    __slots__ = ("offer_ids", "refuse_seconds")
    OFFER_IDS_FIELD_NUMBER: _ClassVar[int]
    REFUSE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    offer_ids: _containers.RepeatedScalarFieldContainer[str]
    refuse_seconds: float
    def __init__(self, offer_ids: _Optional[_Iterable[str]] = ..., refuse_seconds: _Optional[float] = ...) -> None: ...

class Kill(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class Acknowledge(_message.Message):
    __slots__ = ("task_id", "uuid")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    uuid: bytes
    def __init__(self, task_id: _Optional[str] = ..., uuid: _Optional[bytes] = ...) -> None: ...

class Reconcile(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Suppress(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Revive(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Teardown(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FrameworkCall(_message.Message):
    __slots__ = ("subscribe", "accept", "decline", "kill", "acknowledge", "reconcile", "suppress", "revive", "teardown")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    DECLINE_FIELD_NUMBER: _ClassVar[int]
    KILL_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_FIELD_NUMBER: _ClassVar[int]
    REVIVE_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    accept: Accept
    decline: Decline
    kill: Kill
    acknowledge: Acknowledge
    reconcile: Reconcile
    suppress: Suppress
    revive: Revive
    teardown: Teardown
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., accept: _Optional[_Union[Accept, _Mapping]] = ..., decline: _Optional[_Union[Decline, _Mapping]] = ..., kill: _Optional[_Union[Kill, _Mapping]] = ..., acknowledge: _Optional[_Union[Acknowledge, _Mapping]] = ..., reconcile: _Optional[_Union[Reconcile, _Mapping]] = ..., suppress: _Optional[_Union[Suppress, _Mapping]] = ..., revive: _Optional[_Union[Revive, _Mapping]] = ..., teardown: _Optional[_Union[Teardown, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("framework_id", "heartbeat_interval_s")
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    framework_id: str
    heartbeat_interval_s: float
    def __init__(self, framework_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("offer_id", "agent_id", "node_id", "address", "resources")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    agent_id: str
    node_id: str
    address: str
    resources: Resources
    def __init__(self, offer_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class Offers(_message.Message):
    __slots__ = ("offers",)
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    def __init__(self, offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ...) -> None: ...

class Rescind(_message.Message):
    __slots__ = ("offer_id",)
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    def __init__(self, offer_id: _Optional[str] = ...) -> None: ...

class FrameworkEvent(_message.Message):
    __slots__ = ("subscribed", "offers", "rescind", "update", "error", "heartbeat")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    RESCIND_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    offers: Offers
    rescind: Rescind
    update: StatusUpdate
    error: Error
    heartbeat: Heartbeat
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., offers: _Optional[_Union[Offers, _Mapping]] = ..., rescind: _Optional[_Union[Rescind, _Mapping]] = ..., update: _Optional[_Union[StatusUpdate, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "node_id", "address", "state", "total", "used", "tasks", "connected")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node_id: str
    address: str
    state: str
    total: Resources
    used: Resources
    tasks: int
    connected: bool
    def __init__(self, agent_id: _Optional[str] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ..., total: _Optional[_Union[Resources, _Mapping]] = ..., used: _Optional[_Union[Resources, _Mapping]] = ..., tasks: _Optional[int] = ..., connected: _Optional[bool] = ...) -> None: ...

class FrameworkInfo(_message.Message):
    __slots__ = ("framework_id", "name", "connected", "tasks", "failover_timeout_s")
    FRAMEWORK_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FAILOVER_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    framework_id: str
    name: str
    connected: bool
    tasks: int
    failover_timeout_s: float
    def __init__(self, framework_id: _Optional[str] = ..., name: _Optional[str] = ..., connected: _Optional[bool] = ..., tasks: _Optional[int] = ..., failover_timeout_s: _Optional[float] = ...) -> None: ...

class SchedStatus(_message.Message):
    __slots__ = ("tasks_by_state", "agents", "frameworks", "offers_outstanding", "json")
    class TasksByStateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TASKS_BY_STATE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORKS_FIELD_NUMBER: _ClassVar[int]
    OFFERS_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    tasks_by_state: _containers.ScalarMap[str, int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    frameworks: _containers.RepeatedCompositeFieldContainer[FrameworkInfo]
    offers_outstanding: int
    json: str
    def __init__(self, tasks_by_state: _Optional[_Mapping[str, int]] = ..., agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., frameworks: _Optional[_Iterable[_Union[FrameworkInfo, _Mapping]]] = ..., offers_outstanding: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...
