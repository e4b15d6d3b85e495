from moderation.v1 import moderation_pb2 as _moderation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Bank(_message.Message):
    __slots__ = ("name", "enabled", "pdq_max_distance", "pdq_min_quality", "embedding_min_cosine", "matching_ratio", "created_by", "created_at_unix", "note", "entries")
    class EntriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PDQ_MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PDQ_MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MATCHING_RATIO_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    pdq_max_distance: int
    pdq_min_quality: int
    embedding_min_cosine: float
    matching_ratio: float
    created_by: str
    created_at_unix: float
    note: str
    entries: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., pdq_max_distance: _Optional[int] = ..., pdq_min_quality: _Optional[int] = ..., embedding_min_cosine: _Optional[float] = ..., matching_ratio: _Optional[float] = ..., created_by: _Optional[str] = ..., created_at_unix: _Optional[float] = ..., note: _Optional[str] = ..., entries: _Optional[_Mapping[str, int]] = ...) -> None: ...

class CreateBankRequest(_message.Message):
    __slots__ = ("name", "note", "pdq_max_distance", "pdq_min_quality", "embedding_min_cosine", "matching_ratio", "enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    PDQ_MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PDQ_MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MATCHING_RATIO_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    note: str
    pdq_max_distance: int
    pdq_min_quality: int
    embedding_min_cosine: float
    matching_ratio: float
    enabled: bool
    def __init__(self, name: _Optional[str] = ..., note: _Optional[str] = ..., pdq_max_distance: _Optional[int] = ..., pdq_min_quality: _Optional[int] = ..., embedding_min_cosine: _Optional[float] = ..., matching_ratio: _Optional[float] = ..., enabled: _Optional[bool] = ...) -> None: ...

class CreateBankResponse(_message.Message):
    __slots__ = ("bank",)
    BANK_FIELD_NUMBER: _ClassVar[int]
    bank: Bank
    def __init__(self, bank: _Optional[_Union[Bank, _Mapping]] = ...) -> None: ...

class ListBanksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBanksResponse(_message.Message):
    __slots__ = ("banks", "version")
    BANKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    banks: _containers.RepeatedCompositeFieldContainer[Bank]
    version: int
    def __init__(self, banks: _Optional[_Iterable[_Union[Bank, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class UpdateBankRequest(_message.Message):
    __slots__ = ("name", "enabled", "pdq_max_distance", "pdq_min_quality", "embedding_min_cosine", "matching_ratio", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PDQ_MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PDQ_MIN_QUALITY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MIN_COSINE_FIELD_NUMBER: _ClassVar[int]
    MATCHING_RATIO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    enabled: bool
    pdq_max_distance: int
    pdq_min_quality: int
    embedding_min_cosine: float
    matching_ratio: float
    reason: str
    def __init__(self, name: _Optional[str] = ..., enabled: _Optional[bool] = ..., pdq_max_distance: _Optional[int] = ..., pdq_min_quality: _Optional[int] = ..., embedding_min_cosine: _Optional[float] = ..., matching_ratio: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class UpdateBankResponse(_message.Message):
    __slots__ = ("bank",)
    BANK_FIELD_NUMBER: _ClassVar[int]
    bank: Bank
    def __init__(self, bank: _Optional[_Union[Bank, _Mapping]] = ...) -> None: ...

class BankHash(_message.Message):
    __slots__ = ("signal_type", "value", "quality")
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    signal_type: _moderation_pb2.BankSignalType
    value: str
    quality: int
    def __init__(self, signal_type: _Optional[_Union[_moderation_pb2.BankSignalType, str]] = ..., value: _Optional[str] = ..., quality: _Optional[int] = ...) -> None: ...

class AddContentRequest(_message.Message):
    __slots__ = ("bank", "content_id", "note", "image", "hash")
    BANK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    bank: str
    content_id: str
    note: str
    image: bytes
    hash: BankHash
    def __init__(self, bank: _Optional[str] = ..., content_id: _Optional[str] = ..., note: _Optional[str] = ..., image: _Optional[bytes] = ..., hash: _Optional[_Union[BankHash, _Mapping]] = ...) -> None: ...

class AddContentResponse(_message.Message):
    __slots__ = ("added", "skipped", "hashes", "version")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    added: int
    skipped: int
    hashes: _containers.RepeatedCompositeFieldContainer[BankHash]
    version: int
    def __init__(self, added: _Optional[int] = ..., skipped: _Optional[int] = ..., hashes: _Optional[_Iterable[_Union[BankHash, _Mapping]]] = ..., version: _Optional[int] = ...) -> None: ...

class RemoveContentRequest(_message.Message):
    __slots__ = ("bank", "content_id", "signal_type")
    BANK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    bank: str
    content_id: str
    signal_type: _moderation_pb2.BankSignalType
    def __init__(self, bank: _Optional[str] = ..., content_id: _Optional[str] = ..., signal_type: _Optional[_Union[_moderation_pb2.BankSignalType, str]] = ...) -> None: ...

class RemoveContentResponse(_message.Message):
    __slots__ = ("removed", "version")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    removed: int
    version: int
    def __init__(self, removed: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("image", "hash", "banks")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    BANKS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    hash: BankHash
    banks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[bytes] = ..., hash: _Optional[_Union[BankHash, _Mapping]] = ..., banks: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("matches", "hashes")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[_moderation_pb2.BankMatch]
    hashes: _containers.RepeatedCompositeFieldContainer[BankHash]
    def __init__(self, matches: _Optional[_Iterable[_Union[_moderation_pb2.BankMatch, _Mapping]]] = ..., hashes: _Optional[_Iterable[_Union[BankHash, _Mapping]]] = ...) -> None: ...

class ImportEntriesRequest(_message.Message):
    __slots__ = ("bank", "data", "source")
    BANK_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    bank: str
    data: bytes
    source: str
    def __init__(self, bank: _Optional[str] = ..., data: _Optional[bytes] = ..., source: _Optional[str] = ...) -> None: ...

class ImportEntriesResponse(_message.Message):
    __slots__ = ("lines", "added", "skipped", "version")
    LINES_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    lines: int
    added: int
    skipped: int
    version: int
    def __init__(self, lines: _Optional[int] = ..., added: _Optional[int] = ..., skipped: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ExportEntriesRequest(_message.Message):
    __slots__ = ("bank", "signal_type")
    BANK_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    bank: str
    signal_type: _moderation_pb2.BankSignalType
    def __init__(self, bank: _Optional[str] = ..., signal_type: _Optional[_Union[_moderation_pb2.BankSignalType, str]] = ...) -> None: ...

class ExportEntriesResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class GetAuditRequest(_message.Message):
    __slots__ = ("bank", "limit")
    BANK_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    bank: str
    limit: int
    def __init__(self, bank: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("at_unix", "who", "action", "bank", "content_id", "count", "detail", "version")
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BANK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    at_unix: float
    who: str
    action: str
    bank: str
    content_id: str
    count: int
    detail: str
    version: int
    def __init__(self, at_unix: _Optional[float] = ..., who: _Optional[str] = ..., action: _Optional[str] = ..., bank: _Optional[str] = ..., content_id: _Optional[str] = ..., count: _Optional[int] = ..., detail: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
