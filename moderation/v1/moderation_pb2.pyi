from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_ALLOW: _ClassVar[Action]
    ACTION_REVIEW: _ClassVar[Action]
    ACTION_BLOCK: _ClassVar[Action]

class Band(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BAND_UNSPECIFIED: _ClassVar[Band]
    BAND_BELOW: _ClassVar[Band]
    BAND_BORDERLINE: _ClassVar[Band]
    BAND_ABOVE: _ClassVar[Band]

class EscalationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ESCALATION_STATUS_UNSPECIFIED: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_NOT_NEEDED: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_COMPLETED: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_TIMED_OUT: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_SHED: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_FAILED: _ClassVar[EscalationStatus]
    ESCALATION_STATUS_DISABLED: _ClassVar[EscalationStatus]

class BankSignalType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BANK_SIGNAL_TYPE_UNSPECIFIED: _ClassVar[BankSignalType]
    BANK_SIGNAL_TYPE_PDQ: _ClassVar[BankSignalType]
    BANK_SIGNAL_TYPE_MD5: _ClassVar[BankSignalType]
    BANK_SIGNAL_TYPE_SHA256: _ClassVar[BankSignalType]
    BANK_SIGNAL_TYPE_EMBEDDING: _ClassVar[BankSignalType]
ACTION_UNSPECIFIED: Action
ACTION_ALLOW: Action
ACTION_REVIEW: Action
ACTION_BLOCK: Action
BAND_UNSPECIFIED: Band
BAND_BELOW: Band
BAND_BORDERLINE: Band
BAND_ABOVE: Band
ESCALATION_STATUS_UNSPECIFIED: EscalationStatus
ESCALATION_STATUS_NOT_NEEDED: EscalationStatus
ESCALATION_STATUS_COMPLETED: EscalationStatus
ESCALATION_STATUS_TIMED_OUT: EscalationStatus
ESCALATION_STATUS_SHED: EscalationStatus
ESCALATION_STATUS_FAILED: EscalationStatus
ESCALATION_STATUS_DISABLED: EscalationStatus
BANK_SIGNAL_TYPE_UNSPECIFIED: BankSignalType
BANK_SIGNAL_TYPE_PDQ: BankSignalType
BANK_SIGNAL_TYPE_MD5: BankSignalType
BANK_SIGNAL_TYPE_SHA256: BankSignalType
BANK_SIGNAL_TYPE_EMBEDDING: BankSignalType

class AskRequest(_message.Message):
    __slots__ = ("case_id", "image", "policy_id", "policy_version", "category_id", "question")
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    case_id: str
    image: bytes
    policy_id: str
    policy_version: str
    category_id: str
    question: str
    def __init__(self, case_id: _Optional[str] = ..., image: _Optional[bytes] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., category_id: _Optional[str] = ..., question: _Optional[str] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("answer", "model", "generated_tokens", "latency_ms")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    answer: str
    model: str
    generated_tokens: int
    latency_ms: float
    def __init__(self, answer: _Optional[str] = ..., model: _Optional[str] = ..., generated_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("request_id", "image", "policy_id", "policy_version", "category_ids", "frame_index")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: bytes
    policy_id: str
    policy_version: str
    category_ids: _containers.RepeatedScalarFieldContainer[str]
    frame_index: int
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[bytes] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., category_ids: _Optional[_Iterable[str]] = ..., frame_index: _Optional[int] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("violates", "category_id", "clause_id", "rationale", "confidence", "model", "generated_tokens", "latency_ms", "frame_index")
    VIOLATES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    violates: bool
    category_id: str
    clause_id: str
    rationale: str
    confidence: float
    model: str
    generated_tokens: int
    latency_ms: float
    frame_index: int
    def __init__(self, violates: _Optional[bool] = ..., category_id: _Optional[str] = ..., clause_id: _Optional[str] = ..., rationale: _Optional[str] = ..., confidence: _Optional[float] = ..., model: _Optional[str] = ..., generated_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., frame_index: _Optional[int] = ...) -> None: ...

class ModerateRequest(_message.Message):
    __slots__ = ("request_id", "image", "policy_id", "force_escalation", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_ESCALATION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: bytes
    policy_id: str
    force_escalation: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[bytes] = ..., policy_id: _Optional[str] = ..., force_escalation: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CategoryResult(_message.Message):
    __slots__ = ("id", "score", "review_threshold", "block_threshold", "band", "clause_id", "action", "frame_index", "forced_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    FORCED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    review_threshold: float
    block_threshold: float
    band: Band
    clause_id: str
    action: Action
    frame_index: int
    forced_by: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., review_threshold: _Optional[float] = ..., block_threshold: _Optional[float] = ..., band: _Optional[_Union[Band, str]] = ..., clause_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., frame_index: _Optional[int] = ..., forced_by: _Optional[str] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("status", "violates", "category_id", "clause_id", "rationale", "confidence", "model", "latency_ms", "reason", "agrees_with_clip", "changed_action", "generated_tokens", "frame_index")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VIOLATES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AGREES_WITH_CLIP_FIELD_NUMBER: _ClassVar[int]
    CHANGED_ACTION_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    status: EscalationStatus
    violates: bool
    category_id: str
    clause_id: str
    rationale: str
    confidence: float
    model: str
    latency_ms: float
    reason: str
    agrees_with_clip: bool
    changed_action: bool
    generated_tokens: int
    frame_index: int
    def __init__(self, status: _Optional[_Union[EscalationStatus, str]] = ..., violates: _Optional[bool] = ..., category_id: _Optional[str] = ..., clause_id: _Optional[str] = ..., rationale: _Optional[str] = ..., confidence: _Optional[float] = ..., model: _Optional[str] = ..., latency_ms: _Optional[float] = ..., reason: _Optional[str] = ..., agrees_with_clip: _Optional[bool] = ..., changed_action: _Optional[bool] = ..., generated_tokens: _Optional[int] = ..., frame_index: _Optional[int] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("decode_ms", "embed_ms", "decide_ms", "escalation_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    EMBED_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDE_MS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    embed_ms: float
    decide_ms: float
    escalation_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., embed_ms: _Optional[float] = ..., decide_ms: _Optional[float] = ..., escalation_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class ModerateResponse(_message.Message):
    __slots__ = ("request_id", "action", "policy_id", "policy_version", "model", "categories", "escalation", "timings", "reasons", "frames_scored", "frames_total", "bank_matches")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SCORED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BANK_MATCHES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: Action
    policy_id: str
    policy_version: str
    model: str
    categories: _containers.RepeatedCompositeFieldContainer[CategoryResult]
    escalation: Escalation
    timings: StageTimings
    reasons: _containers.RepeatedScalarFieldContainer[str]
    frames_scored: int
    frames_total: int
    bank_matches: _containers.RepeatedCompositeFieldContainer[BankMatch]
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., policy_id: _Optional[str] = ..., policy_version: _Optional[str] = ..., model: _Optional[str] = ..., categories: _Optional[_Iterable[_Union[CategoryResult, _Mapping]]] = ..., escalation: _Optional[_Union[Escalation, _Mapping]] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., reasons: _Optional[_Iterable[str]] = ..., frames_scored: _Optional[int] = ..., frames_total: _Optional[int] = ..., bank_matches: _Optional[_Iterable[_Union[BankMatch, _Mapping]]] = ...) -> None: ...

class BankMatch(_message.Message):
    __slots__ = ("bank", "content_id", "signal_type", "distance", "threshold", "frame_index", "category_id", "action", "clause_id")
    BANK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_ID_FIELD_NUMBER: _ClassVar[int]
    bank: str
    content_id: str
    signal_type: BankSignalType
    distance: float
    threshold: float
    frame_index: int
    category_id: str
    action: Action
    clause_id: str
    def __init__(self, bank: _Optional[str] = ..., content_id: _Optional[str] = ..., signal_type: _Optional[_Union[BankSignalType, str]] = ..., distance: _Optional[float] = ..., threshold: _Optional[float] = ..., frame_index: _Optional[int] = ..., category_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., clause_id: _Optional[str] = ...) -> None: ...

class ModerateStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: ModerateRequest
    def __init__(self, request: _Optional[_Union[ModerateRequest, _Mapping]] = ...) -> None: ...

class ModerateStreamError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ModerateStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: ModerateResponse
    error: ModerateStreamError
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[ModerateResponse, _Mapping]] = ..., error: _Optional[_Union[ModerateStreamError, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicySummary(_message.Message):
    __slots__ = ("id", "version", "description", "is_default", "category_ids", "mode", "shadow_of", "content_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_OF_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    description: str
    is_default: bool
    category_ids: _containers.RepeatedScalarFieldContainer[str]
    mode: str
    shadow_of: str
    content_sha256: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., is_default: _Optional[bool] = ..., category_ids: _Optional[_Iterable[str]] = ..., mode: _Optional[str] = ..., shadow_of: _Optional[str] = ..., content_sha256: _Optional[str] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "model", "random_weights")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[PolicySummary]
    model: str
    random_weights: bool
    def __init__(self, policies: _Optional[_Iterable[_Union[PolicySummary, _Mapping]]] = ..., model: _Optional[str] = ..., random_weights: _Optional[bool] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("policy_id",)
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    policy_id: str
    def __init__(self, policy_id: _Optional[str] = ...) -> None: ...

class Clause(_message.Message):
    __slots__ = ("id", "text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class PolicyCategory(_message.Message):
    __slots__ = ("id", "clause", "review_threshold", "block_threshold", "action_on_block", "positive_prompts", "contrast_prompts")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLAUSE_FIELD_NUMBER: _ClassVar[int]
    REVIEW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_ON_BLOCK_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    clause: Clause
    review_threshold: float
    block_threshold: float
    action_on_block: Action
    positive_prompts: _containers.RepeatedScalarFieldContainer[str]
    contrast_prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., clause: _Optional[_Union[Clause, _Mapping]] = ..., review_threshold: _Optional[float] = ..., block_threshold: _Optional[float] = ..., action_on_block: _Optional[_Union[Action, str]] = ..., positive_prompts: _Optional[_Iterable[str]] = ..., contrast_prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("id", "version", "description", "is_default", "templates", "benign_prompts", "categories", "source_yaml", "content_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    BENIGN_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_YAML_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    description: str
    is_default: bool
    templates: _containers.RepeatedScalarFieldContainer[str]
    benign_prompts: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedCompositeFieldContainer[PolicyCategory]
    source_yaml: str
    content_sha256: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ..., description: _Optional[str] = ..., is_default: _Optional[bool] = ..., templates: _Optional[_Iterable[str]] = ..., benign_prompts: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[_Union[PolicyCategory, _Mapping]]] = ..., source_yaml: _Optional[str] = ..., content_sha256: _Optional[str] = ...) -> None: ...
