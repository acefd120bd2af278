from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteHeader(_message.Message):
    __slots__ = ("block_id", "length", "checksum", "chunk_size", "chunk_checksums", "targets")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    length: int
    checksum: bytes
    chunk_size: int
    chunk_checksums: _containers.RepeatedScalarFieldContainer[int]
    targets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, block_id: _Optional[bytes] = ..., length: _Optional[int] = ..., checksum: _Optional[bytes] = ..., chunk_size: _Optional[int] = ..., chunk_checksums: _Optional[_Iterable[int]] = ..., targets: _Optional[_Iterable[str]] = ...) -> None: ...

class WriteChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: WriteHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[WriteHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReplicaResult(_message.Message):
    __slots__ = ("address", "node_id", "errno", "message")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    address: str
    node_id: str
    errno: int
    message: str
    def __init__(self, address: _Optional[str] = ..., node_id: _Optional[str] = ..., errno: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class WriteReply(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaResult]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaResult, _Mapping]]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("block_id", "offset", "length")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    offset: int
    length: int
    def __init__(self, block_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ReadChunk(_message.Message):
    __slots__ = ("offset", "data", "chunk_checksums", "block_length", "block_checksum")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    chunk_checksums: _containers.RepeatedScalarFieldContainer[int]
    block_length: int
    block_checksum: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., chunk_checksums: _Optional[_Iterable[int]] = ..., block_length: _Optional[int] = ..., block_checksum: _Optional[bytes] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("block_ids",)
    BLOCK_IDS_FIELD_NUMBER: _ClassVar[int]
    block_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, block_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ("block_id",)
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    def __init__(self, block_id: _Optional[bytes] = ...) -> None: ...

class InfoReply(_message.Message):
    __slots__ = ("block_id", "length", "checksum", "chunk_checksums", "state", "created_s")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    length: int
    checksum: bytes
    chunk_checksums: _containers.RepeatedScalarFieldContainer[int]
    state: str
    created_s: float
    def __init__(self, block_id: _Optional[bytes] = ..., length: _Optional[int] = ..., checksum: _Optional[bytes] = ..., chunk_checksums: _Optional[_Iterable[int]] = ..., state: _Optional[str] = ..., created_s: _Optional[float] = ...) -> None: ...

class CopyRequest(_message.Message):
    __slots__ = ("block_id", "source")
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    block_id: bytes
    source: str
    def __init__(self, block_id: _Optional[bytes] = ..., source: _Optional[str] = ...) -> None: ...

class CopyReply(_message.Message):
    __slots__ = ("length", "checksum", "already_present")
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    length: int
    checksum: bytes
    already_present: bool
    def __init__(self, length: _Optional[int] = ..., checksum: _Optional[bytes] = ..., already_present: _Optional[bool] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatReply(_message.Message):
    __slots__ = ("node_id", "capacity_bytes", "free_bytes", "used_bytes", "block_count", "block_size_bytes", "checksum_failures", "json")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FAILURES_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    capacity_bytes: int
    free_bytes: int
    used_bytes: int
    block_count: int
    block_size_bytes: int
    checksum_failures: int
    json: str
    def __init__(self, node_id: _Optional[str] = ..., capacity_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., block_count: _Optional[int] = ..., block_size_bytes: _Optional[int] = ..., checksum_failures: _Optional[int] = ..., json: _Optional[str] = ...) -> None: ...
