"""The Ray Data engine (optional extra: ``pip install 'audioae[ray]'``).

The same job as the local engine, as a Ray Data pipeline::

    from_items(tasks)                      list of files (planned and resume-filtered by the driver)
    .map(_read_file)                       read: each file's bytes (long files: just the path)
    .map_batches(RayDenoiser, ...)         inference in an actor pool; each actor loads the model
                                           once, then denoises and writes every output atomically
    .iter_rows()                           the driver appends each result to the manifest

Actors call :class:`audioae.batch.process.FileDenoiser`, exactly as the local engine does, so
outputs are identical on CPU. Inputs and outputs must be on storage every node sees (the same
absolute paths); the model travels with the pipeline as bytes, so it needs no shared path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..audio import AudioError
from .interrupts import deaf_to_ctrl_c
from .isolated import Settings, run_marked
from .journal import Journal
from .manifest import FileResult
from .plan import FileTask
from .process import BATCH_FILES, BLOCK_SECONDS, SourceState, changed_error, made_from, source_state

log = logging.getLogger(__name__)

INSTALL_HINT = ("the ray engine needs Ray, an optional extra: pip install 'audioae[ray]' "
                "(or: pip install 'ray[data]>=2.9')")
INLINE_MAX_BYTES = 32 << 20  # larger files are not copied through the object store: actors stream them
# Files per map_batches call: on CPU a few (actors share the work evenly); on a GPU as many as
# one GPU batch holds (FileDenoiser batches them).
CPU_ROWS_PER_BATCH = 4
CONNECT_TIMEOUT_S = 5.0  # the TCP probe of --address before ray.init
# Loggers of Ray's whose warnings say nothing to a user of this engine (Ray 2.60's module names).
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress"
RAY_TOKEN_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
LOCAL = "local"  # ray.init's word for "start a new local Ray, even where a cluster is running here"


def require_ray():
    """Import Ray or fail with the command that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return ray


# Paths and messages travel through the pipeline as the file system's bytes (os.fsencode): Arrow
# columns are UTF-8, and a name that is not (a Latin-1 "caf\xe9.wav") made Ray Data fall back to
# pickling the column, with a warning from every stage.
def _read_file(row: dict, inline_max_bytes: int = INLINE_MAX_BYTES) -> dict:
    """The read stage: the file's bytes (when small enough) and its size and mtime as they were
    read (-1: none), or the error that prevented it."""
    row = dict(row)
    row["data"], row["inline"], row["read_error"] = b"", False, b""
    row["input_size"] = row["input_mtime_ns"] = -1  # an actor streaming the file records its own
    path = os.fsdecode(row["input"])
    before = source_state(path)
    if before is None:  # a broken link, a file gone: the actor's FileDenoiser says which
        return row
    if before.size <= inline_max_bytes:
        try:
            row["data"] = _read_unchanged(path, before)
        except (OSError, AudioError) as exc:
            row["read_error"] = os.fsencode(str(exc) if isinstance(exc, AudioError) else f"{path}: cannot read ({exc})")
            return row
        row["inline"] = True
        row["input_size"], row["input_mtime_ns"] = before
    return row


def _read_unchanged(path: str, before: SourceState) -> bytes:
    """The bytes of the file at ``path``, which was ``before`` when stat'ed; :class:`AudioError`
    (:func:`~.process.check_unchanged`'s words) where it was changed by the end of the read: a
    file still being copied or recorded was denoised for the part read, recorded as the whole."""
    with open(path, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    changed = changed_error(path, before, SourceState(st.st_size, st.st_mtime_ns))
    if changed is not None:
        raise changed
    return data


class RayDenoiser:
    """The actor of the inference stage: loads the model once, then denoises batches of rows.

    Files are marked in flight (:mod:`.journal`, in OUT on the shared storage); the marker of a
    file an actor finished stays until the driver has recorded it. Ray restarts an actor that
    dies and retries its batch; a file the dead actor was on is then denoised in a process of
    its own, so a file that crashes its decoder is reported instead of killing actor after actor."""

    def __init__(self, model_bytes: bytes, sha256: str, strength: float, device: str, threads: int,
                 block_seconds: float, journal: Journal):
        import torch

        from ..checkpoint import load_checkpoint
        from .process import FileDenoiser

        torch.set_num_threads(max(1, threads))
        self._tmp = tempfile.TemporaryDirectory()  # the model file, for the isolated processes too
        path = Path(self._tmp.name) / "model.safetensors"
        path.write_bytes(model_bytes)
        model = load_checkpoint(path, map_location=device, expected_sha256=sha256)
        self.den = FileDenoiser(model, strength, block_seconds=block_seconds)
        self.settings = Settings(str(path), sha256, device, strength, threads, block_seconds)
        self.journal = journal

    def __call__(self, batch: dict) -> dict:
        items, results = [], []
        read: dict[str, SourceState] = {}  # the files read as bytes: as they were read
        for i in range(len(batch["input"])):
            task = FileTask(*(os.fsdecode(bytes(batch[k][i])) for k in ("input", "output", "rel")))
            if batch["read_error"][i]:
                results.append(FileResult(task.input, task.output, "error", os.fsdecode(bytes(batch["read_error"][i]))))
            else:
                items.append((task, bytes(batch["data"][i]) if batch["inline"][i] else None))
                if batch["inline"][i]:
                    read[task.input] = SourceState(int(batch["input_size"][i]), int(batch["input_mtime_ns"][i]))

        def complete(r: FileResult) -> FileResult:
            if r.status == "ok" and r.input_size is None and r.input in read:  # denoised from the bytes read
                return dataclasses.replace(r, **made_from(read[r.input]))
            return r

        # The batch's results reach the driver together, and a stop before then loses them: each
        # file's marker keeps, once, what the line recorded from it must say (run_marked notes it).
        results.extend(run_marked(self.den, items, self.settings, self.journal, complete))
        return {
            "input": [os.fsencode(r.input) for r in results],
            "output": [os.fsencode(r.output) for r in results],
            "status": [r.status for r in results],
            "error": [os.fsencode(r.error) for r in results],
            "seconds": [float(r.seconds) for r in results],
            "duration": [math.nan if r.duration is None else float(r.duration) for r in results],
            "warning": [os.fsencode(r.warning) for r in results],
            "input_size": [-1 if r.input_size is None else r.input_size for r in results],
            "input_mtime_ns": [-1 if r.input_mtime_ns is None else r.input_mtime_ns for r in results],
        }


def _task_pool(ray, size: int) -> dict:
    """At most ``size`` concurrent tasks, in the spelling this Ray version understands."""
    if hasattr(ray.data, "TaskPoolStrategy"):
        return {"compute": ray.data.TaskPoolStrategy(size=size)}
    return {"concurrency": size}  # Ray < 2.4x


def check_address(address: str | None) -> None:
    """Refuse, before anything is written, an address this engine cannot use (``None``: the
    environment's RAY_ADDRESS, if any). Ray Client (``ray://``): Ray Data's executor does not run
    under it (Ray 2.60: every file failed with "'Worker' object has no attribute 'core_worker'").
    A URL (the dashboard's http://HOST:8265): --address wants the GCS's HOST:PORT."""
    where = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address == "auto":  # auto resolves to RAY_ADDRESS first: the same refusal for what it resolves to
        env = os.environ.get("RAY_ADDRESS")
        where, address = "--address auto resolves to RAY_ADDRESS", (env if env != "auto" else None)
    if not address or "://" not in address:
        return
    if address.startswith("ray://"):
        raise ValueError(f"{where} {address}: Ray Client (ray://) cannot run this job (Ray Data's pipeline needs a "
                         f"driver on the cluster). Run the command on a node of the cluster with --address HOST:PORT "
                         f"(the GCS address `ray start --head` prints, e.g. HEAD_IP:6379) or --address auto, or "
                         f"submit it from anywhere: ray job submit --address http://HEAD_IP:8265 -- audioae denoise ...")
    raise ValueError(f"{where} {address}: the cluster's GCS address is HOST:PORT (as `ray start --head` prints it, "
                     f"e.g. HEAD_IP:6379), not a URL; the dashboard's http://HOST:8265 is for `ray job submit`")


def check_request(address: str | None, device: str, gpus_per_worker: float) -> None:
    """Refuse, before anything is written, what the Ray engine cannot do as asked (run_denoise
    calls it)."""
    check_address(address)
    if device.startswith("cuda:"):  # the actor's cuda is the GPU Ray gave it (CUDA_VISIBLE_DEVICES)
        raise ValueError(f"--device {device}: on the Ray engine Ray assigns each actor its GPU(s); pass --device cuda")
    if device == "cpu" and gpus_per_worker > 0:  # the actors would have run on cuda, silently
        raise ValueError(f"--device cpu and --gpus-per-worker {gpus_per_worker:g} contradict each other: actors given "
                         f"GPUs run on them; drop one")


def _resolve_auto() -> tuple[str, str] | None:
    """``(HOST:PORT, where it was found)`` for ``auto``, as ray.init would resolve it: RAY_ADDRESS,
    else the cluster this machine last started with `ray start` (ray/ray_current_cluster under
    RAY_TMPDIR or /tmp). None where this Ray's private API differs (left to Ray). Without either,
    ray.init would join any Ray process it finds running here, another job's own local Ray
    included (gone when that job ends): refused. RAY_ADDRESS=auto counts as unset, as Ray takes it."""
    if os.environ.get("RAY_ADDRESS") not in (None, "", "auto"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    try:
        from ray._private.services import find_bootstrap_address

        recorded = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 (a private API: where it changed, ray.init resolves auto itself)
        return None
    if not recorded:
        raise RuntimeError("--address auto: no `ray start` cluster is recorded on this machine (ray_current_cluster); "
                           "name the cluster with --address HOST:PORT, or leave --address out for a local Ray of "
                           "the job's own")
    return recorded, "ray_current_cluster, the cluster this machine last started with `ray start`"


def _check_reachable(address: str | None) -> str | None:
    """Fail in seconds on a HOST:PORT nobody answers on: ray.init retries such an address for
    minutes. ``auto`` is resolved first (a head that was killed leaves its address in
    ray_current_cluster, and ray.init waited on it for minutes too); anything else not shaped
    HOST:PORT is left to Ray. Returns the address to give ray.init: for ``auto``, the one it
    resolved to (Ray 2.60's ray.init("auto") prefers a single gcs_server running here, another
    job's own local Ray included, to the recorded cluster)."""
    if not address or address == LOCAL:
        return address
    found = ""
    if address == "auto":
        resolved = _resolve_auto()
        if resolved is None:
            return address
        target, where = resolved
        found = f" (auto: {target}, from {where})"
        log.info("--address auto is %s, from %s", target, where)
    else:
        target = address
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return target
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RuntimeError(f"cannot reach the Ray cluster at {address!r}{found}: {exc.strerror or exc}") from exc
    return target


def _check_actor_fits(ray, threads: int, gpus_per_worker: float, *, autoscaled: bool,
                      gpu_flag: str = "--gpus-per-worker") -> None:
    """An actor asking for more CPUs or GPUs than any node has is never placed, and Ray Data
    waits for it forever. A local Ray cannot grow: refuse. A joined cluster may have an
    autoscaler that adds such a node: warn (whether it has one, Ray does not say reliably: a
    cluster started by hand with `ray start` has none, and the job then waits until stopped).
    ``gpu_flag``: what asked for the GPUs (``--device cuda`` asks for one per actor)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = {k: max((r.get(k, 0.0) for r in nodes), default=0.0) for k in ("CPU", "GPU")}
    if threads <= largest["CPU"] and gpus_per_worker <= largest["GPU"]:
        return
    msg = (f"each actor asks for {threads} CPU(s) (--threads) and {gpus_per_worker:g} GPU(s) "
           f"({gpu_flag}), but the largest node has {largest['CPU']:g} CPU(s) and "
           f"{largest['GPU']:g} GPU(s)")
    if not autoscaled:
        fixes = ["lower --threads"] if threads > largest["CPU"] else []
        if gpus_per_worker > largest["GPU"]:
            fixes.append("lower --gpus-per-worker" if gpu_flag == "--gpus-per-worker" else f"drop {gpu_flag}")
        raise RuntimeError(f"{msg}: no actor could ever start; {' or '.join(fixes)}")
    log.warning("%s: the actors wait until an autoscaler adds a node that large (a cluster without one, such as "
                "one started by hand with `ray start`, waits until the job is stopped)", msg)


AUTH_HINT = ("authentication failed (the cluster uses token authentication, and this job sent no token or "
             "another one). Give the job the cluster's token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> (or "
             "RAY_AUTH_TOKEN_PATH=<file holding it>) in its environment")


def _refused_token(exc: BaseException) -> bool:
    """Whether ray.init failed because the cluster wants a token this process did not send: Ray
    says so only in a cause of its "Failed to connect" (Ray 2.60: an AuthenticationError,
    InvalidAuthToken, as text in a RuntimeError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _start_or_join(ray, address: str) -> None:
    """ray.init: a new local Ray for :data:`LOCAL`, else the cluster at ``address`` (which
    :func:`check_address` passed), failing in words when it cannot be reached."""
    target = _check_reachable(address)
    # ray.init puts its own SIGTERM handler (sys.exit) in place of the caller's, which ends the
    # job as Ctrl-C does (audioae.cli): put the caller's back. A SIGTERM during ray.init met Ray's
    # (exit 15, not a word): it is handed to the caller's.
    caller = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    # A local Ray of the job's own turns on token authentication, and says so in a warning that
    # asks nothing of the user; Ray's other warnings stay.
    token_note = logging.getLogger(RAY_TOKEN_SETUP_LOGGER)
    level = token_note.level
    if address == LOCAL:
        token_note.setLevel(logging.ERROR)
    # Ray colours its actors' log prefixes; in a log file or a pipe that is raw escape codes.
    # (run_ray puts the variable back as it was once its Ray is shut down.)
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    try:
        ray.init(address=target, include_dashboard=False, logging_level=logging.WARNING)
    except SystemExit as exc:
        if exc.code != signal.SIGTERM or not callable(caller):
            raise
        if ray.is_initialized():
            ray.shutdown()
        handler, caller = caller, None  # in place now: it decides what a second SIGTERM does
        signal.signal(signal.SIGTERM, handler)
        handler(signal.SIGTERM, None)  # raises (the CLI's: as Ctrl-C); one that returns: as Ray's did
        raise
    except (ConnectionError, ValueError) as exc:
        if _refused_token(exc):
            raise RuntimeError(f"the Ray cluster at {address!r} refused this job: {AUTH_HINT}") from exc
        raise RuntimeError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    finally:
        token_note.setLevel(level)
        if caller is not None:
            signal.signal(signal.SIGTERM, caller)


def _forget_stopped(journal: Journal, todo: Sequence[FileTask], reported: set[str], suspects: set[str]) -> None:
    """The markers of the files the actors were on when the job was stopped on purpose: Ray ends
    its actors without unwinding them (the local engine's workers clear their own), and each such
    marker made its file a suspect, denoised alone by the next run for "a process died on it".
    ``suspects``: the files that were suspects before the job (an earlier job died on them): a
    marker of one the actors never reached is that death's, and stays."""
    for t in todo:
        if t.input not in reported and t.input not in suspects:
            journal.stopped(t.input)


def _warn_too_many_actors(ray, workers: int, threads: int, *, autoscaled: bool) -> None:
    """More actors than the CPUs hold: on a joined cluster the rest wait for an autoscaler; a
    local Ray cannot grow, so they never start (the job runs on those that fit)."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * threads <= cpus:
        return
    if autoscaled:
        log.warning("%d actors x %d CPUs asked of a cluster with %g CPUs: actors wait until an autoscaler "
                    "adds nodes", workers, threads, cpus)
    else:
        log.warning("%d actors x %d CPUs asked of this machine's local Ray, which has %g CPUs: only %d actor(s) "
                    "run; lower --workers or --threads", workers, threads, cpus, int(cpus // threads))


def _pipeline(ray, todo: Sequence[FileTask], *, model_bytes: bytes, sha256: str, journal: Journal, strength: float,
              workers: int, gpus_per_worker: float, threads: int, block_seconds: float):
    """The Ray Data pipeline of ``todo`` (read stage, then :class:`RayDenoiser` actors), not yet run."""
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    ds = ray.data.from_items([{"input": os.fsencode(t.input), "output": os.fsencode(t.output),
                               "rel": os.fsencode(t.rel)} for t in todo])
    # Reading is I/O: zero CPUs, so it never waits behind actors holding every CPU (with
    # num_cpus > 0 and workers x threads == the cluster's CPUs the pipeline would deadlock), and a
    # bounded number of concurrent reads, so it never floods the object store.
    ds = ds.map(_read_file, fn_kwargs={"inline_max_bytes": INLINE_MAX_BYTES}, num_cpus=0,
                **_task_pool(ray, min(len(todo), max(2, workers))))  # more than the files: Ray warns
    return ds.map_batches(
        RayDenoiser,
        fn_constructor_kwargs={"model_bytes": model_bytes, "sha256": sha256, "strength": strength,
                               "device": device, "threads": threads, "block_seconds": block_seconds,
                               "journal": journal},
        batch_size=BATCH_FILES if gpus_per_worker > 0 else CPU_ROWS_PER_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
        num_gpus=gpus_per_worker or None,
    )


def run_ray(todo: Sequence[FileTask], *, model_bytes: bytes, sha256: str, journal: Journal, strength: float = 1.0,
            workers: int = 1, address: str | None = None, gpus_per_worker: float = 0.0, threads: int = 1,
            block_seconds: float = BLOCK_SECONDS, device: str = "auto") -> Iterator[FileResult]:
    """Results for ``todo`` as the pipeline yields them. Joins the running Ray (the one this
    process already started, else ``address``, else ``RAY_ADDRESS``), or starts a local Ray of
    its own, refusing an address this engine cannot use (:func:`check_address`). Actors get
    ``gpus_per_worker`` GPUs each, or one with ``device`` cuda."""
    check_address(address)  # a string test: run_denoise made it too, before anything was written
    ray = require_ray()
    if not todo:
        return
    gpu_flag = "--gpus-per-worker" if gpus_per_worker else "--device cuda"
    gpus_per_worker = gpus_per_worker or (1.0 if device.startswith("cuda") else 0.0)
    # ray.init(address=None) joins RAY_ADDRESS when it is set (as `ray job submit` sets it): take
    # it as the address it is, so that an unreachable one fails in seconds, not after minutes of
    # Ray's retries, and a cluster joined that way is treated as one (it may autoscale). Without
    # either, "local": ray.init(address=None) would join any `ray start --head` cluster on this
    # machine (found in /tmp/ray/ray_current_cluster), not start the local Ray the docs promise.
    address = address or os.environ.get("RAY_ADDRESS") or LOCAL
    # What this job changes for its own run (Ray's log levels, the colour of its log prefixes),
    # put back as it was at its end: a script or a server may run other Ray work afterwards.
    quieted = {name: logging.getLogger(name).level for name in ("ray.data", RAY_DATA_PROGRESS_LOGGER)}
    color = os.environ.get("RAY_COLOR_PREFIX")
    started = False
    try:
        if not ray.is_initialized():
            _start_or_join(ray, address)
            started = True
        _check_actor_fits(ray, threads, gpus_per_worker, autoscaled=address != LOCAL, gpu_flag=gpu_flag)
        _warn_too_many_actors(ray, workers, threads, autoscaled=address != LOCAL)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one bar for the whole job
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset INFO chatter
        # Ray Data's word that its bars are off ("Progress bars disabled. To enable, ..."): they are off
        # on purpose. Only that module's warnings go; Ray Data's errors and other warnings still show.
        logging.getLogger(RAY_DATA_PROGRESS_LOGGER).setLevel(logging.ERROR)
        suspects = {t.input for t in todo if journal.why(t.input)}  # before any actor marks a file
        ds = _pipeline(ray, todo, model_bytes=model_bytes, sha256=sha256, journal=journal, strength=strength,
                       workers=workers, gpus_per_worker=gpus_per_worker, threads=threads, block_seconds=block_seconds)
    except BaseException:  # before the run loop (whose finally does the same): the job's own Ray is not left running
        if started:
            ray.shutdown()
        _restore(quieted, color)
        raise
    reported: set[str] = set()
    stopped = False
    try:
        try:
            for row in ds.iter_rows():
                duration, size = float(row["duration"]), int(row["input_size"])
                # the input as the actor opened it (read as bytes, or streamed): checked unchanged
                opened = made_from(None if size < 0 else SourceState(size, int(row["input_mtime_ns"])))
                result = FileResult(os.fsdecode(bytes(row["input"])), os.fsdecode(bytes(row["output"])),
                                    str(row["status"]), os.fsdecode(bytes(row["error"])), float(row["seconds"]),
                                    None if math.isnan(duration) else duration,
                                    warning=os.fsdecode(bytes(row["warning"])), **opened)
                reported.add(result.input)
                yield result
        except Exception as exc:  # noqa: BLE001 (the pipeline itself failed: an actor died, the cluster went)
            log.error("the Ray pipeline failed: %s", exc)
            msg = f"Ray pipeline failed before this file finished: {type(exc).__name__}: {str(exc)[:500]}"
            for t in todo:
                if t.input not in reported:
                    yield FileResult(t.input, t.output, "error", msg)
    # Stopped on purpose: Ctrl-C, SIGTERM, or the job stopped reading the results; also when the
    # signal lands in the handler above (a signal to the whole process group ends Ray's processes
    # with the driver, so the pipeline may fail first).
    except BaseException:
        stopped = True
        raise
    finally:
        # The markers first, then Ray: a signal to the whole process group takes Ray's own processes
        # too, and Ctrl-C pressed again landed in ray.shutdown, which then never marked them.
        if stopped:
            _forget_stopped(journal, todo, reported, suspects)
        if started:
            _shutdown(ray, stopped=stopped)
        _restore(quieted, color)


def _shutdown(ray, *, stopped: bool) -> None:
    """ray.shutdown; after a stop, deaf to further Ctrl-C (a repeated one broke off the shutdown,
    and Ray's atexit shutdown then printed a KeyboardInterrupt traceback and the job exited 1), and
    quiet about a Ray whose processes died with the signal: the job is already ending."""
    if not stopped:
        ray.shutdown()
        return
    with deaf_to_ctrl_c():  # shared with the local engine's pool (:mod:`.interrupts`)
        try:
            ray.shutdown()
        except Exception as exc:  # noqa: BLE001 (the stop that is under way is what the caller hears of)
            log.debug("ray.shutdown after a stop: %s", exc)


def _restore(levels: dict[str, int], color: str | None) -> None:
    """Put back the loggers' levels and RAY_COLOR_PREFIX as :func:`run_ray` found them."""
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    if color is None:
        os.environ.pop("RAY_COLOR_PREFIX", None)
    else:
        os.environ["RAY_COLOR_PREFIX"] = color
