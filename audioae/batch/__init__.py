"""Folder jobs: denoise many files, resumably, with a local or a Ray Data engine.

:func:`run_denoise` is the entry point (``audioae denoise`` calls it). The parts: :mod:`.plan`
(discovery, output paths, resume), :mod:`.process` (one file, atomically), :mod:`.manifest`
(the JSON-lines record and the summary), :mod:`.overwrite` (a stopped ``--overwrite`` that a rerun
goes on with), :mod:`.local` and :mod:`.ray_engine` (the engines).
"""

from .job import ENGINES, DenoiseOptions, run_denoise
from .manifest import FileResult, read_manifest
from .plan import MANIFEST_NAME, FileTask, part_path, plan_tasks
from .process import FileDenoiser

__all__ = [
    "ENGINES",
    "MANIFEST_NAME",
    "DenoiseOptions",
    "FileDenoiser",
    "FileResult",
    "FileTask",
    "part_path",
    "plan_tasks",
    "read_manifest",
    "run_denoise",
]
