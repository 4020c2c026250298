from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SampleFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLE_FORMAT_UNSPECIFIED: _ClassVar[SampleFormat]
    INT16: _ClassVar[SampleFormat]
    FLOAT32: _ClassVar[SampleFormat]
SAMPLE_FORMAT_UNSPECIFIED: SampleFormat
INT16: SampleFormat
FLOAT32: SampleFormat

class Pcm(_message.Message):
    __slots__ = ("data", "format", "sample_rate", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: SampleFormat
    sample_rate: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[SampleFormat, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("encoded", "pcm")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pcm: Pcm
    def __init__(self, encoded: _Optional[bytes] = ..., pcm: _Optional[_Union[Pcm, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "datatype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    datatype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., datatype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class DenoiseRequest(_message.Message):
    __slots__ = ("model", "audio", "strength")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    audio: Audio
    strength: float
    def __init__(self, model: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., strength: _Optional[float] = ...) -> None: ...

class DenoiseResponse(_message.Message):
    __slots__ = ("audio", "model", "queue_ms", "compute_ms", "batch_size", "warnings")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    model: str
    queue_ms: float
    compute_ms: float
    batch_size: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., model: _Optional[str] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("model", "sample_rate", "channels", "format", "strength")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    sample_rate: int
    channels: int
    format: SampleFormat
    strength: float
    def __init__(self, model: _Optional[str] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., format: _Optional[_Union[SampleFormat, str]] = ..., strength: _Optional[float] = ...) -> None: ...

class StreamDenoiseRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class StreamDenoiseResponse(_message.Message):
    __slots__ = ("audio", "samples_in", "samples_out", "model")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_IN_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_OUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    samples_in: int
    samples_out: int
    model: str
    def __init__(self, audio: _Optional[bytes] = ..., samples_in: _Optional[int] = ..., samples_out: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class DecomposeRequest(_message.Message):
    __slots__ = ("model", "audio", "top_k", "group", "return_components", "fit_steps", "groups")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    RETURN_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    FIT_STEPS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    audio: Audio
    top_k: int
    group: str
    return_components: bool
    fit_steps: int
    groups: int
    def __init__(self, model: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., top_k: _Optional[int] = ..., group: _Optional[str] = ..., return_components: _Optional[bool] = ..., fit_steps: _Optional[int] = ..., groups: _Optional[int] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: float
    end: float
    def __init__(self, start: _Optional[float] = ..., end: _Optional[float] = ...) -> None: ...

class Component(_message.Message):
    __slots__ = ("label", "units", "energy_share", "audio", "dominant_hz", "active_fraction", "active", "active_spans")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SHARE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DOMINANT_HZ_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SPANS_FIELD_NUMBER: _ClassVar[int]
    label: str
    units: _containers.RepeatedScalarFieldContainer[int]
    energy_share: float
    audio: Audio
    dominant_hz: float
    active_fraction: float
    active: _containers.RepeatedCompositeFieldContainer[Span]
    active_spans: int
    def __init__(self, label: _Optional[str] = ..., units: _Optional[_Iterable[int]] = ..., energy_share: _Optional[float] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., dominant_hz: _Optional[float] = ..., active_fraction: _Optional[float] = ..., active: _Optional[_Iterable[_Union[Span, _Mapping]]] = ..., active_spans: _Optional[int] = ...) -> None: ...

class DecomposeResponse(_message.Message):
    __slots__ = ("model", "activations", "frame_rate", "components", "residual", "group", "fit_steps", "residual_energy_share", "error_db", "sample_rate", "channels", "samples", "groups", "warnings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    FIT_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_ENERGY_SHARE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DB_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    activations: Tensor
    frame_rate: float
    components: _containers.RepeatedCompositeFieldContainer[Component]
    residual: Audio
    group: str
    fit_steps: int
    residual_energy_share: float
    error_db: float
    sample_rate: int
    channels: int
    samples: int
    groups: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., activations: _Optional[_Union[Tensor, _Mapping]] = ..., frame_rate: _Optional[float] = ..., components: _Optional[_Iterable[_Union[Component, _Mapping]]] = ..., residual: _Optional[_Union[Audio, _Mapping]] = ..., group: _Optional[str] = ..., fit_steps: _Optional[int] = ..., residual_energy_share: _Optional[float] = ..., error_db: _Optional[float] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., samples: _Optional[int] = ..., groups: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model", "tensor", "audio")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    model: str
    tensor: Tensor
    audio: Audio
    def __init__(self, model: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model", "code", "warnings", "frame_rate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    code: Tensor
    warnings: _containers.RepeatedScalarFieldContainer[str]
    frame_rate: float
    def __init__(self, model: _Optional[str] = ..., code: _Optional[_Union[Tensor, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., frame_rate: _Optional[float] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model", "code")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    model: str
    code: Tensor
    def __init__(self, model: _Optional[str] = ..., code: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("model", "output")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    model: str
    output: Tensor
    def __init__(self, model: _Optional[str] = ..., output: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "input", "sample_rate", "code_dim", "parameters", "version", "sha256", "causal", "latency_ms", "rpcs", "code_frame_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CODE_DIM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CAUSAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RPCS_FIELD_NUMBER: _ClassVar[int]
    CODE_FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    input: str
    sample_rate: int
    code_dim: int
    parameters: int
    version: str
    sha256: str
    causal: bool
    latency_ms: float
    rpcs: _containers.RepeatedScalarFieldContainer[str]
    code_frame_rate: float
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., input: _Optional[str] = ..., sample_rate: _Optional[int] = ..., code_dim: _Optional[int] = ..., parameters: _Optional[int] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., causal: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., rpcs: _Optional[_Iterable[str]] = ..., code_frame_rate: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_denoiser", "default_decomposer")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DENOISER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DECOMPOSER_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_denoiser: str
    default_decomposer: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_denoiser: _Optional[str] = ..., default_decomposer: _Optional[str] = ...) -> None: ...
