from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyItem(_message.Message):
    __slots__ = ("id", "completion", "gold", "response_tokens")
    ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    completion: str
    gold: str
    response_tokens: int
    def __init__(self, id: _Optional[str] = ..., completion: _Optional[str] = ..., gold: _Optional[str] = ..., response_tokens: _Optional[int] = ...) -> None: ...

class VerifyOptions(_message.Message):
    __slots__ = ("timeout_s", "last_number_fallback", "format_reward", "max_response_tokens", "overlong_buffer_tokens", "extraction")
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LAST_NUMBER_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FORMAT_REWARD_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_BUFFER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTION_FIELD_NUMBER: _ClassVar[int]
    timeout_s: float
    last_number_fallback: bool
    format_reward: bool
    max_response_tokens: int
    overlong_buffer_tokens: int
    extraction: str
    def __init__(self, timeout_s: _Optional[float] = ..., last_number_fallback: _Optional[bool] = ..., format_reward: _Optional[bool] = ..., max_response_tokens: _Optional[int] = ..., overlong_buffer_tokens: _Optional[int] = ..., extraction: _Optional[str] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("items", "options")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[VerifyItem]
    options: VerifyOptions
    def __init__(self, items: _Optional[_Iterable[_Union[VerifyItem, _Mapping]]] = ..., options: _Optional[_Union[VerifyOptions, _Mapping]] = ...) -> None: ...

class RewardParts(_message.Message):
    __slots__ = ("correctness", "format", "overlong")
    CORRECTNESS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_FIELD_NUMBER: _ClassVar[int]
    correctness: float
    format: float
    overlong: float
    def __init__(self, correctness: _Optional[float] = ..., format: _Optional[float] = ..., overlong: _Optional[float] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("id", "correct", "status", "extracted", "reason", "reward", "parts", "latency_ms", "cached")
    ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    correct: bool
    status: str
    extracted: str
    reason: str
    reward: float
    parts: RewardParts
    latency_ms: float
    cached: bool
    def __init__(self, id: _Optional[str] = ..., correct: _Optional[bool] = ..., status: _Optional[str] = ..., extracted: _Optional[str] = ..., reason: _Optional[str] = ..., reward: _Optional[float] = ..., parts: _Optional[_Union[RewardParts, _Mapping]] = ..., latency_ms: _Optional[float] = ..., cached: _Optional[bool] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("verdicts", "verifier_version")
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    verifier_version: str
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ..., verifier_version: _Optional[str] = ...) -> None: ...
