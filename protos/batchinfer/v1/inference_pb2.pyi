from batchinfer.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task_types", "context_length", "modalities")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    task_types: _containers.RepeatedScalarFieldContainer[_task_pb2.TaskType]
    context_length: int
    modalities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., task_types: _Optional[_Iterable[_Union[_task_pb2.TaskType, str]]] = ..., context_length: _Optional[int] = ..., modalities: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchLimits(_message.Message):
    __slots__ = ("max_batch_size", "max_batch_tokens", "max_wait_ms", "max_queued_tasks")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_TASKS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: int
    max_queued_tasks: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., max_queued_tasks: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("models", "backend", "device", "limits", "version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    backend: str
    device: str
    limits: BatchLimits
    version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., limits: _Optional[_Union[BatchLimits, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class TaskBatch(_message.Message):
    __slots__ = ("tasks", "first")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    first: bool
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., first: _Optional[bool] = ...) -> None: ...

class CancelTasks(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessRequest(_message.Message):
    __slots__ = ("batch", "cancel")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    batch: TaskBatch
    cancel: CancelTasks
    def __init__(self, batch: _Optional[_Union[TaskBatch, _Mapping]] = ..., cancel: _Optional[_Union[CancelTasks, _Mapping]] = ...) -> None: ...

class ProcessResponse(_message.Message):
    __slots__ = ("results", "credits", "draining")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_task_pb2.TaskResult]
    credits: int
    draining: bool
    def __init__(self, results: _Optional[_Iterable[_Union[_task_pb2.TaskResult, _Mapping]]] = ..., credits: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...
