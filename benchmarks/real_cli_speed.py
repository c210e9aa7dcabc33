"""``interpret`` and ``study all --quick`` on a saved tiny SDXL Turbo pipeline: this
checkout against another one (``--old-src OLD/src``), side by side.

The tiny random pipeline of the tests (tests/_tiny_pipelines.py) is saved with
``save_pretrained`` and used through ``--model-path``, as a user's local folder would be.
One store is collected and one run trained with this checkout; then ``interpret`` with
its defaults runs ``--repeats`` times for each checkout, interleaved, and (``--study``)
``study all --quick`` runs for both checkouts at the same time, so background load hits
both alike. Reports wall seconds and the size of what each wrote.

    python benchmarks/real_cli_speed.py --old-src /tmp/old/src --work /tmp/real-speed --study
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT_PROMPTS = [f"a {color} {thing} at the {where}" for color in ("red", "green", "blue", "yellow")
                 for thing in ("circle", "square", "triangle", "dog", "cat", "car") for where in ("left", "right")]


def diffdict(src: Path, args: list[str], log: Path, background: bool = False):
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-m", "diffdict", *map(str, args)]
    with open(log, "w") as out:
        if background:
            return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        started = time.perf_counter()
        subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
        return time.perf_counter() - started


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--old-src", required=True, help="the other checkout's src folder")
    parser.add_argument("--work", required=True, help="scratch folder")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--study", action="store_true", help="also time study all --quick")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sides = {"old": Path(args.old_src).resolve(), "new": ROOT / "src"}
    model = work / "tiny-sdxl"
    if not model.exists():
        subprocess.run([sys.executable, "-c", f"from _tiny_pipelines import tiny_sdxl_pipeline; "
                                              f"tiny_sdxl_pipeline().save_pretrained({str(model)!r})"],
                       env={**os.environ, "PYTHONPATH": str(ROOT / "tests")}, check=True, capture_output=True)
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(SHORT_PROMPTS[: args.prompts]) + "\n")  # the tiny tokenizer takes 16 tokens
    store, run = work / "store", work / "run"
    if not (store / "manifest.json").exists():
        diffdict(sides["new"], ["collect", "--model", "sdxl-turbo", "--model-path", model, "--image-size",
                                args.image_size, "--sites", "mid.0", "--prompts", prompts, "--out", store,
                                "--no-progress"], work / "collect.log")
    if not run.exists():
        diffdict(sides["new"], ["train", "--acts", store, "--arch", "topk", "--k", "4", "--expansion", "4",
                                "--tokens", "32768", "--batch-size", "1024", "--out", run, "--no-progress"],
                 work / "train.log")
    member = next(p for p in run.iterdir() if (p / "config.json").exists())
    results: dict[str, dict] = {"interpret": {side: [] for side in sides}}
    for _ in range(args.repeats):
        for side, src in sides.items():
            out = work / f"interpret-{side}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            seconds = diffdict(src, ["interpret", "--run", member, "--store", store, "--out", out],
                               work / f"interpret-{side}.log")
            results["interpret"][side].append({"seconds": round(seconds, 1), "written_mb": round(folder_mb(out), 1)})
    if args.study:
        jobs = {}
        for side, src in sides.items():
            out = work / f"study-{side}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            started = time.perf_counter()
            jobs[side] = (started, diffdict(src, ["study", "all", "--quick", "--model", "sdxl-turbo", "--model-path",
                                                  model, "--image-size", args.image_size, "--sites", "mid.0",
                                                  "--prompts-file", prompts, "--threads", "1", "--out", out],
                                            work / f"study-{side}.log", background=True))
        results["study_all_quick"] = {}
        while len(results["study_all_quick"]) < len(jobs):  # each side's time when it ends
            for side, (started, process) in jobs.items():
                if side not in results["study_all_quick"] and process.poll() is not None:
                    results["study_all_quick"][side] = {
                        "seconds": round(time.perf_counter() - started, 1), "exit": process.returncode,
                        "written_mb": round(folder_mb(work / f"study-{side}"), 1)}
            time.sleep(1)
    print(json.dumps({"image_size": args.image_size, "prompts": args.prompts, **results}, indent=1))


if __name__ == "__main__":
    main()
