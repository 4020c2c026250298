"""The ``audioae`` command. Thin: parse, call the library, print results for people.

Subcommands: train, models, examples, denoise, eval, decompose, inspect, images, serve, client.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from pathlib import Path

from . import __version__

log = logging.getLogger(__name__)


# ---- train -------------------------------------------------------------------------------------
def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _device(text: str) -> str:
    """argparse type of every --device: auto, cpu, cuda or cuda:N (whether torch sees that device
    is the command's to say: pick_device, once the command runs)."""
    from .config import DEVICE_NAMES

    if not re.fullmatch(DEVICE_NAMES, text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def _count(text: str) -> int:
    """argparse type: a whole number, 0 or more (0 meaning "all" where the help says so)."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _threads(text: str) -> int:
    """argparse type of a torch --threads: 0 (torch's default) up to the machine's cap (config.max_threads)."""
    from .config import check_thread_count

    value = _count(text)
    try:
        check_thread_count(value, "--threads")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--threads ")) from None
    return value


def _positive(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _float_seconds(text: str, unit: str = "seconds") -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds, 0 or more."""
    value = _float_seconds(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _positive_amount(text: str, unit: str = "seconds", short: str = "seconds") -> float:
    value = _float_seconds(text, unit)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be more than 0 {short}, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0 (a deadline)."""
    return _positive_amount(text)


def _positive_ms(text: str) -> float:
    """argparse type: a finite number of milliseconds above 0."""
    return _positive_amount(text, "milliseconds", "ms")


def _positive_mb(text: str) -> float:
    """argparse type: a finite number of MB above 0, checked here so that the error names the flag,
    not the client's max_message_mb."""
    return _positive_amount(text, "MB", "MB")


def _server_address(text: str) -> str:
    """argparse type: HOST:PORT with a port gRPC can reach (it takes 99999 as 99999 mod 65536, and
    a bare host as port 443), or a gRPC target with a scheme (``unix:/path``, ``dns:///h:p``)."""
    if text.startswith("unix:") or "://" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:50051), got {text!r}")
    if not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be within 1..65535, got {port}")
    return text


def _model_given(spec: str | None, option: str = "--model", served: bool = False) -> str | None:
    """``spec`` as given on the command line, None when it was not. An empty one is refused, not
    read as "not given": ``--model "$MODEL"`` with ``MODEL`` unset loaded the default model unsaid.
    ``served``: a name on a server (the client's), not a shipped model or a file here."""
    if spec == "":
        if served:
            raise ValueError(f"{option}: the model name is empty (an unset shell variable?); name a served model "
                             f"(audioae client models lists them), or omit {option} for the server's default")
        from .pretrained import empty_name_error

        raise ValueError(f"{option}: {empty_name_error()}")
    return spec


def _out_given(out: str | None, option: str, instead: str) -> str | None:
    """``out`` as given on the command line, None when it was not. An empty one is refused, not
    read as "not given": ``-o "$OUT"`` with ``OUT`` unset wrote to the default place unsaid, where
    ``-o ""`` of decompose and images report is refused (:func:`audioae.fileio.check_named`)."""
    if out == "":
        raise ValueError(f"{option}: the output path is empty (an unset shell variable?); {instead}")
    return out


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a spectrogram autoencoder from a TOML config",
                       description="Train from a TOML run config (see configs/) with section.key=value overrides. "
                                   "stderr gets a line for the resume and one per validation (step, scores "
                                   "beside the unprocessed input's, minutes), and a progress bar on a "
                                   "terminal; stdout the summary as JSON. For debug logging put the global -v "
                                   "before train: audioae -v train ...")
    p.add_argument("config", nargs="?", help="TOML file with [model], [data], [train] sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set train.steps=100 --set model.config.hidden=64")
    p.add_argument("--out", help="output folder (train.out_dir)")
    p.add_argument("--steps", type=int, help="train.steps")
    p.add_argument("--device", type=_device, help="auto | cpu | cuda[:N] (train.device)")
    p.add_argument("--no-resume", action="store_true", help="start over, removing the checkpoints and log of a run already in the folder")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .train import load_run_config, train

    if args.config is None and not args.overrides:  # no silent default run (1,000 steps into ./runs/default)
        raise ValueError("name a run config, e.g. audioae train configs/tiny-synthetic.toml (the example configs "
                         "are in the source repository's configs/: train from a checkout of it), or describe the "
                         "run with --set section.key=value")
    overrides = list(args.overrides)
    if _out_given(args.out, "--out", "name the run's folder, or omit --out for the config's train.out_dir"):
        overrides.append(f"train.out_dir={json.dumps(args.out)}")
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    run = load_run_config(args.config, overrides)
    # Progress for a person, on stderr also when it goes to a file (logging shows WARNING only).
    summary = train(run, resume=not args.no_resume, report=lambda line: print(line, file=sys.stderr, flush=True))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary, from rank 0
        print(json.dumps(summary, indent=2))
    return 0


# ---- models ------------------------------------------------------------------------------------
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered model families and the shipped models",
                       description="Without MODEL: the registered families and the shipped models. With "
                                   "MODEL: each checkpoint's description as JSON (family, size, latency, its whole "
                                   "config, what its training recorded, the versions that wrote it, sha256).")
    p.add_argument("model", nargs="*", metavar="MODEL", help="shipped model names or .safetensors paths")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from .models import REGISTRY, build_model
    from .pretrained import describe_checkpoint, describe_shipped

    if args.model:
        described = [describe_checkpoint(_model_given(spec, "MODEL")) for spec in args.model]
        print(json.dumps(described[0] if len(described) == 1 else described, indent=2))
        return 0
    families = []
    for name, fam in REGISTRY.items():
        m = build_model(name)
        families.append({"family": name, "summary": fam.summary, "input": m.config.input,
                         "default_parameters": m.num_parameters(),
                         "default_latency_ms": m.describe()["latency_ms"]})
    shipped = describe_shipped()
    if args.json:
        print(json.dumps({"families": families, "shipped": shipped}, indent=2))
        return 0
    print("Registered families (default config):")
    for f in families:
        lat = "offline" if f["default_latency_ms"] is None else f"{f['default_latency_ms']} ms"
        print(f"  {f['family']:<12} {f['input']:<12} {f['default_parameters']:>9,} params  {lat:<10} {f['summary']}")
    print("Shipped models:")
    if not shipped:
        print("  (none)")
    for s in shipped:
        lat = "offline" if s["latency_ms"] is None else f"{s['latency_ms']} ms"
        print(f"  {s['name']:<18} {s['family']:<11} {s['sample_rate'] or '-':>6} Hz  code {s['code_dim']:<4} "
              f"{s['parameters']:>9,} params  latency {lat}")
    # An installed user has no checkout's audioae/pretrained/ to look in (README's quick start).
    print(f"Shipped files: {_SHIPPED}: the models, their cards (.md), examples/ (noisy recordings: "
          f"`audioae examples` prints its path) and examples-clean/ (their clean speech)")
    return 0


# ---- examples ----------------------------------------------------------------------------------
# The installed package's own folder (site-packages/audioae, or a checkout's audioae/), found
# without importing torch: the client uses it too.
_PACKAGE = Path(__file__).resolve().parent
_SHIPPED = _PACKAGE / "pretrained"


def _add_examples(sub) -> None:
    p = sub.add_parser("examples", help="print the folder of the shipped example recordings",
                       description="Print the folder holding the shipped noisy example recordings (with --clean: "
                                   "their clean speech), wherever audioae is installed, e.g. audioae denoise "
                                   "\"$(audioae examples)\" -o cleaned. In a source checkout it is "
                                   "audioae/pretrained/examples.")
    p.add_argument("--clean", action="store_true",
                   help="the examples' clean speech instead (for audioae eval --clean)")
    p.set_defaults(func=_cmd_examples)


def _cmd_examples(args) -> int:
    folder = _SHIPPED / ("examples-clean" if args.clean else "examples")
    if not folder.is_dir():  # a package built without them: a path printed would fail later, unexplained
        raise ValueError(f"this installation of audioae has no {folder.name} folder ({folder} is missing); "
                         f"the wheel and the source repository ship them, a package built without its data "
                         f"files does not")
    print(folder)
    return 0


def _checkout_path_hint(argv: list[str], message: str) -> str:
    """README's ``audioae denoise audioae/pretrained/examples -o cleaned`` run outside a source
    checkout (audioae installed from a wheel): where this installation's copy of that path is."""
    for arg in argv:
        given = Path(arg.rpartition("=")[2])  # --clean=audioae/pretrained/examples-clean too
        if given.is_absolute() or given.parts[:2] != ("audioae", "pretrained") or os.path.lexists(given):
            continue
        installed = _PACKAGE.joinpath(*given.parts[1:])
        if str(given) in message and installed.exists():
            clean = " --clean" if given.parts[2:3] == ("examples-clean",) else ""
            return (f" ({given} is a path in a source checkout; this installation's copy is {installed}: "
                    f"`audioae examples{clean}` prints its folder)")
    return ""


# ---- subcommands owned by other modules register below (one function each) --------------------
# [denoise/eval]
def _add_denoise(sub) -> None:
    p = sub.add_parser(
        "denoise", help="denoise audio files and folders into an output folder",
        description="Denoise audio files (WAV/FLAC/OGG/MP3/AIFF/...) and folders (recursive) into OUT, keeping each file's "
                    "relative path, sample rate, channels and subtype. Resumable: existing outputs are "
                    "skipped. Writes OUT/audioae-manifest.jsonl; exits 1 if any file failed or was left out.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files and/or folders")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--model", help="shipped model name or .safetensors path (default: denoiser-small)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="1: full denoising; lower blends the input back in (an attenuation limit)")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local processes, or a Ray Data pipeline (pip install 'audioae[ray]')")
    p.add_argument("--workers", type=int, default=1, help="local: worker processes; ray: actors")
    p.add_argument("--address", help="ray: the cluster to join: HOST:PORT (its GCS, as `ray start --head` "
                                     "prints it), or auto (the one this machine last started with `ray start`). "
                                     "Not Ray Client's ray://: run on a cluster node or use `ray job submit`. "
                                     "Default: RAY_ADDRESS when set, else a new local Ray of this job's own. A "
                                     "cluster with token authentication needs RAY_AUTH_MODE=token and "
                                     "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="ray: GPUs per actor (default: 1 with --device cuda, else 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: scale with --workers)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_denoise)


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is (:func:`_terminate_as_interrupt`)."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, a scheduler's or systemd's stop) ends a folder job as Ctrl-C does: the
    workers stopped, the files under way marked, the manifest kept. Its default ended the process
    at once, and --workers' processes went on writing into the output folder."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM acts at once
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_denoise(args) -> int:
    from .batch import DenoiseOptions, run_denoise
    from .batch.plan import MANIFEST_NAME
    from .batch.process import NOT_ATTEMPTED

    opts = DenoiseOptions(model=_model_given(args.model), strength=args.strength, device=args.device,
                          engine=args.engine, workers=args.workers, address=args.address,
                          gpus_per_worker=args.gpus_per_worker, threads=args.threads, overwrite=args.overwrite,
                          progress=not args.no_progress)
    try:
        with _terminate_as_interrupt():
            s = run_denoise(args.inputs, args.out, opts)
    except KeyboardInterrupt as exc:  # "interrupted" alone left people unsure what a rerun would do
        manifest = Path(args.out) / MANIFEST_NAME
        if manifest.is_file():
            again = ("run the same command again to go on: the files finished are skipped" if not args.overwrite
                     else "run the same command again to go on: the outputs this --overwrite remade are kept, the "
                          "rest redone (without --overwrite, the older outputs not yet redone stay as they were)")
            exc.args = (f"{str(exc) or 'Ctrl-C'}; the outputs finished so far are complete and recorded in {manifest}; "
                        f"{again}",)
        raise
    wall = f"{s['wall_seconds']:.1f}" if s["wall_seconds"] >= 1 else f"{s['wall_seconds']:.2f}"  # not "in 0.0 s"
    speed = (f"{s['audio_seconds']:.1f} s of audio in {wall} s ({s['realtime_factor']}x real time, "
             f"engine {s['engine']})" if s["ok"] else f"nothing denoised (engine {s['engine']})")
    found = s.get("skipped_found", 0)
    theirs = f", {found} skipped (a file no run made under its output's name)" if found else ""
    passed = s["not_attempted"]
    unfit = f" ({passed} not attempted: the disk is full)" if passed else ""
    left = s.get("left_out", [])
    missed = f", {len(left)} left out" if left else ""
    done = s["skipped"] - found - s.get("skipped_changed", 0)  # a changed input is counted as left out alone
    twice = s.get("duplicates", [])
    again = f", {len(twice)} second name{'s' * (len(twice) != 1)} of a file (done once, under its first)" if twice else ""
    print(f"{s['files']} file{'s' * (s['files'] != 1)}: {s['ok']} denoised, {done} skipped (already "
          f"done){theirs}, {s['error']} failed{unfit}{missed}{again}; {speed}")
    last = None
    for err in s["errors"]:
        if err["error"].startswith(NOT_ATTEMPTED):  # said once, below: a line per file would repeat it for each
            last = err
            continue
        # Read errors name their file already; others (a rate that cannot be resampled) do not.
        named = err["error"].startswith(err["input"])
        print(f"  failed: {'' if named else err['input'] + ': '}{err['error']}", file=sys.stderr)
    if last is not None:
        print(f"  not attempted: {passed} file{'s' * (passed != 1)}, once a write had found the disk full "
              f"(e.g. {last['input']}: {last['error'].removeprefix(NOT_ATTEMPTED)}); each is in the manifest. Free "
              f"some space and run the same command again to denoise them", file=sys.stderr)
    for w in s["warnings"]:
        print(f"  warning: {w['warning']}", file=sys.stderr)
    for item in left:
        print(f"  left out: {item['path']}: {item['why']}", file=sys.stderr)
    came = {"ok": "denoised once to {}", "skipped": "skipped once, its output {} was there already",
            "error": "not denoised, it failed (above)"}  # what came of the file under its first name
    for item in twice:
        what = came.get(item["status"], item["status"]).format(item["output"])
        print(f"  second name: {item['input']}: the same file as {item['of']}, {what}", file=sys.stderr)
    print(f"manifest: {s['manifest']}")
    return 1 if s["error"] or left else 0  # left out: not denoised, as a failed file is not


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score enhanced files against clean ones (SI-SDR, PESQ, STOI)",
                       description="Pair files by relative path; per-file and mean SI-SDR, SI-SDR "
                                   "improvement (with --noisy), PESQ (wb) and STOI. Files instead of "
                                   "folders score one pair. A metric that cannot score a pair (too short, "
                                   "a silent reference) leaves it out of the mean, with a note. Exits 1 if "
                                   "a file on either side has no partner (a clean file without an enhanced "
                                   "one, an enhanced file without a clean one, a missing noisy file), "
                                   "could not be read, or no pair could be scored at all; 2 if nothing "
                                   "pairs.")
    p.add_argument("--clean", required=True, help="folder of clean references (or one file)")
    p.add_argument("--enhanced", required=True, help="folder of enhanced files, same relative paths (or one file)")
    p.add_argument("--noisy", help="folder of the noisy inputs (or one file), for the SI-SDR improvement")
    p.add_argument("--json", dest="json_out", metavar="OUT",
                   help="also write the report as JSON ('-': print only the JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)


def _check_json_out(path: str | None) -> None:
    """``--json FILE`` is written whole at the end: refuse a folder and an audio file name first
    (``--json refs/a.wav`` would replace a reference with the report)."""
    if path in (None, "-"):
        return
    from .audio import is_audio_name
    from .fileio import nearest_existing

    if os.path.isdir(path):
        raise ValueError(f"--json {path}: is a folder; name the JSON file to write, e.g. {os.path.join(path, 'scores.json')}")
    if is_audio_name(path):
        raise ValueError(f"--json {path}: refusing to write the report over an audio file name; name a .json file")
    # Before minutes of scoring, not after: the report is renamed into place in its folder,
    # which is made if new, so the nearest folder that exists must take new files.
    here = nearest_existing(Path(path).absolute().parent)
    if here.is_symlink() and not here.exists():
        raise ValueError(f"--json {path}: cannot write the report there ({here} is a link to nothing)")
    if not (here.is_dir() and os.access(here, os.W_OK | os.X_OK)):  # a file there takes no folder either
        raise ValueError(f"--json {path}: cannot write the report there ({here} takes no new files: "
                         f"read-only, or no permission)")


def _escaped(value):
    """``value`` (a report: dicts, lists, strings) with every name that is no UTF-8 on disk (Python
    holds its bytes as surrogates, "caf\\udce9.wav") written as stderr writes it (backslashreplace):
    printing one raised "'utf-8' codec can't encode character '\\udce9'" (exit 2, no table), and a
    JSON report with a lone surrogate is invalid Unicode to strict readers."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _cmd_eval(args) -> int:
    from .evaluate import evaluate_folders, format_table

    _out_given(args.json_out, "--json", "name the JSON file to write ('-': print the JSON), or omit --json")
    _check_json_out(args.json_out)
    report = _escaped(evaluate_folders(args.clean, args.enhanced, args.noisy, progress=not args.no_progress))
    if report["paired"] == 0:
        # name the ambiguity when there is one: it is why nothing pairs
        why = "".join(f"; several files stand for {rel}" for rel in report["ambiguous"])
        raise ValueError(f"no files of {args.enhanced} pair with {args.clean} by relative path{why}")
    text = json.dumps(report, indent=2)
    if args.json_out == "-":
        print(text)
    else:
        print(format_table(report))
        if args.json_out:
            from .fileio import atomic_write_text

            atomic_write_text(args.json_out, text + "\n")
            print(f"JSON: {args.json_out}")
    # An enhanced file without a clean one is a problem too: the folders were to match.
    problems = any(report[k] for k in ("errors", "missing_enhanced", "extra_enhanced", "missing_noisy", "ambiguous"))
    # not exit 0 under an all-dash table, which a script takes for a result; pairs of empty files alone are no failure
    if report["scored"] == 0 and report["paired"] > report.get("empty", 0):
        print(f"audioae eval: no pair could be scored (0 of {report['paired']}): "
              + ("see the errors and notes above" if args.json_out != "-" else "see errors and notes in the JSON"),
              file=sys.stderr)
        return 1
    return 1 if problems else 0


# [decompose/inspect]
DEFAULT_GROUPS = 8  # decompose.DEFAULT_GROUPS, spelt out: importing it here would load torch for --help


def _add_decompose(sub) -> None:
    p = sub.add_parser("decompose", help="split a recording into learned components that sum to it",
                       description="Write one WAV per component plus residual.wav (float WAVs: they add up to the "
                                   "input), activations.npy, summary.json and, with --plot, "
                                   "decomposition.png.")
    p.add_argument("file", help="input audio (WAV/FLAC/OGG/MP3/..., any rate, mono or multichannel)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--model", help="shipped model name or .safetensors path (default: decomposer-small)")
    from .decomposition_folder import DEFAULT_GROUP, DEFAULT_TOP_K  # no torch: the client's defaults too

    p.add_argument("--top", type=_count, default=DEFAULT_TOP_K,
                   help=f"keep the K strongest components, the rest join the residual (0: all; default {DEFAULT_TOP_K})")
    p.add_argument("--group", choices=("none", "band", "cluster"), default=DEFAULT_GROUP,
                   help=f"cluster: units that look and move alike; band: octave bands; none: one component per "
                        f"latent unit (default: {DEFAULT_GROUP})")
    p.add_argument("--groups", type=_positive, default=None,
                   help=f"number of bands or clusters (default {DEFAULT_GROUPS}, or the model's units where fewer): "
                        "about as many as the sources you expect; at most this many clusters come out, fewer "
                        "where fewer are distinct (clusters whose waveforms are nearly proportional, pieces of one "
                        "steady sound, are merged; one sound may still come out as several clusters)")
    p.add_argument("--fit", type=int, default=None, metavar="STEPS",
                   help="joint atom + code updates on this recording: purer components, ~8 ms per step "
                        "per 4 s of audio (0..100; default: the model's, 10 for decomposer-small; 0: fastest)")
    p.add_argument("--plot", action="store_true", help="also write decomposition.png")
    p.set_defaults(func=_cmd_decompose)


def _cmd_decompose(args) -> int:
    from . import decomposition_folder as folder
    from .audio import read_audio
    from .decompose import check_options, decompose, summarize
    from .pretrained import DEFAULT_DECOMPOSER, load, resolve

    _model_given(args.model)  # before the folder is claimed
    # Held from the checks to the last move: a second run into the folder is refused at once,
    # not after its work (and cannot delete this one's files half written).
    with folder.claim(args.out, [args.file], residual=True, figure=args.plot) as out:
        model = load(args.model, default=DEFAULT_DECOMPOSER)
        # the server's limits and messages, before the audio is read
        options = check_options(model, group=args.group, groups=args.groups, top_k=args.top, fit_steps=args.fit,
                                flags=True)
        wav, sr, _info = read_audio(args.file)
        dec = decompose(model, wav, sr, **options.kwargs())
        summary = summarize(dec)
        summary.update({"input": str(args.file), "model": str(resolve(args.model, DEFAULT_DECOMPOSER)),
                        "top": args.top or None})
        figure = None
        if args.plot:
            from .plots import plot_decomposition

            def figure(path: Path) -> None:
                plot_decomposition(dec, wav, sr, model, path)

        folder.write_folder(out, summary, dec.activations, dec.components, dec.residual, sr, figure=figure)
    print("\n".join(folder.describe(summary, out.path)))
    return 0


def _add_inspect(sub) -> None:
    from .inspection import INSPECT_SECONDS  # no torch: --help stays fast

    p = sub.add_parser("inspect", help="draw a decomposition model's dictionary, or what a denoiser does to a file",
                       description="A sparse_dict model: every atom of its learned dictionary. Any other "
                                   "spectrogram model with --audio FILE: the file's input and output "
                                   "spectrograms, the effective gain and the latent code over time, with "
                                   "the numbers behind them as JSON.")
    p.add_argument("model", nargs="?", help="shipped model name or .safetensors path (default: decomposer-small, "
                                            "or denoiser-small with --audio)")
    # --model too, as every other command spells it
    p.add_argument("--model", dest="model_flag", metavar="MODEL", help="the same as the positional MODEL")
    p.add_argument("--audio", help="a recording to show a denoiser's effect on (WAV/FLAC/OGG/MP3/...)")
    p.add_argument("--start", type=_seconds, default=0.0, help="with --audio: where the part shown begins (s)")
    p.add_argument("--seconds", type=_positive_seconds, default=INSPECT_SECONDS,
                   help=f"with --audio: how much is shown (default {INSPECT_SECONDS:.0f} s: a figure cannot show "
                        f"more, and 10 minutes take about 1.6 GB)")
    p.add_argument("-o", "--out", help="figure to write, in the format its extension names: .png, .pdf, .svg, "
                                       ".jpg, ... (default: <model>-dictionary.png or <audio>.<model>.png here, "
                                       "<model> a run's folder and file for its best, last or ema "
                                       "checkpoint (X.run1-best.png), "
                                       "or in OUT when it is a folder: a new name without an extension is one, made "
                                       "here); an existing file there must be such a "
                                       "figure")
    p.set_defaults(func=_cmd_inspect)


def _figure_path(out: str | None, default: str) -> Path:
    """Where inspect draws: ``-o FILE``, or ``default`` (inside ``-o`` when that is a folder), in
    the format the extension names. A figure never takes an audio file's name (``-o x.wav`` would
    replace a recording), nor replaces a file that is not a figure in that format (``-o mine.py``)."""
    from .audio import is_audio_name
    from .plots import check_figure_path

    path = Path(out or default)
    # "-o figs/" names a folder, made if new; so does a new "-o figs": a figure's name has an
    # extension
    if path.is_dir() or (out or "").endswith(("/", os.sep)) or (out and not path.suffix and not path.exists()):
        path = path / default
    if is_audio_name(path):
        raise ValueError(f"-o {path}: inspect draws a figure, not audio; name a .png file (or .pdf, .svg, ...)")
    try:
        check_figure_path(path)
    except ValueError as exc:
        raise ValueError(f"-o {exc}") from None
    return path


def _cmd_inspect(args) -> int:
    from .inspection import INSPECT_SECONDS, dictionary_text, inspect_denoising, inspect_dictionary
    from .models.base import SpectralAutoencoder
    from .models.sparse_dict import SparseDictionary
    from .pretrained import DEFAULT_DECOMPOSER, DEFAULT_DENOISER, load, resolve

    _model_given(args.model, "MODEL")
    _model_given(args.model_flag)
    _out_given(args.out, "-o", "name the figure file (or a folder for it), or omit -o for the default name "
                               "here")
    if args.model and args.model_flag and args.model != args.model_flag:
        raise ValueError(f"two models named: {args.model} and --model {args.model_flag}; name one")
    spec = args.model or args.model_flag  # neither is "" (refused above)
    if not args.audio and (args.start or args.seconds != INSPECT_SECONDS):
        raise ValueError("--start and --seconds pick the part of a recording shown: they go with --audio FILE")
    path = resolve(spec, DEFAULT_DENOISER if args.audio else DEFAULT_DECOMPOSER)
    model = load(str(path))
    name = path.name.removesuffix(".safetensors")
    if name in ("best", "last", "ema", "last.ema") and path.parent.name:
        # Every training run's files have these names: the run's folder tells two runs' figures apart
        # (each replaced the other's X.best.png).
        name = f"{path.parent.name}-{name}"
    if args.audio:
        if isinstance(model, SparseDictionary):  # its output is a reconstruction: components say more
            raise ValueError(f"{path}: --audio shows what a denoiser does; for a decomposition model's "
                             f"components of a recording run: audioae decompose {args.audio} -o DIR --plot")
        if not isinstance(model, SpectralAutoencoder):
            raise ValueError(f"{path}: --audio needs a spectrogram model, this is a {model.registry_name} model")
        out = _figure_path(args.out, f"{Path(args.audio).stem}.{name}.png")
        said = inspect_denoising(model, path, args.audio, out, args.start, args.seconds,
                                 note=lambda text: print(f"note: {text}", file=sys.stderr), flags=True)
        print(json.dumps(said, indent=2))
        return 0
    if not isinstance(model, SparseDictionary):
        raise ValueError(f"{path}: without --audio, inspect draws sparse_dict dictionaries; this is a "
                         f"{model.registry_name} model: add --audio FILE to see what it does to a recording "
                         f"(its config and training record: audioae models {spec})")
    out = _figure_path(args.out, f"{name}-dictionary.png")
    print(dictionary_text(inspect_dictionary(model, path, out)))
    return 0


# [images]
class _LazyEpilogParser(argparse.ArgumentParser):
    """A parser whose epilog ``epilog_from()`` makes when its help is shown: ``images report``'s
    lists ReportConfig's fields, and making it at every start would import torch for every command."""

    epilog_from = None

    def format_help(self) -> str:
        if self.epilog is None and self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


def _report_settings() -> str:
    from .images.experiments import settings_help

    return settings_help()


def _add_images(sub) -> None:
    p = sub.add_parser("images", help="the course's image autoencoders: train small models, write a report",
                       description="Image autoencoders on scikit-learn's digits and scikit-image's bundled "
                                   "photographs (nothing is downloaded). See docs/images.md.")
    isub = p.add_subparsers(dest="images_command", required=True, parser_class=_LazyEpilogParser)
    r = isub.add_parser("report", help="train the report's models; write report.png, report.json, summary.md, models/",
                        description="PCA against linear and convolutional autoencoders, codes as features, denoising,\n"
                                    "L1/L2 sparse codes, the three unpooling methods, generation.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)  # the settings' list, line by line
    r.epilog_from = _report_settings
    r.add_argument("-o", "--out", required=True, help="output folder")
    r.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of about 20 s with --threads 1, numbers meaningless")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ReportConfig field (the keys are listed below), e.g. --set digit_steps=3000 "
                        "--set 'code_sizes=[2,8,32]'")
    r.add_argument("--seed", type=int, help="random seed (split, initialisation, batches, corruptions)")
    r.add_argument("--threads", type=_threads, default=0, help="torch CPU threads; 0: torch's default")
    r.add_argument("--no-models", action="store_true", help="do not save the trained models")
    r.set_defaults(func=_cmd_images_report)


def _cmd_images_report(args) -> int:
    import torch

    from .config import parse_assignments, typed_fields
    from .fileio import check_output_folder
    from .images import ReportConfig, run_report

    check_output_folder(args.out, owns=lambda name: False)  # an existing file is refused before hours of work
    changes = typed_fields(ReportConfig, parse_assignments(args.overrides, example="digit_steps=3000"), "--set: ReportConfig")
    if args.seed is not None:
        changes["seed"] = args.seed
    cfg = ReportConfig.quick(**changes) if args.quick else ReportConfig(**changes)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        numbers = run_report(args.out, cfg, save_models=not args.no_models,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        # The run started: exit 1, as a denoise with failed files does; 2 is for what was refused before
        # any work (the settings, the output folder), and a diverged run said 2 as if it were a usage error.
        print(f"audioae images report: error: {exc}", file=sys.stderr)
        return 1
    print((Path(args.out) / "summary.md").read_text())
    print(f"wrote {args.out}/report.png, report.json, summary.md"
          + ("" if args.no_models else f" and {len(numbers.get('models', []))} models in {args.out}/models/"))
    return 0


# [serve/client]
def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the gRPC service (denoise, stream, decompose, encode/decode)",
        description="Serve models over gRPC (audioae.v1.AudioAE) with health, reflection, dynamic "
                    "batching, limits, optional bearer-token auth and TLS, and Prometheus metrics. "
                    "SIGTERM drains: NOT_SERVING, in-flight calls finish, then exit; a second signal stops at "
                    "once. See docs/serving.md.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 or :: every interface; IPv6 with or without brackets; "
                        "default: %(default)s)")
    p.add_argument("--port", type=int, default=50051, help="0: any free port (printed); default: %(default)s")
    p.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                   help="shipped names, .safetensors paths or NAME=PATH (default: the shipped denoiser "
                        "and decomposer)")
    p.add_argument("--device", type=_device, default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    p.add_argument("--max-batch-seconds", type=float, default=60.0,
                   help="channel-seconds of audio run together in one batch (0: no batching; default: %(default)g)")
    p.add_argument("--max-delay-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with (default: %(default)g)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request message, in MB (default: %(default)g)")
    p.add_argument("--max-audio-seconds", type=float, default=600.0,
                   help="longest clip (streams: --max-stream-seconds; default: %(default)g)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for the device; beyond it: RESOURCE_EXHAUSTED at once (default: %(default)s)")
    p.add_argument("--max-streams", type=int, default=32, help="concurrent StreamDenoise calls (default: %(default)s)")
    p.add_argument("--max-stream-seconds", type=float, default=0.0,
                   help="longest stream, its audio up to there answered (0, the default: no limit; a stream's "
                        "memory does not grow with its length)")
    p.add_argument("--stream-idle-seconds", type=float, default=60.0,
                   help="end a stream that sends no message for this long, freeing its --max-streams slot "
                        "(0: never; default: %(default)g)")
    p.add_argument("--token-file", help="require 'authorization: Bearer <token>' (tokens one per line)")
    p.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus /metrics on this HTTP port, not --port's (0: any free port; default: off)")
    p.add_argument("--drain-seconds", type=float, default=30.0,
                   help="SIGTERM or Ctrl-C: wait at most this long for calls in flight, then end them; a second "
                        "signal ends them at once (default: %(default)g)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0, the default: torch's own)")
    p.add_argument("--codec-workers", type=int, default=2,
                   help="processes that decode uploads and encode answers, so a codec crash ends one of "
                        "them, not the server (0: in the server's process; default: %(default)s)")
    p.add_argument("--codec-timeout", type=float, default=60.0,
                   help="seconds one decode or encode may take before its process is stopped and the call "
                        "refused (a decoder caught in a loop; the longest legitimate answer, 600 s of 48 kHz "
                        "stereo Ogg Vorbis, encodes in about 6.5 s; default: %(default)g)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from audioae.server import ServerConfig, serve

    for spec in args.models:
        _model_given(spec, "--models")
    logging.getLogger("audioae.server").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    for handler in logging.getLogger().handlers:  # a server's log is read later: each line says when
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    config = ServerConfig(
        host=args.host, port=args.port, models=tuple(args.models), device=args.device,
        max_batch_seconds=args.max_batch_seconds, max_delay_ms=args.max_delay_ms,
        max_request_mb=args.max_request_mb, max_audio_seconds=args.max_audio_seconds,
        max_queue=args.max_queue, max_streams=args.max_streams, max_stream_seconds=args.max_stream_seconds,
        stream_idle_seconds=args.stream_idle_seconds, token_file=args.token_file,
        tls_cert=args.tls_cert, tls_key=args.tls_key, metrics_port=args.metrics_port,
        drain_seconds=args.drain_seconds, torch_threads=args.threads, codec_workers=args.codec_workers,
        codec_timeout=args.codec_timeout)
    return serve(config, announce=lambda msg: print(f"audioae serve: {msg}", file=sys.stderr, flush=True))


def _connection_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every client call takes. They may come before the subcommand (``client
    --server H:P health``) or after it; only the first copy sets defaults, because argparse lets
    a subcommand's defaults overwrite what the parent parser read."""
    conn = argparse.ArgumentParser(add_help=False)

    def option(*names, default=None, **kw):
        conn.add_argument(*names, default=default if defaults else argparse.SUPPRESS, **kw)

    option("--server", type=_server_address, default="127.0.0.1:50051", metavar="HOST:PORT")
    option("--token-file", help="file holding the bearer token (its first; '#' lines and blanks skipped)")
    option("--tls-ca", help="PEM of the CA that signed the server's certificate (enables TLS)")
    option("--tls-server-name", help="expected name in the server's certificate")
    option("--timeout", type=_positive_seconds, help="deadline per call, seconds")
    option("--max-message-mb", type=_positive_mb, metavar="MB",
           help="largest message sent or received (default: what a server on its defaults may answer, 4x its "
                "default --max-request-mb)")
    return conn


def _add_client(sub) -> None:
    conn = _connection_options(defaults=False)
    p = sub.add_parser("client", parents=[_connection_options(defaults=True)],
                       help="call an audioae server: denoise, stream, decompose, models, health")
    csub = p.add_subparsers(dest="client_command", required=True)
    d = csub.add_parser("denoise", parents=[conn], help="denoise a file (same rate, channels, length)")
    d.add_argument("input")
    d.add_argument("-o", "--out", help=f"output file (default: INPUT.denoised.EXT beside it; {_HERE_IF_SHIPPED})")
    d.add_argument("--model", help="served model name (default: the server's denoiser)")
    d.add_argument("--strength", type=float, help="0..1 (default 1)")
    s = csub.add_parser("stream", parents=[conn], help="stream a file through StreamDenoise in chunks")
    s.add_argument("input")
    s.add_argument("-o", "--out", help=f"output file (default: INPUT.denoised.EXT beside it; {_HERE_IF_SHIPPED})")
    s.add_argument("--model", help="served model name (default: the server's denoiser)")
    s.add_argument("--strength", type=float)
    s.add_argument("--chunk-ms", type=_positive_ms, default=100.0, help="chunk length sent per message")
    c = csub.add_parser("decompose", parents=[conn], help="latent activations and component waveforms "
                        "(the files audioae decompose writes, but no figure: the answer has no atoms to draw)")
    c.add_argument("input", help="the recording to send (any format the server reads: WAV, FLAC, OGG, ...)")
    c.add_argument("-o", "--out", help="output folder (default: the input's name with .components in place of "
                   f"its extension, beside it: song.wav -> song.components/; {_HERE_IF_SHIPPED})")
    c.add_argument("--model", help="served model name (default: the server's decomposer)")
    # The local command's defaults, and Client.decompose's: the RPC's own (every unit, ungrouped)
    # can run to hundreds of component waveforms, over the answer limit for a few seconds of stereo.
    from .decomposition_folder import DEFAULT_GROUP, DEFAULT_TOP_K

    c.add_argument("--top-k", "--top", type=_count, default=DEFAULT_TOP_K,
                   help=f"components to return, the rest join the residual (0: all; default {DEFAULT_TOP_K})")
    c.add_argument("--group", choices=("none", "band", "cluster"), default=DEFAULT_GROUP,
                   help=f"grouping of latent units, as for audioae decompose (default: {DEFAULT_GROUP})")
    c.add_argument("--groups", type=_positive, default=None,
                   help="number of bands or clusters, as for audioae decompose (default 8)")
    c.add_argument("--fit", type=int, default=None, metavar="STEPS",
                   help="per-recording fit steps, as for audioae decompose (default: the model's; 0: fastest)")
    c.add_argument("--no-audio", action="store_true", help="activations and summary only, no waveforms")
    m = csub.add_parser("models", parents=[conn], help="list the served models")
    m.add_argument("--json", action="store_true")
    csub.add_parser("health", parents=[conn], help="print SERVING / NOT_SERVING (exit 0 when SERVING, 1 when not, "
                    "2 when the server cannot be reached)")
    p.set_defaults(func=_cmd_client)


_HERE_IF_SHIPPED = "in the current folder for an input inside the installed audioae package, such as its examples"


def _beside(path: str, name: str) -> str:
    """``name`` beside the input ``path``, the client's default output; in the current folder where
    ``path`` lies inside the installed audioae package (``audioae examples``): beside them it went into
    site-packages, and a later ``audioae denoise`` of the examples found one file more."""
    if Path(path).resolve().is_relative_to(_PACKAGE):
        return name
    return str(Path(path).with_name(name))


def _default_out(path: str, tag: str) -> str:
    p = Path(path)
    return _beside(path, f"{p.stem}.{tag}{p.suffix}")


def _cmd_client(args) -> int:
    import grpc

    from .client import DEFAULT_MESSAGE_MB, Client, read_tokens, unavailable_source

    # Before anything is read or sent. Not given is None; given empty is refused.
    _model_given(getattr(args, "model", None), served=True)
    _out_given(getattr(args, "out", None), "-o", "name the output, or omit -o for the default beside the input")
    token = read_tokens(args.token_file)[0] if args.token_file else None  # the server's own parser
    mb = DEFAULT_MESSAGE_MB if args.max_message_mb is None else args.max_message_mb
    client = Client(args.server, token=token, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name,
                    timeout=args.timeout, max_message_mb=mb)
    try:
        return _client_call(args, client)
    except grpc.RpcError as exc:
        details, hint = exc.details() or "", ""
        # gRPC's own words, or the server's: a drain's UNAVAILABLE is an answer, not "could not be reached"
        source = unavailable_source(details) if exc.code() == grpc.StatusCode.UNAVAILABLE else "server"
        # docs/serving.md: a stream that fails keeps none of what was answered before it failed
        unwritten = f"; nothing was written to {_stream_output(args)}" if args.client_command == "stream" else ""
        if source == "closed":
            # A server that stopped mid-call (killed, restarted) says the same as a TLS server to a
            # plain client: name both, not "pass --tls-ca" alone.
            tls = "" if args.tls_ca else "; or, if it uses TLS, pass --tls-ca"
            hint = f" (the connection closed: the server stopped or restarted during the call, try again{tls})"
        elif exc.code() == grpc.StatusCode.UNAVAILABLE and "connection refused" in details.lower():
            hint = " (nothing listens there: start audioae serve, or pass the --server HOST:PORT it printed)"
        elif exc.code() == grpc.StatusCode.UNAVAILABLE and "parsing http/2" in details.lower():
            hint = (" (what answers there does not speak gRPC: an HTTP server, such as the metrics port? "
                    "audioae serve prints the port it serves on)")
        own = re.search(r"CLIENT: (Sent|Received) message larger than max \((\d+) vs\. \d+\)", details)
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and own:
            # gRPC's own refusal, in this process, not the server's answer
            size = f"{int(own[2]) / 2**20:.1f} MB"
            if own[1] == "Sent":
                raise RuntimeError(f"the request is {size}, over this client's --max-message-mb {mb:g}: raise it "
                                   f"(the server's --max-request-mb must allow it too); nothing was sent") from None
            raise RuntimeError(f"the server's answer is {size}, over this client's --max-message-mb {mb:g}: "
                               f"raise it{unwritten}") from None
        # gRPC's UNAVAILABLE and deadline when nothing answered are the client's own verdicts: not the server's
        said = {"closed": "closed the connection", "unreached": "could not be reached"}.get(source, "answered")
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":  # not a server's message
            said = "gave no answer in time"
            hint = f" (--timeout {args.timeout:g} s)" if args.timeout else ""
        raise RuntimeError(f"server {args.server} {said} ({exc.code().name}): {details}{hint}{unwritten}") from None
    finally:
        client.close()


def _denoised_out(args) -> str:
    """Where ``client denoise``/``stream`` write: ``-o``, else the input's name with ``.denoised``."""
    return args.out or _default_out(args.input, "denoised")


def _stream_output(args) -> str:
    """The file ``client stream`` writes (the input's name inside an existing folder ``-o``)."""
    from .fileio import output_file

    out = _denoised_out(args)
    try:
        return str(output_file(args.input, out))
    except ValueError:  # -o is the input: refused before anything is written
        return out


def _check_served_model(client, cmd: str, name: str) -> None:
    """Before ``client denoise`` or ``client stream`` sends audio, from one ListModels call (made for
    a named model, and for every stream): a model that cannot stream (``name`` "": the server's
    default denoiser) is refused in the CLI's words, where the server's message names its RPC
    ("use Denoise") for API users; so is ``client denoise`` of a model the server does not denoise with
    (a decomposition model, whose output would be its reconstruction of the input, noise included:
    ``audioae denoise`` warns of it locally, the server refuses it)."""
    info = client.list_models()
    served = {m["name"]: m for m in info["models"]}
    target = name or info["default_denoiser"]
    rpc = "StreamDenoise" if cmd == "stream" else "Denoise"
    if target in served and rpc not in served[target]["rpcs"]:
        rpcs = served[target]["rpcs"]
        able = ", ".join(n for n, m in served.items() if rpc in m["rpcs"]) or "none"
        if "Denoise" in rpcs:
            why = "cannot stream (it is not causal): `audioae client denoise` takes the whole file at once"
        elif "Decompose" in rpcs:  # the server refuses it: `audioae denoise` only warns, locally
            why = ("is a decomposition model: its output would be its reconstruction of the input, noise included, "
                   "not a denoised copy (`audioae client decompose` splits a file with it)")
        else:
            why = f"does not denoise audio (it serves {', '.join(rpcs)})"
        raise ValueError(f"model {target!r} {why}; the models this server {'streams' if cmd == 'stream' else 'denoises'} "
                         f"with (--model): {able}")


def _client_call(args, client) -> int:
    from . import decomposition_folder as folder
    from .client import save_decomposition

    cmd = args.client_command
    source = getattr(args, "input", None)
    model = getattr(args, "model", None) or ""  # the request's "" asks for the server's default
    if source is not None and not Path(source).is_file():  # one message for every subcommand, before the call
        raise ValueError(f"{source}: {'is a folder; name an audio file' if Path(source).is_dir() else 'no such file'}")
    if cmd in ("denoise", "stream") and args.out and args.out.endswith(("/", os.sep)) and not os.path.isdir(args.out):
        # a folder that is not there (cp refuses it too); was "audio is written as .wav, ...; got no extension"
        raise ValueError(f"-o {args.out}: no such folder; make it first (the output goes into it under the input's "
                         f"name), or name the output file")
    if cmd == "stream" or (cmd == "denoise" and model):
        _check_served_model(client, cmd, model)
    if cmd == "denoise":
        out = _denoised_out(args)
        r = client.denoise_file(args.input, out, model=model, strength=args.strength)
        print(f"{args.input} -> {r['output']} (model {r['model']}, queue {r['queue_ms']} ms, "
              f"compute {r['compute_ms']} ms, batch of {r['batch_size']})")
    elif cmd == "stream":
        out = _denoised_out(args)
        r = client.stream_file(args.input, out, chunk_ms=args.chunk_ms, model=model,
                               strength=args.strength)
        print(f"{args.input} -> {r['output']} ({r['frames']} frames at {r['sample_rate']} Hz, streamed)")
    elif cmd == "decompose":
        out = args.out or _beside(args.input, Path(args.input).with_suffix(".components").name)
        # checked and held before the call, not after
        with folder.claim(out, [args.input], residual=not args.no_audio) as held:
            res = client.decompose(Path(args.input).read_bytes(), model=model, top_k=args.top_k,
                                   group=args.group, components=not args.no_audio, fit_steps=args.fit,
                                   groups=args.groups)
            summary, _ = save_decomposition(res, held, source=args.input, top=args.top_k or None)
        print("\n".join(folder.describe(summary, out)))
    elif cmd == "models":
        info = client.list_models()
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        for mi in info["models"]:
            rate = f"{mi['sample_rate']} Hz" if mi["sample_rate"] else "-"
            kind = "causal" if mi["causal"] else "offline"
            print(f"  {mi['name']:<20} {mi['family']:<11} {mi['input']:<12} {rate:>9}  "
                  f"code {mi['code_dim']:<4} {mi['parameters']:>9,} params  {kind:<7}  {' '.join(mi['rpcs'])}")
        print(f"default denoiser: {info['default_denoiser'] or '-'}; "
              f"default decomposer: {info['default_decomposer'] or '-'}")
    elif cmd == "health":
        status = client.health()
        print(status)
        return 0 if status == "SERVING" else 1
    return 0


COMMANDS = [_add_train, _add_models, _add_examples, _add_denoise, _add_eval, _add_serve, _add_client, _add_images,
            _add_decompose, _add_inspect]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audioae", description="Denoise speech, split recordings into learned components and serve both over "
        "gRPC with small spectrogram autoencoders; train your own. `audioae COMMAND --help` for each command.",
        epilog="Start with: audioae denoise audioae/pretrained/examples -o cleaned (in a source checkout; "
               "installed from a wheel: audioae denoise \"$(audioae examples)\" -o cleaned)")
    parser.add_argument("--version", action="version", version=f"audioae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    _name_subcommands(parser)
    return parser


def _name_subcommands(parser: argparse.ArgumentParser) -> None:
    """Each subcommand slot named by its choices, as the usage line shows them: a missing one was
    "the following arguments are required: images_command", the slot's internal name."""
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            if action.metavar is None:
                action.metavar = "{" + ",".join(action.choices) + "}"
            for sub in action.choices.values():
                _name_subcommands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A crash inside a C library (a codec on a malformed file) then leaves the Python stack of every
    # thread on stderr, which names what was running (the RPC, the folder job's step), not a bare
    # "Segmentation fault".
    if not faulthandler.is_enabled():  # (python -X faulthandler, pytest: already on)
        with contextlib.suppress(ValueError, OSError):  # a stderr that is no file (embedded): no stack then
            faulthandler.enable()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {str(exc) or 'Ctrl-C'}", file=sys.stderr)  # SIGTERM's says "SIGTERM"
        return 128 + getattr(exc, "signum", signal.SIGINT)  # as a shell reports a command killed by it
    except BrokenPipeError:  # `audioae models --json | head`: the reader left; say nothing more
        # Python flushes stdout again at exit and would report the broken pipe there; point it at
        # devnull first (the recipe in the signal module's documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except (ValueError, OSError, RuntimeError, FloatingPointError) as exc:
        # Library errors carry messages meant for people (AudioError, CheckpointError, config errors),
        # and so do the system's (a full disk, a permission: "[Errno 28] No space left on device: ...").
        hint = _checkout_path_hint(sys.argv[1:] if argv is None else argv, str(exc))
        print(f"audioae {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 2


def _exit_at_once(signum, _frame) -> None:
    os._exit(128 + signum)  # as a shell reports a command killed by it


def run() -> None:
    """The ``audioae`` command: pyproject's console script, ``python -m audioae`` and ``python -m
    audioae.cli``. :func:`main`, then the process leaves, and a Ctrl-C while it leaves (a second
    press after an interrupted job, as people press it; torch's or Ray's exit handlers, which may
    take a while or hang) ends it at once, exit 130, without a traceback: the default broke off an
    exit handler with a KeyboardInterrupt traceback. main() leaves SIGINT as it found it, for a
    program that calls it; a command that keeps its own (``serve``) keeps it."""
    code = main()
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        for stream in (sys.stdout, sys.stderr):  # what was said is said before a press can end it
            with contextlib.suppress(Exception):
                stream.flush()
        signal.signal(signal.SIGINT, _exit_at_once)
    sys.exit(code)


if __name__ == "__main__":
    run()
