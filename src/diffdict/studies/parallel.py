"""Helper processes that share a study run's work through its cache (``--jobs``).

The main process runs the studies exactly as alone and writes every output. Each helper
runs the same studies in the opposite order (the studies, and within a study its seeds
after the first and its dictionaries, see ``StudyContext.order``) into a scratch folder
it never reports, so it builds the cache entries the main process will want last. The
cache builds each entry once, under a lock (``Cache.locked``): whoever reaches an entry
first builds it and the other waits for it, so the two meet in the middle. Every entry
depends only on its settings, so the tables are the same for any number of jobs.

When the main process is done it stops the helpers (an entry a helper was building is
discarded, as after any interruption) and adds their compute time to ``seconds_by_step``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from diffdict.io import read_json, write_json

#: a study run uses at most this many processes by default: the main one and a helper
#: meet in the middle of each loop, a third would only wait for the other two
MAX_DEFAULT_JOBS = 2
HELPERS_FOLDER = ".helpers"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_count(config) -> int:
    """``config.jobs``, else 2 on a CPU run with at least two cores, else 1 (a GPU is
    shared badly by two processes)."""
    if config.jobs:
        return config.jobs
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cpu"):
        return 1
    return max(1, min(MAX_DEFAULT_JOBS, cpu_cores()))


def threads_per_job(config, jobs: int) -> int | None:
    """Torch threads of each process: ``config.threads``, else the cores shared out."""
    if config.threads:
        return config.threads
    return max(1, cpu_cores() // jobs) if jobs > 1 else None


class Helpers:
    """``count`` helper processes (maybe none) of one study run (a context manager: leaving it
    stops them, adds their compute time by cache step to ``seconds`` and removes their folders).

    A helper is a fresh interpreter started with its settings in a JSON file (not
    multiprocessing: that would import the caller's main script again, and torch's threads
    do not survive a fork)."""

    def __init__(self, count: int, threads: int | None, **run_args: Any):
        """``run_args``: what ``runner.run_studies`` takes (``cache_root`` among them, as
        JSON values), and ``verify``, whether stores are verified on read."""
        self.folder = Path(run_args["cache_root"]) / HELPERS_FOLDER / str(os.getpid())
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self.seconds: Counter[str] = Counter()
        self.jobs = 1 + count  # the processes of the run: the main one and the helpers
        run_args = json.loads(json.dumps(run_args, default=str))  # paths as text
        for index in range(count):
            scratch = self.folder / str(index)
            scratch.mkdir(parents=True, exist_ok=True)
            write_json(scratch / "settings.json", {"threads": threads, "parent": os.getpid(), "run": run_args})
            with open(scratch / "helper.log", "a") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", "from diffdict.studies.parallel import helper_main; helper_main()",
                     str(scratch)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self.processes.append((process, scratch))

    def __enter__(self) -> "Helpers":
        return self

    def __exit__(self, *exc) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.terminate()
        for process, _ in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for _, scratch in self.processes:
            if (scratch / "stats.json").exists():
                self.seconds.update(read_json(scratch / "stats.json").get("seconds", {}))
        shutil.rmtree(self.folder, ignore_errors=True)
        _remove_empty(self.folder.parent)


def _remove_empty(*folders: Path) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run's helpers are still there
            return


def _exit_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """A helper whose main process ``parent`` died (killed, so it could not stop it) stops too."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="diffdict-helper-watch").start()


def helper_main() -> None:
    """A helper's life (``python -c ... SCRATCH``): the studies in reverse into
    ``SCRATCH/out``; stopped by SIGTERM, or when its main process dies."""
    from diffdict.store import verification
    from diffdict.studies.runner import run_studies

    scratch = Path(sys.argv[1])
    settings = read_json(scratch / "settings.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds, so a half-built entry is removed
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the main process, which stops the helper
    try:  # from here on a SIGTERM (the watch below fires at once if the main process is gone) tidies up
        _exit_with_parent(settings["parent"])
        if settings["threads"]:
            torch.set_num_threads(settings["threads"])
        run = settings["run"]
        with verification(run.pop("verify")):
            run_studies(scratch / "out", **run, stats_file=scratch / "stats.json", helper=True,
                        log=lambda message: print(message, flush=True))
    except Exception:  # the main process builds whatever a failed helper did not
        traceback.print_exc()
    finally:
        if os.getppid() != settings["parent"]:  # orphaned: nobody else will tidy up
            shutil.rmtree(scratch, ignore_errors=True)
            _remove_empty(scratch.parent, scratch.parent.parent)


__all__ = ["Helpers", "MAX_DEFAULT_JOBS", "cpu_cores", "helper_main", "job_count", "threads_per_job"]
