from moderation.v1 import moderation_pb2 as _moderation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaseStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_STATUS_UNSPECIFIED: _ClassVar[CaseStatus]
    CASE_STATUS_OPEN: _ClassVar[CaseStatus]
    CASE_STATUS_DECIDED: _ClassVar[CaseStatus]
    CASE_STATUS_EXPIRED: _ClassVar[CaseStatus]
CASE_STATUS_UNSPECIFIED: CaseStatus
CASE_STATUS_OPEN: CaseStatus
CASE_STATUS_DECIDED: CaseStatus
CASE_STATUS_EXPIRED: CaseStatus

class CaseCategory(_message.Message):
    __slots__ = ("category_id", "score", "review_threshold", "block_threshold", "band", "action", "clause_id", "forced_by", "clause_text")
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCED_BY_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_TEXT_FIELD_NUMBER: _ClassVar[int]
    category_id: str
    score: float
    review_threshold: float
    block_threshold: float
    band: _moderation_pb2.Band
    action: _moderation_pb2.Action
    clause_id: str
    forced_by: str
    clause_text: str
    def __init__(self, category_id: _Optional[str] = ..., score: _Optional[float] = ..., review_threshold: _Optional[float] = ..., block_threshold: _Optional[float] = ..., band: _Optional[_Union[_moderation_pb2.Band, str]] = ..., action: _Optional[_Union[_moderation_pb2.Action, str]] = ..., clause_id: _Optional[str] = ..., forced_by: _Optional[str] = ..., clause_text: _Optional[str] = ...) -> None: ...

class CaseBankMatch(_message.Message):
    __slots__ = ("bank", "content_id", "signal_type", "distance")
    BANK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    bank: str
    content_id: str
    signal_type: _moderation_pb2.BankSignalType
    distance: float
    def __init__(self, bank: _Optional[str] = ..., content_id: _Optional[str] = ..., signal_type: _Optional[_Union[_moderation_pb2.BankSignalType, str]] = ..., distance: _Optional[float] = ...) -> None: ...

class CaseDecision(_message.Message):
    __slots__ = ("violates", "clause_id", "note", "decided_by", "decided_at")
    VIOLATES_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    violates: bool
    clause_id: str
    note: str
    decided_by: str
    decided_at: float
    def __init__(self, violates: _Optional[bool] = ..., clause_id: _Optional[str] = ..., note: _Optional[str] = ..., decided_by: _Optional[str] = ..., decided_at: _Optional[float] = ...) -> None: ...

class Case(_message.Message):
    __slots__ = ("case_id", "status", "opened_at", "caller", "request_id", "policy_id", "policy_version", "model_id", "reason", "category_id", "categories", "bank_matches", "deciding_frame", "rationale", "lease_holder", "lease_expires_at", "decision", "reopened", "questions")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    BANK_MATCHES_FIELD_NUMBER: _ClassVar[int]
    DECIDING_FRAME_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    LEASE_HOLDER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REOPENED_FIELD_NUMBER: _ClassVar[int]
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    status: CaseStatus
    opened_at: float
    caller: str
    request_id: str
    policy_id: str
    policy_version: str
    model_id: str
    reason: str
    category_id: str
    categories: _containers.RepeatedCompositeFieldContainer[CaseCategory]
    bank_matches: _containers.RepeatedCompositeFieldContainer[CaseBankMatch]
    deciding_frame: int
    rationale: str
    lease_holder: str
    lease_expires_at: float
    decision: CaseDecision
    reopened: int
    questions: _containers.RepeatedCompositeFieldContainer[CaseQuestion]
    def __init__(self, case_id: _Optional[str] = ..., status: _Optional[_Union[CaseStatus, str]] = ..., opened_at: _Optional[float] = ..., caller: _Optional[str] = ..., request_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., model_id: _Optional[str] = ..., reason: _Optional[str] = ..., category_id: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[CaseCategory, _Mapping]]] = ..., bank_matches: _Optional[_Iterable[_Union[CaseBankMatch, _Mapping]]] = ..., deciding_frame: _Optional[int] = ..., rationale: _Optional[str] = ..., lease_holder: _Optional[str] = ..., lease_expires_at: _Optional[float] = ..., decision: _Optional[_Union[CaseDecision, _Mapping]] = ..., reopened: _Optional[int] = ..., questions: _Optional[_Iterable[_Union[CaseQuestion, _Mapping]]] = ...) -> None: ...

class CaseQuestion(_message.Message):
    __slots__ = ("question", "answer", "advisory", "asked_by", "asked_at", "model")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ADVISORY_FIELD_NUMBER: _ClassVar[int]
    ASKED_BY_FIELD_NUMBER: _ClassVar[int]
    ASKED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    question: str
    answer: str
    advisory: bool
    asked_by: str
    asked_at: float
    model: str
    def __init__(self, question: _Optional[str] = ..., answer: _Optional[str] = ..., advisory: _Optional[bool] = ..., asked_by: _Optional[str] = ..., asked_at: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ("status", "policy_id", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: CaseStatus
    policy_id: str
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[_Union[CaseStatus, str]] = ..., policy_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("cases", "next_page_token", "open_cases")
    CASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPEN_CASES_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[Case]
    next_page_token: str
    open_cases: int
    def __init__(self, cases: _Optional[_Iterable[_Union[Case, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., open_cases: _Optional[int] = ...) -> None: ...

class LeaseNextRequest(_message.Message):
    __slots__ = ("policy_id",)
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    def __init__(self, policy_id: _Optional[str] = ...) -> None: ...

class LeaseNextResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: Case
    def __init__(self, case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...

class LeaseCaseRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class LeaseCaseResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: Case
    def __init__(self, case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("case_id", "include_thumbnail")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    include_thumbnail: bool
    def __init__(self, case_id: _Optional[str] = ..., include_thumbnail: _Optional[bool] = ...) -> None: ...

class GetCaseResponse(_message.Message):
    __slots__ = ("case", "thumbnail_jpeg", "thumbnails_kept")
    CASE_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_JPEG_FIELD_NUMBER: _ClassVar[int]
    THUMBNAILS_KEPT_FIELD_NUMBER: _ClassVar[int]
    case: Case
    thumbnail_jpeg: bytes
    thumbnails_kept: bool
    def __init__(self, case: _Optional[_Union[Case, _Mapping]] = ..., thumbnail_jpeg: _Optional[bytes] = ..., thumbnails_kept: _Optional[bool] = ...) -> None: ...

class DecideCaseRequest(_message.Message):
    __slots__ = ("case_id", "violates", "clause_id", "note")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    VIOLATES_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    violates: bool
    clause_id: str
    note: str
    def __init__(self, case_id: _Optional[str] = ..., violates: _Optional[bool] = ..., clause_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DecideCaseResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: Case
    def __init__(self, case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...

class ReopenCaseRequest(_message.Message):
    __slots__ = ("case_id", "note")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    note: str
    def __init__(self, case_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ReopenCaseResponse(_message.Message):
    __slots__ = ("case",)
    CASE_FIELD_NUMBER: _ClassVar[int]
    case: Case
    def __init__(self, case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...

class GetCaseAuditRequest(_message.Message):
    __slots__ = ("case_id",)
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    def __init__(self, case_id: _Optional[str] = ...) -> None: ...

class CaseAuditEntry(_message.Message):
    __slots__ = ("at", "who", "action", "policy_id", "policy_version", "detail")
    AT_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    at: float
    who: str
    action: str
    policy_id: str
    policy_version: str
    detail: str
    def __init__(self, at: _Optional[float] = ..., who: _Optional[str] = ..., action: _Optional[str] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class GetCaseAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CaseAuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[CaseAuditEntry, _Mapping]]] = ...) -> None: ...

class AskCaseRequest(_message.Message):
    __slots__ = ("case_id", "question")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    question: str
    def __init__(self, case_id: _Optional[str] = ..., question: _Optional[str] = ...) -> None: ...

class AskCaseResponse(_message.Message):
    __slots__ = ("question", "case")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    CASE_FIELD_NUMBER: _ClassVar[int]
    question: CaseQuestion
    case: Case
    def __init__(self, question: _Optional[_Union[CaseQuestion, _Mapping]] = ..., case: _Optional[_Union[Case, _Mapping]] = ...) -> None: ...
