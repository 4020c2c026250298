"""The ``audioae.v1.AudioAE`` servicer: validates each request, queues device work on the
:class:`~audioae.server.batcher.Batcher`, and answers in the caller's own format.

Status codes: INVALID_ARGUMENT for bad audio or parameters, NOT_FOUND for an unknown model,
RESOURCE_EXHAUSTED for oversized input (a message over ``--max-request-mb``: :mod:`audioae.server.parsing`),
a full queue or too many calls in progress (the gate's admission limit, :mod:`audioae.server.lifecycle`),
UNAVAILABLE while starting or draining,
DEADLINE_EXCEEDED when the caller's deadline passes while it waits. A call that ends early (the
caller cancelled it, or its deadline passed) is logged and counted as CANCELLED or
DEADLINE_EXCEEDED, whatever the handler went on to do. A string of the request quoted in a message is clipped
(:func:`audioae.config.quoted`), and so is the message (:func:`audioae.server.errors.status_of`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np
import torch

from audioae.audio import (
    MAX_CHANNELS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    AudioError,
    check_channels,
    check_levels,
    check_resample,
    check_sample_rate,
)
from audioae.config import quoted
from audioae.decompose import DEFAULT_GROUPS, MAX_SPANS, check_options, decompose, summarize
from audioae.device import is_out_of_memory, release_device_memory
from audioae.enhance import Stopped, StreamingDenoiser, channel_seconds, code_input
from audioae.models.image import check_grey_levels
from audioae.spectral import window_samples
from audioae.v1 import audioae_pb2 as pb
from audioae.v1 import audioae_pb2_grpc
from audioae.wire import (
    DATATYPES,
    array_from_tensor,
    audio_from_message,
    audio_message,
    pcm_bytes_to_array,
    pcm_dtype,
    pcm_message,
    pcm_seconds,
    tensor_message,
)

from .batcher import Batcher, Job, batch_key
from .codecs import Codecs
from .config import ServerConfig
from .errors import OOM_ADVICE, Abort, CallEnded, status_of
from .feed import QUEUE_MESSAGES, FeedTimeout, MessageFeed
from .handlers import logged, peer_of
from .lifecycle import Gate
from .metrics import Metrics
from .parsing import CONFIG_FIRST, Oversized, Unparsed
from .store import ModelStore, ServedModel

log = logging.getLogger(__name__)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# An encoded upload may decode to --max-audio-seconds of this (or to as many samples as the largest
# int16 PCM message carries, if more): FLAC of silence compresses ~1000:1, so the message limit
# alone does not bound the decoded size.
DECODE_BUDGET_RATE, DECODE_BUDGET_CHANNELS = 48_000, 2
# Decompose builds every component waveform [K, C, T] float32 at the caller's rate, returned or
# not; its worst case (K = top_k, or every unit / group) must fit in this.
MAX_COMPONENT_BYTES = 1 << 30


# What the call this thread serves has come to (its model, its seconds of audio), for its log
# line: one gRPC thread serves one call from its start to its end, streams included.
_calls = threading.local()


def _note(**fields) -> None:
    """Add ``fields`` (``model``, ``seconds``) to the log line of the call this thread serves."""
    note = getattr(_calls, "note", None)
    if note is not None:
        note.update(fields)


def _log_call(rpc: str, code: grpc.StatusCode, started: float, peer: str) -> None:
    """One INFO line per finished call: RPC, status, milliseconds, model, seconds of audio, peer
    (read as the call began: gRPC names none once the call has ended, and a cancelled call was
    logged "from ''")."""
    note = getattr(_calls, "note", None) or {}
    _calls.note = None
    what = "".join((f" model {logged(note['model'])}" if note.get("model") else "",
                    f" {note['seconds']:.2f} s of audio" if note.get("seconds") is not None else ""))
    log.info("%s %s %.0f ms%s from %s", rpc, code.name, 1000 * (time.monotonic() - started), what, peer)


def _unary(method: Callable) -> Callable:
    """Count the call, enter the gate (which refuses it when the server is busy), map exceptions
    to status codes, log the call once it ends, and log the answer's ``warnings`` (where it has
    them) with the caller's address. A call that ended before its answer (cancelled, or past its
    deadline) is counted and logged as such (:func:`_ended`), not OK because the handler
    went on to answer it, nobody listening."""

    @functools.wraps(method)
    def wrapper(self: AudioAEServicer, request, context: grpc.ServicerContext):
        code = grpc.StatusCode.OK
        started = time.monotonic()
        peer = peer_of(context)  # now: once the call has ended, gRPC names no peer
        _calls.note = {"model": getattr(request, "model", "")}  # the name asked for; the one served, below
        self.metrics.inflight.inc()
        try:
            if isinstance(request, Unparsed):
                raise Abort(INVALID, request.refusal())
            if isinstance(request, Oversized):
                raise Abort(EXHAUSTED, request.refusal())
            self.gate.enter()
            try:
                response = method(self, request, context)
            finally:
                self.gate.exit()
            if not context.is_active():  # cancelled or timed out while it ran: the answer reaches nobody
                code = _ended(context)
                return response
            # The operator hears what the caller was warned of (a file cut short: AudioAEServicer._audio).
            for warning in getattr(response, "warnings", ()):
                log.warning("%s from %s: %s", method.__name__, peer, warning)
            return response
        except Exception as exc:
            code, message = status_of(exc, method.__name__)
            if not context.is_active():  # the call had ended: that is its status, whatever stopped the work
                code = _ended(context)
            context.abort(code, message)
        finally:
            self.metrics.requests.labels(method.__name__, code.name).inc()
            self.metrics.inflight.dec()
            _log_call(method.__name__, code, started, peer)

    return wrapper


# A stream's messages are named "the 2nd message" (the StreamConfig is the 1st) and its audio
# "audio chunk 1 (the 2nd message)", as the Python client counts its chunks: a bare "message 1"
# read as the first message to some and as the second (zero-based) to others.
def _nth(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 12 -> "12th", 23 -> "23rd"."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class _StreamCut(Exception):
    """A stream the server ends before its client does (a drain, an idle client, the length limit,
    any message refused after the StreamConfig: oversized, unparsable, a bad audio chunk, ...): its
    tail is answered first, then the call ends with ``code``. ``refused``: a message refused, whose
    ``message`` then says that the audio before it was answered, where there was some."""

    def __init__(self, code: grpc.StatusCode, message: str, by_drain: bool = False, refused: bool = False):
        super().__init__(message)
        self.code, self.message, self.by_drain, self.refused = code, message, by_drain, refused


def _stream_audio(msg, i: int, cfg: pb.StreamConfig) -> np.ndarray:
    """Audio chunk ``i`` (the stream's ``i + 1``-th message) as ``[C, n]`` float32 samples; raises a
    :class:`_StreamCut` (``refused``) saying why the message is not one. Every refusal ends the stream
    the same way, the tail of the audio before it answered first, so that no kind of bad
    message (a bad audio chunk, a second StreamConfig, an empty one) loses that tail."""
    nth = f"the {_nth(i + 1)} message"
    if isinstance(msg, Oversized):
        raise _StreamCut(EXHAUSTED, msg.refusal(nth), refused=True)
    if isinstance(msg, Unparsed):
        raise _StreamCut(INVALID, f"{nth}: {msg.refusal()}", refused=True)
    if msg.WhichOneof("msg") == "config":
        raise _StreamCut(INVALID, f"{nth} is a StreamConfig: only the first message may be one; the rest carry "
                                  f"audio", refused=True)
    if msg.WhichOneof("msg") is None:
        raise _StreamCut(INVALID, f"{nth} is empty (neither audio nor a StreamConfig); send audio bytes", refused=True)
    chunk = f"audio chunk {i} ({nth})"
    try:
        x = pcm_bytes_to_array(msg.audio, cfg.format, cfg.channels, chunk)  # [C, n]
        check_levels(x, chunk)
    except AudioError as exc:
        raise _StreamCut(INVALID, str(exc), refused=True) from None
    return x


DRAIN_POLL_SECONDS = 0.5  # how often a stream waiting for its client looks at the drain


def _memory_that_ran_out(exc: BaseException, device: torch.device | None) -> str:
    """Whose memory ``exc`` says ran out, as "host memory" or "memory (cuda:0)": the model's
    ``device`` when it was the model's work (None: the server's own, on the host), and then the
    host still where the failure is the CPU allocator's or Python's (a CUDA model copies its
    answer to the host)."""
    text = str(exc).lower()
    host = device is None or device.type == "cpu" or isinstance(exc, MemoryError) or "can't allocate memory" in text
    return "host memory" if host else f"memory ({device})"


def _pcm_shape(audio) -> tuple[int, int, int] | None:
    """``(frames, channels, sample_rate)`` of an ``Audio`` message's PCM from its byte count; None
    when malformed (the decode says why)."""
    seconds = pcm_seconds(audio)
    if seconds is None:
        return None
    p = audio.pcm
    return round(seconds * p.sample_rate), p.channels, p.sample_rate


def _check_channels(channels: int, name: str) -> None:
    """The wire contract's channel limit, for encoded files as for PCM (a WAV may declare 1,000)."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise Abort(INVALID, f"{name}: the audio has {channels} channels; this server takes 1..{MAX_CHANNELS}")


def _call_model(fn: Callable, x: torch.Tensor, doing: str, explain: Callable[[str], str], scale: str, less: str):
    """``fn(x)`` for Encode/Decode: running out of memory is RESOURCE_EXHAUSTED, ``less`` saying
    what to send less of (not always "a smaller batch": a code of one item and 600,000
    frames cannot be a smaller batch, nor audio, whose channels are the batch); any other error
    inside the network is a shape the model does not take (ValueError: INVALID_ARGUMENT), told
    by ``explain(first line of the error)``. An answer of NaN or Inf is refused (INVALID_ARGUMENT),
    with ``scale`` saying what values the model expects: finite input that large overflowed the
    model's float32 arithmetic (features of 1e12 made decomposer-small's code all NaN, answered OK)."""
    try:
        y = fn(x)
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise Abort(EXHAUSTED, f"out of memory {doing}: {less}") from exc
        raise ValueError(explain(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)) from exc
    if not torch.isfinite(y).all():
        raise Abort(INVALID, f"{doing} gave NaN or Inf: the model's float32 arithmetic overflows on values this "
                             f"large (largest magnitude {float(x.abs().max()):.3g}); {scale}")
    return y


def _is_image(sm: ServedModel) -> bool:
    return getattr(sm.model.config, "input", "") == "image"


def _item_shape(sm: ServedModel) -> list[int]:
    """The shape of one input item of a model that takes no audio, from its config: an image
    model's ``[in_channels, H, W]``, a vector model's (``linear`` of ``input = "vector"``) ``[input_dim]``."""
    c = sm.model.config
    return [c.in_channels, *c.image_size] if _is_image(sm) else [c.input_dim]


def _answer_size(fn: Callable, x: torch.Tensor) -> tuple[float, int]:
    """``(bytes of fn(x) as float32, items x frames it scales with)``, estimated from a run on
    one item and at most 8 frames: the output of a spectrogram model grows with its frames, an
    image model's with its items."""
    frames = x.shape[-1] if x.dim() == 3 else 1
    n0 = min(frames, 8)
    probe = x[:1, :, :n0] if x.dim() == 3 else x[:1]
    per_unit = 4 * fn(probe).numel() / n0  # bytes per item-frame
    return per_unit * x.shape[0] * frames, int(x.shape[0] * frames)


def _field_bytes(n: int) -> int:
    """Bytes a length-delimited protobuf field numbered below 16 takes on the wire with ``n`` bytes
    of payload: its key, its length as a varint, the payload."""
    return 1 + _varint_bytes(n) + n


def _varint_bytes(n: int) -> int:
    """Bytes a non-negative ``n`` takes as a protobuf varint."""
    return max(1, (n.bit_length() + 6) // 7)


# Upper bounds of a Decompose answer's parts besides its float32 payload, in protobuf's encoding
# (proto/audioae/v1/audioae.proto). A length below 2^35 (an answer is under 2 GiB) is a varint of
# at most 5 bytes, a non-negative int32 too; a double field is its key and 8 bytes.
_LEN, _DOUBLE = 5, 1 + 8
# Audio {pcm: Pcm {data, format, sample_rate, channels}} in a Component or as the residual: the
# keys and lengths of the three messages, an enum, two int32s; the samples come on top.
_WAVE_HEADER = (1 + _LEN) * 3 + (1 + 1) + (1 + _LEN) * 2
# Tensor {shape: [U, N] packed int64, datatype "FP32", data} as the activations; the data on top.
_TENSOR_HEADER = (1 + _LEN) + (1 + 1 + 2 * 10) + (1 + 1 + 4) + (1 + _LEN)


def _max_label_bytes(units: int) -> int:
    """The longest label :mod:`audioae.decompose` gives a component (``unit 3 (~440 Hz)``, ``band
    500-1000 Hz``, ``cluster 2 (~262+330 Hz, 2 units)``, ``cluster 4 (780-7200 Hz, peak 168 Hz,
    60 units)``), every number as wide as it may be: a count as wide as ``units``, a frequency
    (below the Nyquist frequency of the highest rate served) signed. ASCII: a byte a character."""
    n, hz = "9" * len(str(units)), "-" + "9" * len(str(MAX_SAMPLE_RATE))
    return max(len(f"unit {n} (~{hz} Hz)"), len(f"band {hz}-{hz} Hz"),
               len(f"cluster {n} (~{hz}+{hz}+{hz} Hz, {n} units)"),
               len(f"cluster {n} ({hz}-{hz} Hz, peak {hz} Hz, {n} units)"))


def _summary_bytes(units: int, components: int, group: str) -> int:
    """An upper bound of the bytes the per-component summary of a Decompose answer takes (every
    ``Component`` field but its waveform) for at most ``components`` components of a model of
    ``units`` units grouped by ``group``: per component its key and length, the label, the units'
    key and length, three doubles, :data:`MAX_SPANS` spans of two doubles each and ``active_spans``;
    and each unit index listed (one per component under ``none``; ``cluster`` partitions the
    units; a ``band`` lists any unit that holds 1% of its energy, so every band may list them all)."""
    label = _max_label_bytes(units)
    span = _field_bytes(2 * _DOUBLE)  # Span {start, end}: 20 bytes
    per_component = ((1 + _LEN) + (1 + _varint_bytes(label) + label) + (1 + _LEN) + 3 * _DOUBLE
                     + MAX_SPANS * span + (1 + _LEN))
    listed = components if group == "none" else units if group == "cluster" else components * units
    return components * per_component + listed * _varint_bytes(max(units - 1, 0))


def _mb(size: float) -> str:
    mb = size / 2**20
    return f"{mb:,.0f}" if mb >= 10 else f"{mb:.1f}"


def _queued(n: int) -> str:
    """1 -> "1 request queued", 3 -> "3 requests queued"."""
    return f"{n} request{'' if n == 1 else 's'} queued"


def _took(seconds: float) -> str:
    """A time in a message: "40 ms" under a second (a short deadline read "0.0 s"), else "2.5 s"."""
    return f"{seconds * 1000:.0f} ms" if seconds < 0.9995 else f"{seconds:.1f} s"


def _ended(context: grpc.ServicerContext) -> grpc.StatusCode:
    """Why a call that is no longer active ended: its deadline, or the caller cancelled it.
    (gRPC core's clock and Python's differ by a little: a call within 0.25 s of its deadline
    counts as timed out.)"""
    late = context.time_remaining() < 0.25
    return grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED


class AudioAEServicer(audioae_pb2_grpc.AudioAEServicer):
    def __init__(
        self, store: ModelStore | None, batcher: Batcher, metrics: Metrics, gate: Gate, config: ServerConfig,
        codecs: Codecs,
    ):
        self.store, self.batcher, self.metrics, self.gate, self.config = store, batcher, metrics, gate, config
        self.codecs = codecs  # file bytes in and out, in worker processes

    # ---- helpers ---------------------------------------------------------------------------------
    def _wait(self, job: Job, context: grpc.ServicerContext):
        """Queue ``job`` and wait for it within the caller's deadline; a call that ends early
        (cancelled, timed out) abandons its job: dropped if still queued, stopped at its next piece
        if it is a long denoise already running (:meth:`~audioae.server.batcher.Job.abandon`)."""
        if not context.is_active():  # it ended while its upload was decoded: no work for a call that has ended
            raise CallEnded("the call ended before its work was queued")
        fut = self.batcher.submit(job)
        if not context.add_callback(job.abandon):  # the call had ended already
            job.abandon()
        left = context.time_remaining()  # huge (not None) when the caller set no deadline
        try:
            return fut.result(timeout=left if left is not None and left < 1e6 else None)
        except FutureTimeout:
            running = fut.running()  # before abandon: a queued job's future is cancelled there
            job.abandon()
            if running:  # on the device, not waiting for it: say so
                raise self._ended_while_working(grpc.StatusCode.DEADLINE_EXCEEDED, job) from None
            raise Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline passed while the request waited for the device "
                f"({_queued(self.batcher.queued_besides(job))} besides it)",
            ) from None
        except CancelledError:  # abandoned: its call was cancelled, or its deadline passed (the code says which)
            code = _ended(context) if not context.is_active() else grpc.StatusCode.CANCELLED
            said = "the deadline passed" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "the call was cancelled"
            raise Abort(code, said) from None
        except Stopped as exc:  # stopped at its next piece or step, its call having ended: not INTERNAL
            raise self._ended_while_working(_ended(context), job, str(exc)) from None

    @staticmethod
    def _ended_while_working(code: grpc.StatusCode, job: Job, stopped: str = "") -> Abort:
        """The call ended (``code``: its deadline, or the caller) while the device worked on its
        job; ``stopped``: where the work stopped, when it had (:class:`~audioae.enhance.Stopped`)."""
        what = "deadline passed" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "call was cancelled"
        hint = ": allow more time for this much audio" if code == grpc.StatusCode.DEADLINE_EXCEEDED else ""
        return Abort(code, f"the {what} while the device worked on the request "
                           f"({_took(time.monotonic() - job.enqueued)} after it came{'; ' + stopped if stopped else ''}){hint}")

    def _check_seconds(self, seconds: float | None, channels: int = 1) -> None:
        """Refuse audio longer than ``--max-audio-seconds``, or with more channel-seconds than that
        many seconds of stereo: the model's work and memory grow with every channel."""
        if seconds is None:
            return
        limit = self.config.max_audio_seconds
        if seconds > limit:
            raise Abort(
                EXHAUSTED,
                f"the audio lasts {seconds:.1f} s; this server accepts at most {limit:g} s per request "
                f"(--max-audio-seconds)",
            )
        if seconds * channels > limit * DECODE_BUDGET_CHANNELS:
            raise Abort(
                EXHAUSTED,
                f"the audio is {channels} channels x {seconds:.1f} s = {seconds * channels:,.0f} channel-seconds; "
                f"this server accepts at most {limit * DECODE_BUDGET_CHANNELS:,.0f} per request ({limit:g} s of "
                f"stereo, from --max-audio-seconds): send fewer channels or shorter audio",
            )

    def _too_large(self, answer: str, size: float, of: str, remedy: str, say_source: bool = True) -> Abort:
        """The refusal of an answer over this server's send limit, which gRPC would refuse itself
        after the call counted OK: "``answer`` N MB of ``of``, over this server's L MB answer limit
        (where L comes from): ``remedy``"; "within 5% of" where the caller kept that much for the
        rest of the answer and N is under L. ``say_source=False`` leaves out where L comes from."""
        limit = self.config.max_send_bytes
        source = "4 x --max-request-mb" if limit == 4 * self.config.max_message_bytes else "gRPC's 2 GB maximum"
        note = f" ({source})" if say_source else ""
        where = "over" if size > limit else "within 5% of"
        return Abort(EXHAUSTED, f"{answer} {_mb(size)} MB of {of}, {where} this server's {limit / 2**20:g} MB "
                                f"answer limit{note}: {remedy}")

    @property
    def max_decoded_samples(self) -> int:
        """The most samples (frames x channels) an encoded upload may decode to."""
        return max(self._seconds_budget, self.config.max_message_bytes // 2)

    @property
    def _seconds_budget(self) -> int:
        return int(self.config.max_audio_seconds * DECODE_BUDGET_RATE * DECODE_BUDGET_CHANNELS)

    def _check_decoded(self, frames: int, channels: int, sr: int) -> None:
        samples, budget = frames * channels, self.max_decoded_samples
        if samples > budget:
            why = (
                f"{self.config.max_audio_seconds:g} s of {DECODE_BUDGET_RATE // 1000} kHz stereo, from --max-audio-seconds"
                if budget == self._seconds_budget
                else "as many as the largest int16 PCM message carries, from --max-request-mb"
            )
            raise Abort(
                EXHAUSTED,
                f"the encoded audio would decode to {samples:,} samples ({frames:,} frames x {channels} "
                f"channels at {sr} Hz, {4 * samples / 2**30:.1f} GiB as float32); this server decodes at "
                f"most {budget:,} per request ({why}): send shorter audio, fewer channels or a lower "
                f"sample rate",
            )

    def _audio(
        self, audio, model_sr: int, context: grpc.ServicerContext, name: str = "audio",
        check: Callable[[int, int, int], None] | None = None,
    ) -> tuple[np.ndarray, int, object, list[str]]:
        """Decode ``audio`` for a model of rate ``model_sr``, refusing what the limits forbid from
        its header first, before decoding. ``check(frames, channels, sample_rate)``: the RPC's own
        limit, applied to the header and again to the decoded audio. Returns the audio ``[C, T]``,
        its rate, its form and the warnings for the caller (a file cut short:
        :func:`audioae.audio.cut_short`), which :func:`_unary` logs once they are answered. An
        encoded upload whose call ends (``context``: cancelled, or past its deadline) while it waits
        for a codec process stops waiting and is not decoded (:class:`~audioae.server.errors.CallEnded`):
        ten abandoned 9.5 MB FLAC uploads held the codec processes 3 s after their callers left."""
        if audio is None or audio.WhichOneof("data") is None:
            raise Abort(INVALID, f"{name}: no audio given (set either encoded file bytes or pcm)")
        encoded = audio.WhichOneof("data") == "encoded"
        is_active = context.is_active
        # Before decoding, from the header or the byte count alone: refuse cheaply.
        declared = self.codecs.header(bytes(audio.encoded), is_active=is_active) if encoded else _pcm_shape(audio)
        if declared is not None:
            _check_channels(declared[1], name)
            self._check_seconds(declared[0] / declared[2] if declared[2] > 0 else None, declared[1])
            if encoded:  # PCM is no larger than its message
                self._check_decoded(*declared)
            if MIN_SAMPLE_RATE <= declared[2] <= MAX_SAMPLE_RATE:  # else the decode says it is out of range
                check_resample(declared[2], model_sr, target="the model's ", served=True)
            if check is not None:
                check(*declared)
        wav, sr, form = audio_from_message(audio, name, read=functools.partial(self.codecs.read, is_active=is_active))
        _note(seconds=wav.shape[-1] / sr)
        check_resample(sr, model_sr, target="the model's ", served=True)  # a header the codecs could not read ahead
        _check_channels(wav.shape[0], name)
        self._check_seconds(wav.shape[-1] / sr, wav.shape[0])
        if check is not None:
            check(wav.shape[-1], wav.shape[0], sr)
        warnings = [] if form.cut is None else [form.cut.warning(name, "answered for", wav.shape[-1])]
        return wav, sr, form, warnings

    @staticmethod
    def _strength(msg) -> float:
        if not msg.HasField("strength"):
            return 1.0
        s = msg.strength
        if math.isnan(s) or not 0.0 <= s <= 1.0:  # a float32 on the wire: -0.1 arrives as -0.10000000149...
            raise Abort(INVALID, f"strength must be within [0, 1], got {s:.7g}")
        return float(s)

    # ---- Denoise ---------------------------------------------------------------------------------
    @_unary
    def Denoise(self, request: pb.DenoiseRequest, context) -> pb.DenoiseResponse:
        sm = self.store.denoiser(request.model)
        _note(model=sm.name)
        strength = self._strength(request)
        wav, sr, form, warnings = self._audio(request.audio, sm.model.config.sample_rate, context)
        seconds, work = wav.shape[-1] / sr, channel_seconds(wav, sr)
        job = Job("denoise", work, key=batch_key(sm.name, sm.model, work), args=(sm.model, wav, sr, strength))
        y, info = self._wait(job, context)
        self.metrics.audio_seconds.labels("Denoise").inc(seconds)
        resp = pb.DenoiseResponse(
            model=sm.name,
            queue_ms=info.queue_ms,
            compute_ms=info.compute_ms,
            batch_size=info.batch_size,
            warnings=warnings,
        )
        others = resp.ByteSize()  # every field but the audio: a few bytes to count

        def encode(wav: np.ndarray, sr: int, **kwargs) -> bytes:
            # A file that compresses far better than its denoised audio (FLAC of a square wave: 10x)
            # can have an answer over the limit; gRPC's own refusal would be counted OK. The size
            # from the bytes in hand: resp.ByteSize() would serialise the whole answer to count it.
            # The codecs encode nothing for a call that has ended (is_active).
            data = self.codecs.encode(wav, sr, is_active=context.is_active, **kwargs)
            size = others + _field_bytes(_field_bytes(len(data)))  # + audio {encoded: data}, exactly
            if size > self.config.max_send_bytes:
                raise self._too_large("the answer would be", size, f"{form.format} {form.subtype}",
                                      "the upload compressed far better than its denoised audio does; "
                                      "send shorter audio")
            return data

        # A PCM answer is not checked: its samples take as many bytes as the question's, which came
        # within --max-request-mb, a quarter of the answer limit (for --max-request-mb below 512).
        resp.audio.CopyFrom(audio_message(y, form, encode=encode))
        return resp

    # ---- StreamDenoise ---------------------------------------------------------------------------
    def StreamDenoise(self, request_iterator, context) -> Iterator[pb.StreamDenoiseResponse]:
        code = grpc.StatusCode.OK
        started = time.monotonic()
        peer = peer_of(context)  # now: once the call has ended, gRPC names no peer
        _calls.note = {}
        self.metrics.inflight.inc()
        try:
            self.gate.enter(stream=True, max_streams=self.config.max_streams)
            try:
                yield from self._stream(request_iterator, context)
            finally:
                self.gate.exit(stream=True)
        except Exception as exc:
            if not context.is_active():  # the caller went away or its deadline passed: stop quietly
                code = _ended(context)
                return
            code, message = status_of(exc)
            context.abort(code, message)
        finally:
            if code == grpc.StatusCode.OK and not context.is_active():
                code = _ended(context)
            self.metrics.requests.labels("StreamDenoise", code.name).inc()
            self.metrics.inflight.dec()
            _log_call("StreamDenoise", code, started, peer)  # one line per stream, at its end

    def _stream_config(self, first) -> tuple[ServedModel, pb.StreamConfig, float]:
        if first is None:
            raise Abort(INVALID, "empty stream: the first message must be a StreamConfig")
        # Neither was parsed: what came may not be a StreamConfig at all (audio sent first).
        first_message = "the 1st message, which should be the StreamConfig"
        if isinstance(first, Oversized):
            raise Abort(EXHAUSTED, first.refusal(f"{first_message},", less=CONFIG_FIRST))
        if isinstance(first, Unparsed):
            raise Abort(INVALID, f"{first_message}: {first.refusal()}")
        if first.WhichOneof("msg") != "config":
            # an empty first message is not "audio came first"
            came = "audio came first" if first.WhichOneof("msg") == "audio" else \
                "the 1st message is empty (neither a StreamConfig nor audio)"
            raise Abort(INVALID, f"the first message must be a StreamConfig (model, sample_rate, channels, format); {came}")
        cfg = first.config
        _note(model=cfg.model)  # the name asked for, logged (clipped) if streamer() refuses it; the one served, below
        sm = self.store.streamer(cfg.model)
        strength = self._strength(cfg)
        try:  # the checks of a Pcm message's fields, whose messages name these fields when left out
            check_sample_rate(cfg.sample_rate, "stream", "StreamConfig.sample_rate")
            check_channels(cfg.channels, "stream", "StreamConfig.channels")
            pcm_dtype(cfg.format, "stream", "StreamConfig.format")
        except AudioError as exc:
            raise Abort(INVALID, str(exc)) from None
        return sm, cfg, strength

    def _stream(self, requests, context) -> Iterator[pb.StreamDenoiseResponse]:
        feed = MessageFeed(requests)
        try:
            yield from self._stream_from(feed, context)
        finally:
            feed.close()

    def _stream_from(self, feed: MessageFeed,
                     context: grpc.ServicerContext | None = None) -> Iterator[pb.StreamDenoiseResponse]:
        """The stream of ``feed``'s messages, answered; ``context``: the call's, which is sent its
        response headers once the StreamConfig is taken (None: a feed alone, no call to send them on)."""
        try:
            first = self._next_message(feed)
        except _StreamCut as cut:  # before any audio: nothing to answer
            message = cut.message if cut.by_drain else \
                f"no StreamConfig within {self.config.stream_idle_seconds:g} s (--stream-idle-seconds)"
            raise Abort(cut.code, message) from None
        sm, cfg, strength = self._stream_config(first)
        _note(model=sm.name)
        # The response headers, now that the stream is taken (its slot granted, its config valid): a
        # client that waits for them before sending audio (Go's stream.Header(), Java's onHeaders)
        # waited until --stream-idle-seconds ended the stream, gRPC sending them with the first answer.
        if context is not None:
            context.send_initial_metadata(())
        # Where the stream is: samples in and answered, what it was doing, and whether that was the
        # model's work (on its device) or the server's own on the host (for an out-of-memory message).
        done = {"in": 0, "out": 0, "at": "as the stream started", "model": True}  # its state, on the device
        failed = None
        try:
            yield from self._denoised(feed, sm, cfg, strength, done)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            # Words only: the exception's traceback holds the frames this must let go of (below).
            failed = (_memory_that_ran_out(exc, sm.device if done["model"] else None),
                      str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if failed is None:
            return
        # Out of the except block: its traceback, whose frames held the stream's state and the failed
        # step's tensors on the device, is gone, so the cache can hand their memory back. The stream
        # ran on this gRPC thread, outside the batcher, whose own out-of-memory path does the same.
        release_device_memory()
        memory, why = failed
        log.warning("out of %s in a stream %s: %s", memory, done["at"], why)
        sr = cfg.sample_rate
        remedy = "stream fewer channels" if done["model"] else "send smaller audio chunks"
        raise Abort(EXHAUSTED, f"the server ran out of {memory} {done['at']}, {done['in'] / sr:.2f} s into the "
                               f"stream: the stream was ended, its audio answered up to {done['out'] / sr:.2f} s; "
                               f"other calls share that memory: retry later, or {remedy}")

    def _denoised(self, feed: MessageFeed, sm: ServedModel, cfg: pb.StreamConfig, strength: float,
                  done: dict) -> Iterator[pb.StreamDenoiseResponse]:
        """The stream's answers, from its audio chunks on (its StreamConfig taken); ``done``: kept
        up to date, samples in (``in``) and answered (``out``), ``at``, what it is doing, and
        ``model``, whether that is the model's work."""
        den = StreamingDenoiser(sm.model, cfg.sample_rate, cfg.channels, strength=strength)
        limit = math.inf
        if self.config.max_stream_seconds:
            limit = int(self.config.max_stream_seconds * cfg.sample_rate)
        n_in = n_out = 0

        def doing(what: str, model: bool = False) -> None:
            done["at"], done["model"] = what, model

        try:
            for i in itertools.count(1):  # audio chunk i is the (i + 1)th message: the rest were refused
                msg = self._next_message(feed)
                if msg is None:  # the client half-closed: the tail below
                    break
                if self.gate.cut_reason:  # cut off while this message was taken: not through the model
                    raise self._drain_cut()
                chunk = f"audio chunk {i} (the {_nth(i + 1)} message)"
                doing(f"decoding {chunk}")  # set first: a decoding error names this chunk, not the one before
                x = _stream_audio(msg, i, cfg)  # [C, n]
                over = n_in + x.shape[-1] > limit
                x = x[:, : max(0, int(limit - n_in))] if over else x  # [C, n'], what fits in the limit
                n_in += x.shape[-1]
                _note(seconds=n_in / cfg.sample_rate)
                done["in"] = n_in
                doing(f"running the model on {chunk}", model=True)
                y = self._push(den, x)  # [C, m]
                if y.shape[-1]:
                    doing(f"encoding the answer to {chunk}")
                    resp = self._chunk(y, cfg, n_in, n_out + y.shape[-1], sm.name)
                    n_out += y.shape[-1]
                    done["out"] = n_out
                    yield resp
                if over:
                    raise _StreamCut(
                        EXHAUSTED,
                        f"the stream reached {self.config.max_stream_seconds:g} s, this server's limit "
                        f"(--max-stream-seconds); the audio up to there was answered",
                    )
        except _StreamCut as cut:
            if n_in:  # answer what was sent before saying why the stream ends
                yield self._tail(den, cfg, n_in, n_out, sm.name, doing)
            if cut.by_drain:
                self.gate.stream_ended_by_drain()
            answered = "; the audio before it was answered" if cut.refused and n_in else ""
            raise Abort(cut.code, cut.message + answered) from None
        yield self._tail(den, cfg, n_in, n_out, sm.name, doing)  # raises AudioError when no audio came at all

    def _push(self, den: StreamingDenoiser, x: np.ndarray) -> np.ndarray:
        t0 = time.monotonic()
        y = den.push(x)  # [C, m] numpy, as x; a long chunk goes through in pieces (bounded memory)
        self.metrics.compute_seconds.labels("stream").observe(time.monotonic() - t0)
        return y

    def _tail(self, den: StreamingDenoiser, cfg, n_in: int, n_out: int, name: str,
              doing: Callable[..., None]) -> pb.StreamDenoiseResponse:
        doing("running the model on the audio before the stream's end", model=True)
        y = den.finish()  # [C, rest] numpy, as the chunks
        self.metrics.audio_seconds.labels("StreamDenoise").inc(n_in / cfg.sample_rate)
        doing("encoding the answer to the audio before the stream's end")
        return self._chunk(y, cfg, n_in, n_out + y.shape[-1], name)

    def _next_message(self, feed: MessageFeed):
        """The stream's next message (None: the client half-closed), waited for in slices so that
        a drain's deadline is noticed; raises :class:`_StreamCut` at that deadline, or after
        ``--stream-idle-seconds`` without a message."""
        idle = self.config.stream_idle_seconds
        give_up = time.monotonic() + idle if idle else math.inf
        while True:
            if self.gate.streams_must_end():
                # What the client sent before the deadline is answered first, its half-close
                # included (a stream that had ended ends OK), waiting briefly for what is still on
                # its way: a bounded number, within the drain's grace, so a client that keeps
                # sending is still cut before the drain's own end. Once cut off (the drain is
                # over), none: each would still go through the model.
                if feed.taken_after_deadline < QUEUE_MESSAGES + 1 and not self.gate.cut_reason:
                    try:
                        msg = feed.next(timeout=min(DRAIN_POLL_SECONDS, self.gate.stream_grace_left()))
                        feed.taken_after_deadline += 1
                        return msg
                    except FeedTimeout:
                        pass
                raise self._drain_cut()
            left = give_up - time.monotonic()
            if left <= 0:
                with contextlib.suppress(FeedTimeout):  # one that arrived at the last moment
                    return feed.next(timeout=0)
                raise _StreamCut(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {idle:g} s: the stream was ended (--stream-idle-seconds), with the "
                    f"audio sent so far answered",
                )
            try:
                return feed.next(timeout=min(left, DRAIN_POLL_SECONDS))
            except FeedTimeout:
                continue

    def _drain_cut(self) -> _StreamCut:
        return _StreamCut(
            grpc.StatusCode.UNAVAILABLE,
            (f"{self.gate.cut_reason}; the audio it took before the cut-off was answered, none after" if self.gate.cut_reason else
             "the server is shutting down: the stream was ended at the end of its drain "
             "(--drain-seconds), with the audio sent so far answered; reconnect to another replica"),
            by_drain=True,
        )

    @staticmethod
    def _chunk(y: np.ndarray, cfg, n_in: int, n_out: int, name: str) -> pb.StreamDenoiseResponse:
        data = pcm_message(y, cfg.sample_rate, cfg.format).data
        return pb.StreamDenoiseResponse(audio=data, samples_in=n_in, samples_out=n_out, model=name)

    # ---- Decompose -------------------------------------------------------------------------------
    @_unary
    def Decompose(self, request: pb.DecomposeRequest, context) -> pb.DecomposeResponse:
        sm = self.store.decomposer(request.model)
        _note(model=sm.name)
        # the limits and messages `audioae decompose` has too (ValueError: INVALID_ARGUMENT)
        options = check_options(sm.model, group=request.group or "none",
                                groups=request.groups if request.HasField("groups") else None,
                                top_k=request.top_k,
                                fit_steps=request.fit_steps if request.HasField("fit_steps") else None)
        group, n_groups = options.group, options.groups
        units = sm.model.config.code_dim
        k = min(request.top_k or units, units if group == "none" else n_groups)

        def check_components(frames: int, channels: int, sr: int) -> None:
            size = 4 * k * channels * frames
            if size > MAX_COMPONENT_BYTES:
                raise Abort(
                    EXHAUSTED,
                    f"decomposing {frames / max(sr, 1):.1f} s of {channels}-channel audio at {sr} Hz into up "
                    f"to {k} components needs {size / 2**30:.1f} GiB for their waveforms, over this server's "
                    f"{MAX_COMPONENT_BYTES / 2**30:g} GiB: send shorter audio, ask for a smaller top_k, "
                    f"or group the units (group=band or cluster: {DEFAULT_GROUPS} components unless groups says)",
                )
            self._check_decompose_answer(sm, frames, channels, sr, k, group, request.return_components)

        wav, sr, _, warnings = self._audio(request.audio, sm.model.config.sample_rate, context, check=check_components)
        seconds = wav.shape[-1] / sr

        def run():  # stops between its stages once the call has ended (a minute's work held the device)
            return decompose(sm.model, wav, sr, **options.kwargs(), stop=job.abandoned.is_set)

        job = Job("decompose", seconds, fn=run)
        d, _ = self._wait(job, context)
        self.metrics.audio_seconds.labels("Decompose").inc(seconds)
        summary = summarize(d)  # what `audioae decompose` writes into summary.json, field by field
        resp = pb.DecomposeResponse(
            model=sm.name,
            frame_rate=float(d.frame_rate),
            activations=tensor_message(np.asarray(d.activations, np.float32)),
            group=summary["group"],
            fit_steps=summary["fit_steps"],
            residual_energy_share=summary["residual_energy_share"],  # None (a silent input) leaves it unset
            error_db=summary["error_db"],  # None (exact) leaves it unset
            sample_rate=summary["sample_rate"],
            channels=summary["channels"],
            samples=summary["samples"],
            groups=summary["groups"],  # None (group none) leaves it unset
            warnings=warnings,
        )
        for entry in summary["components"]:
            resp.components.add(
                label=entry["label"], units=entry["units"], energy_share=entry["energy_share"],
                dominant_hz=entry["dominant_hz"], active_fraction=entry["active_fraction"],
                active=[pb.Span(start=a, end=b) for a, b in entry["active_seconds"]],
                active_spans=entry["active_spans"],
            )
        # Checked before any work from a bound (_check_decompose_answer); here exactly, before the
        # waveforms are copied in: the answer so far and the bytes the waveforms will add.
        size = resp.ByteSize()
        if request.return_components:
            header = pb.Pcm(format=pb.FLOAT32, sample_rate=sr, channels=d.residual.shape[0]).ByteSize()
            # One waveform as a field: Audio {pcm: Pcm {data: [C, T] float32, ...}}, keys and lengths.
            wave = _field_bytes(_field_bytes(header + _field_bytes(4 * d.residual.size)))
            size += wave  # the residual
            for comp in resp.components:  # each component's waveform lengthens its Component too
                n = comp.ByteSize()
                size += _field_bytes(n + wave) - _field_bytes(n)
        if size > self.config.max_send_bytes:
            waves = ", their waveforms and the residual" if request.return_components else ""
            raise self._too_large(f"the answer (the activations and {len(d.labels)} components' summaries{waves}) "
                                  "would be", size, "float32 and summaries",
                                  "ask for a smaller top_k, group the units, or send shorter audio")
        if request.return_components:
            # Float32 PCM whatever the input's format: components + residual == input exactly.
            for comp, wave in zip(resp.components, d.components, strict=True):
                comp.audio.pcm.CopyFrom(pcm_message(wave, sr, pb.FLOAT32))
            resp.residual.pcm.CopyFrom(pcm_message(d.residual, sr, pb.FLOAT32))
        return resp

    def _check_decompose_answer(self, sm: ServedModel, frames: int, channels: int, sr: int, components: int,
                                group: str, waveforms: bool) -> None:
        """Refuse, before any work, a ``Decompose`` of ``frames`` at ``sr`` whose answer could not
        be sent: its activations are ``[units, N]`` float32, ``N`` the model's STFT frames of the
        audio at its own rate, whatever the caller's rate and channels; the summaries of up to
        ``components`` components (grouped by ``group``), counted at their largest
        (:func:`_summary_bytes`: up to 1.1 kB a component, 350 kB for the 320 units of
        decomposer-small); and with ``waveforms`` (``return_components``) the residual ``[channels,
        frames]`` float32 at the caller's rate, there however many components come. 200 s at 1 kHz,
        a 400 kB question, ran the whole job and then met gRPC's own "Sent message larger than
        max", the call counted OK. 5% of the limit is left for the rest of the answer. The length
        the message advises fits with ``components`` waveforms too; how many come is known only
        after the work (the answer's exact size is checked then: :meth:`Decompose`). Where not even
        the shortest audio the model takes (one analysis window) would fit, it says so."""
        if sr <= 0 or frames <= 0:  # the decode says what is wrong
            return
        c = sm.model.config
        units, msr = c.code_dim, c.sample_rate
        fixed = _TENSOR_HEADER + _summary_bytes(units, components, group)

        def size(t: int, waves: int) -> tuple[int, int]:
            n = sm.model.stft.num_frames(math.ceil(t * msr / sr))  # resampled as decompose() does
            return 4 * (units * n + waves * channels * t) + waves * _WAVE_HEADER + fixed, n

        limit = 0.95 * self.config.max_send_bytes
        waves = 1 if waveforms else 0  # the residual
        need, n = size(frames, waves)
        if need <= limit:
            return
        if waveforms:
            waves += components  # what fits, fits whatever comes
        per_sample = 4 * (units * msr / (sr * c.hop_length) + waves * channels)
        room = limit - fixed - waves * _WAVE_HEADER - 4 * units * 2  # a frame's slack for the rounding
        fit = max(0, int(room / per_sample))
        while fit > 0 and size(fit, waves)[0] > limit:
            fit -= max(1, math.ceil(c.hop_length * sr / msr))
        fit_s = max(fit, 0) / sr
        fit_s = math.floor(fit_s * 10) / 10 if fit_s >= 1 else math.floor(fit_s * 1000) / 1000
        residual = f" and its residual [{channels}, {frames}]" if waveforms else ""
        said = (f"decomposing {frames / sr:.1f} s of audio at {sr} Hz would answer activations of shape "
                f"[{units}, {n}]{residual}, and the summaries of up to {components} "
                f"component{'s' if components > 1 else ''}:")
        shortest = window_samples(c.n_fft, msr, sr)
        if math.floor(fit_s * sr + 1e-9) < shortest:  # "send at most 3 ms", then "too short to decompose"
            fewer = [what for what, helps in (
                ("ask for fewer components (a smaller top_k, or group=band or cluster)", components > 1),
                ("send fewer channels", waveforms and channels > 1)) if helps]
            raise self._too_large(
                said, need, "float32 and summaries",
                f"no audio fits under it at this rate, not even the shortest the model takes "
                f"({_took(shortest / sr)}, its analysis window): {', '.join(fewer) + ', or ' if fewer else ''}"
                f"have the server run with a larger --max-request-mb", say_source=False)
        with_them = (f" (with its residual and up to {components} component waveform{'s' if components > 1 else ''})"
                     if waveforms else "")
        raise self._too_large(
            said, need, "float32 and summaries",
            f"send at most {_took(fit_s)} of audio at this rate per call{with_them}", say_source=False)

    # ---- Encode / Decode -------------------------------------------------------------------------
    def _tensor(self, t, name: str) -> torch.Tensor:
        if t.datatype not in DATATYPES:  # before array_from_tensor, which quotes it whole
            raise Abort(INVALID, f"{name}: datatype {quoted(t.datatype)} is not one of {', '.join(DATATYPES)}")
        x = array_from_tensor(t, name)
        with np.errstate(over="ignore", invalid="ignore"):  # FP64 beyond float32's range turns Inf: refused below
            x32 = np.array(x, dtype=np.float32)
        if not np.isfinite(x32).all():  # one pass over a good tensor; the input itself only to say why
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise Abort(INVALID, f"{name}: contains NaN or Inf")
            # FP64 1e300 became Inf here and the answer was all NaN, OK
            raise Abort(INVALID, f"{name}: values up to {float(np.abs(x).max()):.3g} are beyond float32's range "
                                 f"({np.finfo(np.float32).max:.3g}), in which the model computes")
        return torch.from_numpy(x32)

    @staticmethod
    def _input_hint(sm: ServedModel) -> str:
        if sm.is_audio:
            c = sm.model.config
            what = "compressed STFT magnitudes" + (" + low-bin real/imag" if c.n_features != c.n_bins else "")
            return f"[B, {c.n_features}, N] {what} (N >= 1 frames)"
        return str(["B", *_item_shape(sm)]).replace("'", "")

    @staticmethod
    def _encodes_shape(sm: ServedModel, x: torch.Tensor) -> bool:
        """Whether ``x`` has a shape ``sm`` encodes, checked on the whole tensor before anything runs:
        the model's own check saw only the one-item probe of :func:`_answer_size`, and named its
        shape ("got [1]" for a tensor of [7]; a 1-D tensor for a vector model was INTERNAL, and
        [2, 64, 5] for a vector model of 64 was encoded, OK, as 10 vectors)."""
        if sm.is_audio:
            return x.dim() == 3 and x.shape[1] == sm.model.config.n_features and x.shape[2] >= 1
        return list(x.shape[1:]) == _item_shape(sm)

    @staticmethod
    def _check_pixels(sm: ServedModel, x: torch.Tensor) -> None:
        """An image model's pixels are [0, 1] grey levels, as reconstruct_image requires: 0..255
        levels gave a code of nonsense, OK."""
        if not _is_image(sm) or x.numel() == 0:
            return
        try:
            check_grey_levels(x, "the tensor", "send the levels divided by 255", sm.model.config.noise_std)
        except ValueError as exc:
            raise Abort(INVALID, f"model {sm.name!r} encodes images: {exc}") from None

    def _bounded(self, fn: Callable[[torch.Tensor], torch.Tensor], doing: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """``fn`` that first refuses an answer over this server's send limit. A 57 MB INT8 code
        decodes to 2.6 GB of float32 (12x the channels, 4x the bytes): it took 9.1 GB of memory
        and 39 s, then ended in protobuf's serialisation error (INTERNAL)."""

        def call(x: torch.Tensor) -> torch.Tensor:
            size, units = _answer_size(fn, x)
            limit = 0.95 * self.config.max_send_bytes
            if size > limit:
                per = "frames (batch x frames)" if x.dim() == 3 else "items"
                raise self._too_large(f"{doing} would answer", size, "float32",
                                      f"send at most {max(1, int(units * limit / size)):,} {per} per call",
                                      say_source=False)  # the count that fits says it all
            return fn(x)

        return call

    def _named(self, name: str, rpc: str) -> ServedModel:
        if not name:
            raise Abort(INVALID, f"{rpc} needs a model name; this server has: {', '.join(self.store.models)}")
        sm = self.store.get(name)
        _note(model=sm.name)
        refusal = sm.refusal(rpc)  # what ListModels's rpcs leave out (Decode of a max-unpooling model)
        if refusal is not None:
            raise Abort(INVALID, refusal)
        return sm

    @_unary
    def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        sm = self._named(request.model, "Encode")
        model, device = sm.model, sm.device
        which = request.WhichOneof("input")
        if which == "tensor":
            x = self._tensor(request.tensor, "tensor")
            if not self._encodes_shape(sm, x):
                raise Abort(
                    INVALID, f"model {sm.name!r} encodes {self._input_hint(sm)}, got shape {list(x.shape)}"
                )
            self._check_pixels(sm, x)
            seconds, warnings = 0.0, []
        elif which == "audio":
            if not sm.is_audio:
                raise Abort(
                    INVALID, f"model {sm.name!r} takes {self._input_hint(sm)}, not audio: send a tensor"
                )
            wav, sr, _, warnings = self._audio(request.audio, model.config.sample_rate, context)
            seconds = wav.shape[-1] / sr
            x = None
        else:
            raise Abort(INVALID, "Encode needs an input: set tensor or audio")

        @torch.inference_mode()
        def run() -> np.ndarray:
            inp = x
            if inp is None:  # audio: the features denoising feeds the network (quiet input lifted), channels as the batch
                inp = code_input(model, wav, sr)  # [C, F', N] at the model's rate, on its device
            inp = inp.to(device)
            doing = f"encoding a tensor of shape {list(inp.shape)}"
            h = _call_model(
                self._bounded(model.encode, doing), inp, doing,
                lambda exc: f"model {sm.name!r} cannot encode a tensor of shape {list(inp.shape)}; "
                f"it takes {self._input_hint(sm)} ({exc})",
                "send the values the model was trained on" + (" (compressed magnitudes are of order 1; Encode "
                                                              "computes them from audio)" if sm.is_audio else ""),
                OOM_ADVICE["Denoise"] if x is None else "send a tensor of fewer items (a smaller batch)",
            )
            return h.float().cpu().numpy()

        h, _ = self._wait(Job("encode", seconds, fn=run), context)
        return pb.EncodeResponse(model=sm.name, code=tensor_message(h), warnings=warnings,
                                 frame_rate=sm.code_frame_rate)  # None leaves it unset

    @_unary
    def Decode(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        sm = self._named(request.model, "Decode")
        model, device = sm.model, sm.device
        if not request.HasField("code"):
            raise Abort(INVALID, "Decode needs a code tensor")
        h = self._tensor(request.code, "code")
        code_dim = model.config.code_dim
        fits = ((h.dim() == 3 and h.shape[1] == code_dim and h.shape[2] >= 1) if sm.is_audio  # as Encode returns
                else list(h.shape[1:]) == [code_dim])
        if not fits:
            want = f"[B, {code_dim}, N] (N >= 1 frames)" if sm.is_audio else f"[B, {code_dim}]"
            raise Abort(INVALID, f"model {sm.name!r} decodes codes of shape {want}, as its Encode returns them, "
                        f"got shape {list(h.shape)}")

        @torch.inference_mode()
        def run() -> np.ndarray:
            doing = f"decoding a code of shape {list(h.shape)}"
            y = _call_model(
                self._bounded(model.decode, doing), h.to(device), doing,
                lambda exc: f"model {sm.name!r} cannot decode a code of shape {list(h.shape)} "
                f"(code_dim {model.config.code_dim}): {exc}",
                "send a code of the size its Encode returns",
                OOM_ADVICE["Decode"],
            )
            return y.float().cpu().numpy()

        y, _ = self._wait(Job("decode", 0.0, fn=run), context)
        return pb.DecodeResponse(model=sm.name, output=tensor_message(y))

    # ---- ListModels ------------------------------------------------------------------------------
    @_unary
    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[pb.ModelInfo(**m.info()) for m in self.store.models.values()],
            default_denoiser=self.store.default_denoiser,
            default_decomposer=self.store.default_decomposer,
        )
