from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("seq", "code", "args")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: int
    args: bytes
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[int] = ..., args: _Optional[bytes] = ...) -> None: ...

class RequestBatch(_message.Message):
    __slots__ = ("client_id", "acked_below", "stale_ok", "requests")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_BELOW_FIELD_NUMBER: _ClassVar[int]
    STALE_OK_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    client_id: bytes
    acked_below: int
    stale_ok: bool
    requests: _containers.RepeatedCompositeFieldContainer[Request]
    def __init__(self, client_id: _Optional[bytes] = ..., acked_below: _Optional[int] = ..., stale_ok: _Optional[bool] = ..., requests: _Optional[_Iterable[_Union[Request, _Mapping]]] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("seq", "errno", "message", "value")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    errno: int
    message: str
    value: bytes
    def __init__(self, seq: _Optional[int] = ..., errno: _Optional[int] = ..., message: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class ReplyBatch(_message.Message):
    __slots__ = ("replies", "not_leader", "leader")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    NOT_LEADER_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[Reply]
    not_leader: bool
    leader: str
    def __init__(self, replies: _Optional[_Iterable[_Union[Reply, _Mapping]]] = ..., not_leader: _Optional[bool] = ..., leader: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "raft", "rpc")
    ID_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    id: str
    raft: str
    rpc: str
    def __init__(self, id: _Optional[str] = ..., raft: _Optional[str] = ..., rpc: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("id", "role", "leader_id", "leader_rpc", "term", "commit_index", "applied_index", "last_log_index", "digest", "members", "json")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_RPC_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    role: str
    leader_id: str
    leader_rpc: str
    term: int
    commit_index: int
    applied_index: int
    last_log_index: int
    digest: str
    members: _containers.RepeatedCompositeFieldContainer[Member]
    json: str
    def __init__(self, id: _Optional[str] = ..., role: _Optional[str] = ..., leader_id: _Optional[str] = ..., leader_rpc: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., last_log_index: _Optional[int] = ..., digest: _Optional[str] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., json: _Optional[str] = ...) -> None: ...
