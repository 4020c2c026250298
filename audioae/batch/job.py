"""A folder job end to end: plan, lock, resume, run an engine, record the manifest, summarize."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..audio import header_shapes
from ..checkpoint import CheckpointError, load_checkpoint, read_metadata, sidecar_sha256
from ..config import check_thread_count
from ..device import pick_device
from ..fileio import FolderHeld, atomic_write_text, hold_folder, holder_of
from ..isolation import ProcessDied, answering_worker, how_it_ended
from .interrupts import deaf_to_ctrl_c
from .journal import JOURNAL_NAME, Journal
from .manifest import (
    DUPLICATE,
    FOUND_BEFORE_ANY_RUN,
    FileResult,
    MadeWith,
    ManifestWriter,
    failed_last,
    previous_durations,
    previous_inputs,
    previous_settings,
    previous_warnings,
    read_manifest,
    summarize,
)
from .overwrite import OVERWRITE_NAME, OverwriteRun, begin, finished, overwrite_run, previous_runs, remade
from .plan import (
    CASE_PROBE_PREFIX,
    LOCK_NAME,
    MANIFEST_NAME,
    PART_SUFFIX,
    FileTask,
    SourceState,
    names_one_file,
    plan_tasks,
    remove_stale_parts,
    same_file,
    split_done,
)
from .process import BLOCK_SECONDS, made_from, not_attempted, source_state

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class DenoiseOptions:
    model: str | None = None  # shipped name or .safetensors path; None: the default denoiser
    strength: float = 1.0  # 1: the model's output; lower blends the input back in
    device: str = "auto"  # auto | cpu | cuda
    engine: str = "local"  # local | ray
    workers: int = 1  # local: processes; ray: actors
    address: str | None = None  # ray: HOST:PORT | auto; None: RAY_ADDRESS when set, else a local Ray
    gpus_per_worker: float = 0.0  # ray: GPUs per actor
    overwrite: bool = False  # redo outputs that already exist
    threads: int = 1  # torch threads per worker; the same count on both engines gives identical outputs
    block_seconds: float = BLOCK_SECONDS  # read size of the streaming path
    progress: bool = True  # a tqdm bar on stderr

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"--strength must be within [0, 1], got {self.strength}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.engine == "local" and (self.gpus_per_worker or self.address):  # would do nothing, silently
            flag = "--gpus-per-worker" if self.gpus_per_worker else "--address"
            raise ValueError(f"{flag} is for --engine ray; the local engine takes --device and --workers")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.engine == "local":  # a Ray actor's threads are checked against the cluster's nodes (ray_engine)
            check_thread_count(self.threads, "--threads")
        if self.block_seconds <= 0:
            raise ValueError("block_seconds must be positive")


def _resolve_model(spec: str | None) -> Path:
    from ..pretrained import DEFAULT_DENOISER, resolve, shipped

    if spec is None and DEFAULT_DENOISER not in shipped():
        raise CheckpointError(f"no --model given and the default model {DEFAULT_DENOISER!r} is not shipped "
                              f"with this install; pass --model PATH.safetensors")
    return resolve(spec)


def _check_model_denoises(ckpt: Path) -> None:
    """Refuse a model that cannot take audio (an image model would fail on every file), and warn
    about one trained on clean input (``corruption = "none"``: the decomposer, a plain
    autoencoder), which gives back its reconstruction, not a denoised copy; both before the job runs."""
    meta = read_metadata(ckpt)
    config = json.loads(meta["config"])
    if config.get("input") != "spectrogram":
        raise ValueError(f"{ckpt}: the {meta.get('registry_name', '?')} model takes {config.get('input', '?')} "
                         "input and cannot denoise audio; name a spectrogram model (audioae models lists them)")
    if config.get("corruption") == "none":
        log.warning("%s was trained without corruption (a plain autoencoder): its outputs are its "
                    "reconstructions of the inputs, noise included, not denoised copies", ckpt.name)


def _refuse_other_settings(done: Sequence[FileTask], made: dict[str, MadeWith], now: MadeWith, out: Path) -> None:
    """A rerun skips finished outputs; one that asks for another model or strength would
    silently keep outputs made the old way. Refuse it, before any work, and say what to do."""
    stale = [t for t in done if t.input in made and made[t.input].differs(now)]
    if not stale:
        return
    before = made[stale[0].input]
    precise = before.describe() == now.describe()  # they differ: say how, where the short form hides it
    raise ValueError(
        f"{out} already holds {len(stale)} output(s) made with other settings: {before.describe(precise)} "
        f"(e.g. {stale[0].rel}); this run asks for {now.describe(precise)}. A rerun skips finished outputs, so "
        f"they would stay as they were made: pass --overwrite to redo them, or choose another output folder")


def _engine_results(todo: Sequence[FileTask], opts: DenoiseOptions, ckpt: Path, data: bytes,
                    sha: str, journal: Journal) -> Iterator[FileResult]:
    # Checked against the .sha256 beside the checkpoint when there is one (as every load is);
    # workers then verify they load these same bytes.
    expected = sidecar_sha256(ckpt) or sha
    if opts.engine == "ray":
        from .ray_engine import run_ray

        load_checkpoint(ckpt, expected_sha256=expected)  # fail here, clearly, not in every actor
        yield from run_ray(todo, model_bytes=data, sha256=sha, journal=journal, strength=opts.strength,
                           workers=opts.workers, address=opts.address, gpus_per_worker=opts.gpus_per_worker,
                           device=opts.device, threads=opts.threads, block_seconds=opts.block_seconds)
        return
    from .local import run_local

    device = pick_device(opts.device)
    pooled = opts.workers > 1 and len(todo) > 1
    # A pool's workers load their own copies: the parent only checks the file (on CPU, so it
    # holds no GPU memory of its own).
    model = load_checkpoint(ckpt, map_location="cpu" if pooled else device, expected_sha256=expected)
    yield from run_local(todo, None if pooled else model, checkpoint=str(ckpt), sha256=sha, journal=journal,
                         device=str(device), strength=opts.strength, workers=opts.workers, threads=opts.threads,
                         block_seconds=opts.block_seconds)


def _refuse_in_a_starting_worker() -> None:
    """A script that calls run_denoise at its top level, without an ``if __name__ == "__main__":``
    guard, runs again in every process the job spawns as it starts (workers, the header reads of
    the progress bar, a file isolated after a crash). There it met the folder lock the script's own
    job held: with workers, every file failed with "no worker process could start (ProcessDied:
    its process exited with status 1)"."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # what multiprocessing itself checks
        raise RuntimeError("run_denoise was called while a process it spawned was starting: a script that "
                           "calls it runs again in each such process, so its call must sit under "
                           "if __name__ == \"__main__\":")


def run_denoise(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                options: DenoiseOptions = DenoiseOptions()) -> dict:
    """Denoise every input file (folders recursively) into ``out_dir``; returns the summary.

    Skips outputs that exist (unless ``overwrite``), never overwrites an input, never stops for
    a bad file, and records one manifest line per file in ``out_dir/audioae-manifest.jsonl``.
    """
    options.check()
    _refuse_in_a_starting_worker()
    if options.engine == "ray":
        from .ray_engine import check_request, require_ray

        require_ray()  # before anything is written: without Ray, say how to install it
        check_request(options.address, options.device, options.gpus_per_worker)
    else:
        pick_device(options.device)  # --device cuda without a GPU: refused before the folder is made
    left_out: list[tuple[str, str]] = []  # (path, why): what the job did not denoise, and no file's result says
    duplicates: list[tuple[str, str, str]] = []  # (a second name, the first, their output): denoised once
    tasks = plan_tasks(inputs, out_dir, left_out, duplicates)
    walked = len(left_out)  # the search's; what _run_in adds are inputs changed since their outputs
    ckpt = _resolve_model(options.model)
    _check_model_denoises(ckpt)
    data = ckpt.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    now = MadeWith(str(ckpt), sha, options.strength)
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(out, exc) from None
    t0 = time.perf_counter()
    results: list[FileResult] = []
    try:
        manifest = _run_in(out, tasks, options, ckpt, data, now, results, created, left_out, duplicates)
    except BaseException:
        if created and not results:  # e.g. a Ray cluster that cannot be reached: leave no folder
            _remove_unused(out)
        raise
    summary = summarize(results, time.perf_counter() - t0)
    # Of the skipped, files no run made (someone's, under outputs' names): not "already done".
    summary["skipped_found"] = sum(r.status == "skipped" and r.error == FOUND_BEFORE_ANY_RUN for r in results)
    # Of the failed, files passed over once a write had found the disk full (:func:`.process.no_room`).
    summary["not_attempted"] = sum(not_attempted(r) for r in results)
    # Left out (a folder that cannot be listed, a named pipe, an input changed since its output was
    # made): counted, not warnings alone, so that the job does not exit 0 as if it had done every file.
    summary["left_out"] = [{"path": path, "why": why} for path, why in left_out]
    # Of the skipped, inputs changed since their outputs were made: counted once, as left out, not
    # also as "already done".
    summary["skipped_changed"] = len(left_out) - walked
    # Second names of files done once: from their
    # results, as the "duplicate" count is, with what came of the first name ("status").
    of = {name: first for name, first, _ in duplicates}
    status = {r.input: r.status for r in results}
    summary["duplicates"] = [{"input": r.input, "of": of[r.input], "output": r.output,
                              "status": status.get(of[r.input], "")} for r in results if r.status == DUPLICATE]
    summary["manifest"] = str(manifest.path)
    summary["engine"] = options.engine
    return summary


def _cannot_create(out: Path, exc: OSError) -> OSError:
    """``exc``, met making the output folder ``out``, in words: a permission or a read-only mount,
    naming the folder that could not be written into (not a bare "[Errno 13] Permission denied:
    'ro/new'"); any other as it is."""
    where = Path(exc.filename or out).parent
    if isinstance(exc, PermissionError):
        return PermissionError(f"cannot create the output folder {out}: permission denied (this user may not write "
                               f"into {where}); choose another output folder")
    if exc.errno == errno.EROFS:
        return OSError(f"cannot create the output folder {out}: read-only file system ({where} is on a file system "
                       f"mounted read-only); choose another output folder")
    return exc


def _remove_unused(out: Path) -> None:
    """Remove the folder a run created and left empty but for its lock and an empty manifest."""
    for name in (LOCK_NAME, MANIFEST_NAME):
        with contextlib.suppress(OSError):
            if (out / name).stat().st_size == 0:
                (out / name).unlink()
    with contextlib.suppress(OSError):
        out.rmdir()  # only if nothing else is in it


def own_name_clash(rel: str) -> str:
    """What of the tool's own an output at ``rel`` (relative to OUT) would take the name of, or "".
    The job keeps these in OUT (a nested job's lock in a folder under it: :func:`_refuse_nested_jobs`);
    ``.NAME.part``: an output's temporary name (:func:`.plan.part_path`; :func:`.fileio.atomic_open`'s
    ``.NAME.XXXXXXXX.part``), which a rerun deletes as what a killed run left. Such an
    input is refused so that it is never denoised over the tool's file: an output named
    ``audioae-manifest.jsonl`` would break the folder for every later run. The job's check
    (:func:`_refuse_own_names`) is this one, with the clashing part's place in ``rel`` (:func:`_clash`); docs/batch.md names this function."""
    return _clash(rel)[1]


def _clash(rel: str) -> tuple[int, str]:
    """``(index of the clashing part of rel, what it clashes with)``, ``(-1, "")`` for none."""
    owned = {MANIFEST_NAME: "the manifest", LOCK_NAME: "the job's lock", OVERWRITE_NAME: "the --overwrite record",
             JOURNAL_NAME: "the folder of in-flight markers"}
    parts = Path(rel).parts
    for i, part in enumerate(parts):
        what = owned.get(part) or owned.get(part.casefold())  # casefold: a disk that ignores case
        if what:
            return i, f"{what} ({part})"
        if part.startswith(CASE_PROBE_PREFIX):
            return i, f"the probe that tells whether the disk ignores case ({part})"
    name = Path(rel).name
    if name.startswith(".") and name.lower().endswith(PART_SUFFIX):
        return len(parts) - 1, (f"{name}, the name of an output's temporary file, which a rerun deletes as a killed "
                                f"run's leftover")
    return -1, ""


def _refuse_own_names(tasks: Sequence[FileTask]) -> tuple[list[FileTask], list[FileResult]]:
    """``(tasks, refused)``: the tasks whose output takes a name of the tool's own
    (:func:`own_name_clash`) fail, each with its error, and nothing is written for them. The way
    out names what to rename: the input, or, where the clash is a folder a search went through
    (``in/audioae-manifest.jsonl/x.wav``), that folder, as the search found it: a link of that
    name is the one to rename (renaming its target would leave the link dangling and its files out
    of the job without a word)."""
    kept, refused = [], []
    for t in tasks:
        i, clash = _clash(t.rel)
        if not clash:
            kept.append(t)
            continue
        parts = Path(t.rel).parts
        if i < len(parts) - 1:  # a folder on the output's way, under the input folder it was found in
            fix = f"rename the folder {Path(t.folder, *parts[: i + 1])}"
        else:
            fix = "rename the input (e.g. to a name ending in .wav)"
        refused.append(FileResult(t.input, t.output, "error", f"{t.input}: not denoised, its output {t.rel} would "
                                  f"clash with a file the tool keeps in the output folder: {clash}; {fix} and "
                                  f"run again"))
    return kept, refused


def _refuse_nested_jobs(out: Path, tasks: Sequence[FileTask]) -> None:
    """Refuse a job whose outputs another running job may write too: one into a folder above
    ``out`` (``-o rec`` while another runs ``-o rec/day1``), or into a folder among ``out``'s
    outputs. Each held its own folder, and the two wrote the same .part files and failed each
    other's files ("cannot write the output (No such file or directory)")."""
    out = out.resolve()  # the tasks' outputs are resolved paths: a relative -o matched none of them
    # the folders between out and each output (one relative_to per file, not a scan of its parents)
    folders = {out / q for t in tasks for q in Path(t.output).relative_to(out).parents[:-1]}
    for folder in (*out.parents, *sorted(folders)):
        pid = holder_of(folder, LOCK_NAME)
        if pid is not None:
            where = "above" if folder in out.parents else "inside"
            raise FolderHeld(f"{folder} is being written by another audioae denoise job{f' (pid {pid})' if pid else ''}, "
                             f"and it lies {where} {out}, so the two would write the same files; wait for it to "
                             f"finish, or choose another output folder")


def _run_in(out: Path, tasks: Sequence[FileTask], options: DenoiseOptions, ckpt: Path, data: bytes,
            now: MadeWith, results: list[FileResult], created: bool = False,
            left_out: list[tuple[str, str]] | None = None,
            duplicates: Sequence[tuple[str, str, str]] = ()) -> ManifestWriter:
    """The job inside its locked folder; appends to ``results`` as files finish. ``created``: the
    job made ``out``, which it removes if it fails before any result (:func:`_remove_unused`).
    ``left_out``: where the inputs changed since their outputs were made are appended.
    ``duplicates``: :func:`.plan.plan_tasks`'s second names of files, each recorded as such once
    the job has its first name's result (:func:`_record_second_names`)."""
    # One job at a time per output folder: a second one would delete the first one's .part files.
    with hold_folder(out, LOCK_NAME, "another audioae denoise job"):
        _refuse_nested_jobs(out, tasks)
        fresh = not (out / MANIFEST_NAME).exists() and not (out / JOURNAL_NAME).exists()  # no job wrote here
        # Read once: a big job's manifest is long.
        earlier = read_manifest(out / MANIFEST_NAME)
        journal = Journal(out / JOURNAL_NAME, now)
        # Outputs an earlier run renamed into place but died before recording: their lines first,
        # so that they count as done, with what made them, in everything below.
        earlier.extend(dataclasses.asdict(r) for r in _record_finished(journal, out / MANIFEST_NAME))
        earlier = _records_follow_files(out / MANIFEST_NAME, earlier, tasks)
        tasks, refused = _refuse_own_names(tasks)
        remove_stale_parts(tasks)  # before outputs are asked for: a .part is never a finished output
        inputs_then = previous_inputs(earlier)
        run = None  # the --overwrite run this job makes outputs for
        if options.overwrite:
            run, todo, done = _overwrite_todo(out, tasks, earlier, now)
            changed: list[FileTask] = []
            journal.overwrite_run = run.id  # its markers say which run
        else:
            todo, done, changed = split_done(tasks, failed_last(earlier), inputs_then)
        others = _files_of_others(out, tasks, earlier, fresh, options.overwrite, done)
        made = previous_settings(earlier)
        _refuse_other_settings(done, made, now, out)
        if changed:
            log.warning("%d input(s) changed after their outputs were made (e.g. %s): skipped all the same, as every "
                        "output that exists is; pass --overwrite to redo them, or delete those outputs",
                        len(changed), changed[0].rel)
            if left_out is not None:
                left_out.extend((t.input, f"changed after its output {t.rel} was made; that output is kept as it "
                                          f"was (--overwrite redoes it)") for t in changed)
        changed_inputs = {t.input for t in changed}
        manifest = ManifestWriter(out / MANIFEST_NAME)
        durations, warnings = previous_durations(earlier), previous_warnings(earlier)
        runs = previous_runs(earlier)
        bar = Progress(todo, len(done), options.progress, journal=journal)
        completed = False  # every file has its result: the second names' lines can say what came of them
        try:
            if run is not None:  # before any output is replaced: a rerun after a stop goes on with this run
                begin(out, run)
            for r in refused:
                results.append(r)
                manifest.write(r)
            for t in done:
                before = made.get(t.input)
                if t.input in others:  # recorded as what it is, so that a later --overwrite is refused too
                    results.append(FileResult(t.input, t.output, "skipped", FOUND_BEFORE_ANY_RUN))
                else:
                    results.append(FileResult(t.input, t.output, "skipped", duration=durations.get(t.input),
                                              warning=warnings.get(t.input, ""), overwrite_run=runs.get(t.input, ""),
                                              **(dataclasses.asdict(before) if before else {}),
                                              **_source_of(t, inputs_then, changed_inputs)))
                manifest.write(results[-1])
            for r in _engine_results(todo, options, ckpt, data, now.sha256, journal):
                if r.status == "ok":  # its input_size and input_mtime_ns: as the engine opened it (checked unchanged)
                    r = dataclasses.replace(r, **dataclasses.asdict(now), overwrite_run=run.id if run else "")
                elif r.input in made and Path(r.output).is_file():  # failed, over an earlier run's output
                    r = dataclasses.replace(r, error=f"{r.error} (the output an earlier run made is left as it was)",
                                            **dataclasses.asdict(made[r.input]))
                results.append(r)
                manifest.write(r)
                if r.status == "ok":  # recorded: its marker, which said what made the output, can go
                    journal.ended(r.input)
                bar.advance(r)
            completed = True
        except BaseException:
            if created and not results and run is not None:  # its record goes with the folder, under the lock
                with contextlib.suppress(OSError):
                    (out / OVERWRITE_NAME).unlink()
            raise
        finally:
            with deaf_to_ctrl_c(not completed):  # a stopped job's records, not broken off by Ctrl-C pressed again
                bar.close()
                manifest.close()
                try:
                    _recorded_late(results, _record_finished(journal, manifest.path))
                except OSError as exc:  # e.g. the full disk that stopped the job: their markers stay, for the next run
                    log.warning("%s: outputs finished late not recorded (%s); the next run records them",
                                manifest.path, exc.strerror or exc)
                if completed:
                    _record_second_names(manifest.path, duplicates, results)
                _clear_completed(journal, results, tasks)
                manifest.compact()
        # Not reached when the job is stopped, nor called when a full disk passed files over: a
        # rerun of its --overwrite goes on from here. Files that failed were tried: that run finished.
        if not any(not_attempted(r) for r in results):
            finished(out)
    return manifest


def _overwrite_todo(out: Path, tasks: Sequence[FileTask], earlier: list[dict], now: MadeWith,
                    ) -> tuple[OverwriteRun, list[FileTask], list[FileTask]]:
    """``(run, todo, done)`` of an ``--overwrite`` job: every task to do, unless it goes on with a
    stopped run of the same settings (:mod:`.overwrite`), whose finished outputs are then done."""
    run, resumed = overwrite_run(out, now)
    kept = remade(run, tasks, earlier) if resumed else []
    if kept:
        log.warning("going on with the --overwrite run started %s UTC, which was stopped before it finished: the "
                    "%d output(s) it made (e.g. %s) are kept, the other files redone; to redo every file, delete %s "
                    "and run again", run.started, len(kept), kept[0].rel, out / OVERWRITE_NAME)
    keep = set(kept)
    return run, [t for t in tasks if t not in keep], kept


def _files_of_others(out: Path, tasks: Sequence[FileTask], earlier: list[dict], fresh: bool,
                     overwrite: bool, done: Sequence[FileTask]) -> set[str]:
    """The inputs whose output's name holds a file no run made, which may be someone's own: in a
    folder no job had written to (``fresh``: no manifest, no in-flight markers), every file there;
    later, those an earlier line says so of (:data:`FOUND_BEFORE_ANY_RUN`) while they are still
    there. ``--overwrite`` is refused over them (it replaced them without a word, and on the run
    after a first one skipped them), and a run that skips them says so. ``done``:
    :func:`.plan.split_done`'s, the tasks whose output is a file (a file under such a name counts
    as done, for its latest line is no error), so that no output is stat'ed twice; under
    ``--overwrite`` it asked none, and the outputs asked about are stat'ed here."""
    # Files only, as the rerun's split counts them: a folder under an output's name is no one's
    # output; its file fails, saying so (not counted here as skipped, then tried).
    latest = {} if fresh else {r["input"]: r for r in earlier}

    def said_so(t: FileTask) -> bool:
        return fresh or latest.get(t.input, {}).get("error") == FOUND_BEFORE_ANY_RUN

    taken = ([t for t in tasks if said_so(t) and os.path.isfile(t.output)] if overwrite
             else [t for t in done if said_so(t)])
    if not taken:
        return set()
    said = (f"{out} holds {len(taken)} file(s) under the names this job would write (e.g. {taken[0].rel}) "
            f"that no denoise run made")
    if overwrite:
        raise ValueError(f"{said}: --overwrite would replace them. Move or delete them, or choose another output "
                         f"folder")
    log.warning("%s: skipped, not denoised; if they are not denoised copies of the inputs, move them and run again",
                said)
    return {t.input for t in taken}


def _source_of(task: FileTask, recorded: dict[str, tuple[int, int]], changed: set[str]) -> dict[str, int]:
    """The input identity a skipped file's line carries: the one recorded with its output, or for
    an output recorded without one (by an older version) the input as it is now, unless it looks
    changed since (then it stays unrecorded, and is named again on the next rerun)."""
    then = recorded.get(task.input)
    if then is not None:
        return dict(zip(("input_size", "input_mtime_ns"), then, strict=True))
    return {} if task.input in changed else made_from(source_state(task.input))


def _records_follow_files(path: Path, earlier: list[dict], tasks: Sequence[FileTask]) -> list[dict]:
    """``earlier`` (the manifest's lines) with each planned output's record under the name this
    run plans it for, and the manifest rewritten once when any line changed. The record of an
    output follows the file it was made from: a line whose output is planned for another name of
    its input's file (a link to it, a hard link: :func:`.plan.names_one_file`) is renamed to that
    name, and that name's own ``duplicate`` lines, which say nothing of what made the output, go.

    Which of two names of a file is denoised is the one planned first (:func:`.plan.plan_tasks`),
    so it follows the order of the inputs. A rerun with the names swapped must find the record
    under the new first name: a "skipped" line that says nothing of what made the output would let
    another model pass unrefused (the output kept, "already done"), a changed input go unseen, and
    what a stopped --overwrite made be made again. Lines of older manifests that name an input by
    the file its link leads to (it is named by the link: :func:`.plan.found_at`) are renamed to
    the link too.
    Where the old name is gone (the input folder renamed, the first of two hard links deleted),
    which file it named cannot be asked: the record follows when the planned name has no record
    of its own and its file has the size and time recorded (:func:`_moved_here`), not left behind
    with the same "skipped" line as above.
    Where OUT itself has moved (the project folder renamed, moved or mounted elsewhere, the inputs
    with it or not), a line's output is not planned under its old name: it is matched by its path
    relative to OUT, where the manifest lives (:func:`_outputs_moved`), and follows there, its
    input as above, or a gone name where the planned name lies as it did under the input folder,
    which moved with OUT, whatever its size and time (:func:`_moved_along`). Left under
    the old names, the rerun's "skipped" line would say nothing of what made the output: another
    --strength would not be refused, nor a stopped --overwrite gone on with. A name whose only lines are such "skipped" ones
    (:func:`_says_nothing`) takes the record that follows it, which mends those manifests.
    Per line whose output is planned under another name: a stat of the two names, then, where
    the old name is gone, an lstat of it and a stat of the planned name."""
    planned = {t.output: t.input for t in tasks}
    inputs = set(planned.values())
    # names with records of their own
    recorded = {r["input"] for r in earlier if r.get("status") != DUPLICATE and not _says_nothing(r)}
    here = path.parent.resolve()
    moved = _outputs_moved(earlier, planned, here)
    inside = str(here).rstrip(os.sep) + os.sep
    kept, changed = [], False
    for r in earlier:
        if r.get("status") == DUPLICATE:
            if r["input"] in inputs:  # a first name now: the record carried to it is its latest line
                changed = True
            else:
                kept.append(r)
            continue
        output = r.get("output")
        elsewhere = output not in planned  # OUT moved: matched by its path relative to OUT
        output = moved.get(output) if elsewhere else output  # type: ignore[arg-type]
        name = planned.get(output) if output is not None else None
        if name is not None and (r["input"] == name or r["input"] not in inputs and (
                names_one_file(Path(name), Path(r["input"])) or (name not in recorded and _gone_name_is(
                    r, name, output[len(inside):] if elsewhere else None)))):
            changed = changed or (r["input"], r["output"]) != (name, output)
            r["input"], r["output"] = name, output
        kept.append(r)
    if changed:
        try:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        except OSError as exc:  # a full disk: this run reads them renamed all the same
            log.warning("%s: lines of files under other names not renamed (%s)", path, exc.strerror or exc)
    return kept


def _says_nothing(record: dict) -> bool:
    """A "skipped" line that says nothing of what made the output (no model, no error): what a
    rerun wrote of an output whose record it did not find (an older version's, in a moved project)."""
    return record.get("status") == "skipped" and not record.get("sha256") and not record.get("error")


def _outputs_moved(earlier: list[dict], planned: dict[str, str], out: Path) -> dict[str, str]:
    """Per output a line names that is not planned, the planned output at its path relative to the
    folder it was written in (the old OUT; ``out``: OUT now, resolved), where one is: the lines of
    an OUT that has moved. The old OUT is not recorded: it is the folder above the line's output
    that most lines agree on (``o/sub/x.wav`` may be ``sub/x.wav`` in ``o`` or ``x.wav`` in ``o/sub``
    when both are planned), where a line votes only for the readings its input bears out (the
    input's path ends with the output's relative path, as a folder search lays outputs out:
    :func:`_same_layout`); a line's own such reading wins a tie. OUT itself, a folder inside it and
    one above it are never taken: their lines' outputs would be planned under their own names.
    Lookups and string operations only, no file is asked: a line of an output in OUT now (an
    earlier job's, not planned this time) is passed over at once, for an OUT of many jobs has many."""
    here = str(out)
    inside = here.rstrip(os.sep) + os.sep  # "/" stays "/"
    by_rel = {output[len(inside):]: output for output in planned if output.startswith(inside)}
    depths = {rel.count(os.sep) + 1 for rel in by_rel}  # how many parts a planned relative path has
    deepest = max(depths, default=0)
    found: dict[str, list[tuple[str, str, bool]]] = {}  # output then: (its OUT then, output now, borne out)
    votes: dict[str, int] = {}
    for r in earlier:
        then = r.get("output")
        if not isinstance(then, str) or then.startswith(inside) or then in planned or then in found \
                or not os.path.isabs(then):
            continue
        found[then] = readings = []
        name = r.get("input")
        name = name if isinstance(name, str) else ""
        i = len(then)
        for parts in range(1, deepest + 1):  # the relative paths from the end, as long as a planned one
            i = then.rfind(os.sep, 0, i)
            if i <= 0:
                break
            if parts not in depths:
                continue
            rel = then[i + 1:]
            now = by_rel.get(rel)
            if now is None:
                continue
            root = then[:i]
            if root == here or root.startswith(inside) or inside.startswith(root + os.sep):
                continue  # OUT, a folder inside it, or one above it
            borne = _same_layout(name, rel)
            readings.append((root, now, borne))
            if borne:
                votes[root] = votes.get(root, 0) + 1
    # the most votes; then a reading the line's input bears out; then the longest relative path
    return {then: max(readings, key=lambda reading: (votes.get(reading[0], 0), reading[2], -len(reading[0])))[1]
            for then, readings in found.items() if readings}


def _same_layout(name: object, rel: str) -> bool:
    """Whether the input ``name`` ends with the output's path ``rel`` relative to its OUT: the
    layout a folder search gives (the input's path under its folder is the output's under OUT;
    a file named on its own has its name)."""
    return isinstance(name, str) and (name == rel or name.endswith(os.sep + rel))


def _gone_name_is(record: dict, name: str, rel: str | None) -> bool:
    """Whether ``record``'s input name is gone and its file is the one at ``name``: by its size and
    time (:func:`_moved_here`), or, where OUT has moved (``rel``: the output's path relative to
    OUT), by where it lies (:func:`_moved_along`)."""
    if os.path.lexists(record["input"]):
        return False
    return _moved_here(record, name) or rel is not None and _moved_along(record, name, rel)


def _moved_along(record: dict, name: str, rel: str) -> bool:
    """Whether the file ``record`` was made from, whose name is gone, is the one at ``name`` by
    where it lies: both names end with ``rel``, the output's path relative to OUT then and now
    (the same layout under the input folder, which moved with OUT). Its size and time are not
    asked: a copy that keeps no times (``cp -r``, rsync or scp without ``-t``/``-p``) and then
    the old copy deleted, or an input edited after the move, is still the file the record is of,
    and the rerun's check of the recorded size and time names it changed."""
    return _same_layout(record["input"], rel) and _same_layout(name, rel)


def _moved_here(record: dict, name: str) -> bool:
    """Whether the file ``record`` was made from, whose name is gone, is the one at ``name``, as
    far as a stat can tell: the size and modification time recorded."""
    if not isinstance(record.get("input_size"), int) or not isinstance(record.get("input_mtime_ns"), int):
        return False
    now = source_state(name)
    return now is not None and same_file(SourceState(record["input_size"], record["input_mtime_ns"]), now)


def _record_second_names(path: Path, duplicates: Sequence[tuple[str, str, str]], results: list[FileResult]) -> None:
    """Append to ``results`` and to the manifest at ``path`` a line for each second name of a file
    (``duplicates``: ``(name, first name, output)``), saying what came of the file under its first
    name, whose result ``results`` holds: written after the work, so that no line says "denoised
    once" of a file that failed or was refused."""
    latest = {r.input: r for r in results}
    found = [FileResult(name, output, DUPLICATE, f"the same file as {first} (a link or a hard link): "
                                                 f"{_what_came_of(latest.get(first))} under that name")
             for name, first, output in duplicates]
    results.extend(found)
    if not found:
        return
    writer = ManifestWriter(path)
    try:
        for r in found:
            writer.write(r)
    except OSError as exc:  # a full disk: the summary names them all the same; the next run records them
        log.warning("%s", exc.strerror or exc)
    finally:
        writer.close()


def _what_came_of(first: FileResult | None) -> str:
    """A second name's line: what its first name's result was, in words."""
    if first is None:  # not expected: every planned file has a result once the job completes
        return "not denoised, no result"
    return {"ok": "denoised once", "skipped": "skipped once, its output was there already",
            "error": "not denoised, it failed"}.get(first.status, first.status)


def _record_finished(journal: Journal, path: Path) -> list[FileResult]:
    """Append an ``ok`` line for each output renamed into place that the manifest does not
    record yet (its marker is still there: the job died between the rename and the line, or
    the result never reached it), with what the marker kept (:meth:`.Journal.finished_results`);
    then remove the marker.
    Without this a rerun found such an output, had no line for it, and recorded it "skipped"
    with empty settings."""
    found = list(journal.finished_results())
    if not found:
        return []
    writer = ManifestWriter(path)
    try:
        for r in found:
            writer.write(r)
            journal.ended(r.input)
    finally:
        writer.close()
    log.info("recorded %d output(s) finished by a run that was stopped before recording them", len(found))
    return found


def _recorded_late(results: list[FileResult], late: Sequence[FileResult]) -> None:
    """Put the results of files found finished at the end of a run in ``results``: in place of
    the error the driver recorded when it lost track of them (a Ray pipeline that failed after an
    actor had written them), or added when the run was interrupted before their results came."""
    by_input = {r.input: r for r in late}
    for i, r in enumerate(results):
        if r.input in by_input and r.status == "error":
            results[i] = by_input.pop(r.input)
    known = {r.input for r in results}
    results.extend(r for r in by_input.values() if r.input not in known)


def _clear_completed(journal: Journal, results: Sequence[FileResult], tasks: Sequence[FileTask]) -> None:
    """Forget the markers of skipped files (their outputs exist; a suspect's may have been written
    just before its process died), and those a stopped job flagged of inputs gone since
    (:meth:`.Journal.forget_gone`). The engines clear the markers of files that fail, the job those
    of the files it records: the markers left name the files a rerun must still isolate."""
    for r in results:
        if r.status == "skipped":
            journal.ended(r.input)
    journal.forget_gone({t.input for t in tasks})
    journal.tidy()


HEADER_BATCH = 256  # files per round trip to the process that reads the headers


def header_seconds(tasks: Sequence[FileTask], journal: Journal | None = None,
                   read: Callable[[list[str]], list] = header_shapes) -> dict[str, float]:
    """Each input's duration from its header; 0 for one whose header cannot be read (it fails fast).

    Read in a child process: libsndfile is C, and a header it crashes on must end that process,
    not the job. Such a file is marked in ``journal`` as one a process died on, so this job
    denoises it in a process of its own (:mod:`.isolated`) instead of dying on it in its own.
    ``read``: ``header_shapes`` (module level, so the child can import it; tests pass another)."""
    paths = [t.input for t in tasks]
    try:
        worker = answering_worker()
    except ProcessDied as died:  # no child process can start here: read them as before, in this one
        log.warning("cannot start a process to read the inputs' headers in (%s); reading them in this one", died)
        return _seconds(dict(zip(paths, read(paths), strict=True)))
    shapes: dict[str, tuple[int, int, int] | None] = {}
    try:
        for i in range(0, len(paths), HEADER_BATCH):
            batch = paths[i : i + HEADER_BATCH]
            try:
                shapes.update(zip(batch, worker.call(read, batch), strict=True))
                continue
            except ProcessDied:  # one of them killed it: find which, one file per call
                worker.close()
                worker = answering_worker()
            for path in batch:
                try:
                    shapes[path] = worker.call(read, [path])[0]
                except ProcessDied as died:
                    log.warning("%s: the process reading its header %s; the file will be denoised in a process "
                                "of its own", path, how_it_ended(died.exitcode))
                    if journal is not None:
                        journal.started(path, pid=worker.pid)  # left in place: a suspect for the engines
                    worker.close()
                    worker = answering_worker()
                    shapes[path] = None
    finally:
        worker.close()
    return _seconds(shapes)


def _seconds(shapes: dict[str, tuple[int, int, int] | None]) -> dict[str, float]:
    return {p: s[0] / s[2] if s is not None and s[2] > 0 else 0.0 for p, s in shapes.items()}


class Progress:
    """The job's bar on stderr (on a terminal only), in seconds of audio rather than files: a
    folder's recordings differ in length, and a bar counting files stalls on the one long one.
    Beside it, files done and the real-time factor. ``stream``: draw there even when it is not
    a terminal (tests). The real-time factor counts the audio denoised (:attr:`denoised`), not that
    of files that failed, which the bar passes all the same."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}{postfix}]"

    def __init__(self, todo: Sequence[FileTask], skipped: int, enabled: bool, stream=None,
                 journal: Journal | None = None):
        from tqdm import tqdm

        shown = enabled and (stream is not None or sys.stderr.isatty())
        # header reads only for a bar someone sees; a file whose header crashes is marked in ``journal``
        self.seconds = header_seconds(todo, journal) if shown else {}
        self.files, self.total_files, self.t0 = 0, len(todo), time.perf_counter()
        self.denoised = 0.0  # seconds of audio denoised: the real-time factor's
        self.desc = f"denoise ({skipped} done before)" if skipped else "denoise"
        self.bar = tqdm(total=round(sum(self.seconds.values()), 3), desc=f"{self.desc} (starting)",
                        bar_format=self.FORMAT, dynamic_ncols=True, disable=not shown, file=stream)

    def _start_clock(self, spent: float) -> None:
        """The bar's clock (its elapsed time, rate and ETA) from about when the first file started, ``spent``
        seconds before its result came: the engine's start-up (a Ray's, 20 s or more; workers')
        counted as work, and Ray's first ETA was minutes too long (00:23<16:08). The real-time
        factor, like the summary's, still counts from the job's start. About: a Ray actor's results
        come a batch at a time, and on CPU the rest of the first result's batch (up to
        :data:`.ray_engine.CPU_ROWS_PER_BATCH` - 1 files) ran after it, before its result came: the
        clock starts that much late."""
        start = time.time() - max(spent, 0.0)  # tqdm's clock is time.time
        self.bar.start_t = self.bar.last_print_t = start
        self.bar.set_description_str(self.desc, refresh=False)

    def advance(self, result: FileResult) -> None:
        if self.files == 0:
            self._start_clock(result.seconds)
        self.files += 1
        seconds = self.seconds.get(result.input, 0.0)
        # The total is rounded to 1 ms, the steps are not: never past the end (a total
        # that rounds down would end past it: tqdm's "clamping frac to range [0, 1]" and a negative ETA),
        # and the last file ends it exactly.
        left = max(self.bar.total - self.bar.n, 0.0)
        self.bar.update(left if self.files >= self.total_files else min(seconds, left))
        if result.status == "ok":  # a file that failed took its time, but nothing came of it
            self.denoised += result.duration if result.duration is not None else seconds
        speed = self.denoised / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.files}/{self.total_files} files, {speed:.0f}x real time")

    def close(self) -> None:
        if self.files == 0:  # the job ended before its first result: not "starting" on the last line left
            self.bar.set_description_str(self.desc, refresh=False)
        self.bar.close()
