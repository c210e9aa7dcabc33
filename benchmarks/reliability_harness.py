"""Reliability harness: bad inputs, corrupted stores and dictionaries, paths leading out of
a store, and kill -9 loops, all through the ``diffdict`` command line; counts clean outcomes.

* bad inputs: each command must fail with exit != 0, exactly one stderr line naming the
  problem, no traceback, and leave every existing file of the work folder unchanged;
* corruptions: a copy of a store (or dictionary) is damaged one way, then every command
  that reads the damaged part (store verify, train, evaluate, feature-stats, interpret;
  images are read by verify and interpret only) must fail cleanly with a line naming the
  damaged file;
* path escapes: a manifest naming a file outside its store must be refused, and (an audit
  hook records every open) no file outside the store may be opened;
* kill -9 (``--kill-train N``, ``--kill-collect N``): a run killed at a random moment and
  resumed must end with weights bitwise equal to an uninterrupted run's (train) or the same
  digest (collect), and exit cleanly (no abort on resume).

Commands run in this process (``diffdict.cli.main``; fast) or, with ``--subprocess``, each in
its own interpreter (exact exit codes and stderr). Kill loops always use subprocesses.

    python benchmarks/reliability_harness.py --seed 0 --kill-train 10 --kill-collect 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

SITE = "mid.0"
PROMPTS, CHUNK = 16, 4
TRAIN = ["--site", SITE, "--expansion", "2", "--k", "4", "--batch-size", "128", "--tokens", "1024",
         "--init-tokens", "256", "--no-progress"]

# -------------------------------------------------------------------------- running commands

_opened: list[str] | None = None  # paths opened while an audit is armed


def _audit(event, args):
    if _opened is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


def run(argv: list, subprocess_mode: bool, audit: bool = False) -> tuple[int, str, list[str]]:
    """(exit code, stderr, paths opened) of ``diffdict argv``."""
    global _opened
    argv = [str(a) for a in argv]
    if subprocess_mode and not audit:
        done = subprocess.run([sys.executable, "-m", "diffdict", *argv], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        return done.returncode, done.stderr, []
    from diffdict.cli import main

    err, out = io.StringIO(), io.StringIO()
    _opened = [] if audit else None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            except BaseException:  # a traceback: what the CLI must never show
                traceback.print_exc()
                code = 1
    finally:
        opened, _opened = _opened or [], None
        import torch

        torch.set_num_threads(1)  # --threads must not leak into the next run
    return code, err.getvalue(), opened


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def clean(code: int, err: str, names: str | None = None) -> str | None:
    """None if the outcome is clean, else why not."""
    lines = err.strip().splitlines()
    if code == 0:
        return "exit 0"
    if "Traceback" in err:
        return "traceback: " + (lines[-1] if lines else "")
    if len(lines) != 1:
        return f"{len(lines)} lines: {' | '.join(lines)[:200]}"
    if names and names not in err:
        return f"does not name {names}: {lines[0][:200]}"
    return None


# -------------------------------------------------------------------------- fixtures


def setup(work: Path, seed: int) -> dict[str, Path]:
    store, runs = work / "store", work / "run"
    timed(["collect", "--sites", SITE, "--prompts", PROMPTS, "--chunk-size", CHUNK, "--out", store, "--seed", seed,
           "--no-progress", "--denoise-steps", 2, "--steps", 0, "--batch-size", PROMPTS])
    code, err, _ = run(["train", "--acts", store, *TRAIN, "--out", runs, "--seed", seed], False)
    assert code == 0, err
    member = next(p for p in runs.iterdir() if (p / "config.json").exists())
    (work / "file.txt").write_text("a red circle\n")
    (work / "latin1.txt").write_bytes("un cercle \xe9carlate\n".encode("latin-1"))
    (work / "empty.txt").write_text("\n\n")
    (work / "folder").mkdir()
    (work / "mine").mkdir()
    (work / "mine" / "notes.md").write_text("not diffdict's")
    np.save(work / "acts.npy", np.zeros((4, 8), dtype=np.float32))
    np.save(work / "ints.npy", np.zeros((4, 8), dtype=np.int64))
    return {"store": store, "run": runs, "dict": member}


def bad_inputs(w: Path, f: dict[str, Path]) -> list[list]:
    s, r, d = f["store"], f["run"], f["dict"]
    return [
        # --out of the wrong kind
        ["train", "--acts", s, *TRAIN, "--out", w / "file.txt"],
        ["train", "--acts", s, *TRAIN, "--out", w / "mine"],
        ["train", "--acts", s, *TRAIN, "--out", w / "file.txt" / "run"],
        ["evaluate", "--run", r, "--acts", s, "--out", w / "folder"],
        ["generate", "--prompt", "a red circle", "--out", w / "folder"],
        ["world", "render", "--count", "4", "--out", w / "folder"],
        ["intervene", "--run", d, "--prompt", "a red circle", "--out", w / "file.txt"],
        ["interpret", "--run", d, "--store", s, "--out", w / "file.txt"],
        ["interpret", "--run", d, "--store", s, "--out", w / "mine"],
        ["report", "--run", d, "--out", w / "file.txt"],
        ["report", "--run", d, "--out", w / "mine"],
        ["study", "blocks", "--quick", "--out", w / "mine"],
        ["intervene", "--run", d, "--prompt", "a red circle", "--mode", "splice", "--out", w / "mine"],
        ["ablate-block", "--prompt", "a red circle", "--out", w / "mine"],
        ["study", "blocks", "--quick", "--out", w / "file.txt"],
        ["collect", "--sites", SITE, "--prompts", "4", "--out", w / "mine"],
        ["collect", "--sites", SITE, "--prompts", "4", "--out", w / "file.txt"],
        ["store", "import", w / "acts.npy", "--out", w / "mine"],
        # numbers out of range or not numbers
        ["train", "--acts", s, *TRAIN, "--out", w / "r1", "--threads", "-1"],
        ["train", "--acts", s, *TRAIN, "--out", w / "r1", "--threads", "two"],
        ["train", "--acts", s, *TRAIN, "--out", w / "r1", "--checkpoint-every", "0"],
        ["train", "--acts", s, "--site", SITE, "--expansion", "100000000", "--out", w / "r1"],
        ["train", "--acts", s, "--site", SITE, "--width", "1000000000000", "--out", w / "r1"],
        ["train", "--acts", s, "--site", SITE, "--expansion", "-2", "--out", w / "r1"],
        ["train", "--acts", s, "--site", SITE, "--k", "0", "--out", w / "r1"],
        ["train", "--acts", s, "--site", SITE, "--lr", "nan", "--out", w / "r1"],
        ["train", "--acts", s, "--site", SITE, "--batch-size", "0", "--out", w / "r1"],
        ["evaluate", "--run", r, "--acts", s, "--out", w / "m.json", "--batch-size", "0"],
        ["evaluate", "--run", r, "--acts", s, "--out", w / "m.json", "--max-tokens", "-5"],
        ["feature-stats", "--run", d, "--store", s, "--batch-size", "0"],
        ["generate", "--prompt", "a red circle", "--guidance", "nan", "--out", w / "g.png"],
        ["generate", "--prompt", "a red circle", "--guidance", "inf", "--out", w / "g.png"],
        ["generate", "--prompt", "a red circle", "--scale", "0", "--out", w / "g.png"],
        ["generate", "--prompt", "a red circle", "--steps", "0", "--out", w / "g.png"],
        ["generate", "--prompt", "a red circle", "--batch-size", "-1", "--out", w / "g.png"],
        ["generate", "--sample", "0", "--out", w / "g.png"],
        ["interpret", "--run", d, "--store", s, "--out", w / "i1", "--max-features", "0"],
        ["interpret", "--run", d, "--store", s, "--out", w / "i1", "--top-n", "0"],
        ["interpret", "--run", d, "--store", s, "--out", w / "i1", "--vlm-rpm", "nan"],
        ["world", "render", "--count", "1000000000000", "--out", w / "w.png"],
        ["world", "render", "--count", "0", "--out", w / "w.png"],
        ["world", "render", "--size", "-32", "--out", w / "w.png"],
        ["app", "--run", d, "--port", "70000"],
        ["store", "import", w / "acts.npy", "--out", w / "s1", "--chunk-tokens", "0"],
        # devices
        ["train", "--acts", s, *TRAIN, "--out", w / "r1", "--device", "nosuch"],
        ["train", "--acts", s, *TRAIN, "--out", w / "r1", "--device", "cuda"],
        ["generate", "--prompt", "a red circle", "--device", "tpu", "--out", w / "g.png"],
        ["collect", "--sites", SITE, "--prompts", "4", "--out", w / "c1", "--device", "cuda:3"],
        # files that are not what they should be
        ["generate", "--prompts-file", w / "latin1.txt", "--out", w / "g.png"],
        ["generate", "--prompts-file", w / "folder", "--out", w / "g.png"],
        ["generate", "--prompts-file", w / "missing.txt", "--out", w / "g.png"],
        ["generate", "--prompts-file", w / "empty.txt", "--out", w / "g.png"],
        ["train", "--acts", w / "missing", *TRAIN, "--out", w / "r1"],
        ["train", "--acts", w / "file.txt", *TRAIN, "--out", w / "r1"],
        ["train", "--acts", w / "ints.npy", "--out", w / "r1"],
        ["evaluate", "--run", w / "folder", "--acts", s, "--out", w / "m.json"],
        ["interpret", "--run", w / "folder", "--store", s, "--out", w / "i1"],
        ["report", "--run", w / "missing", "--out", w / "rep"],
        ["store", "verify", w / "folder"],
        ["store", "import", w / "ints.npy", "--out", w / "s1"],
        ["store", "import", w / "file.txt", "--out", w / "s1"],
        # names that do not exist
        ["train", "--acts", s, "--site", "down.9.9", *TRAIN[2:], "--out", w / "r1"],
        ["train", "--acts", s, "--arch", "nosuch", "--out", w / "r1"],
        ["collect", "--sites", "down.9.9", "--prompts", "4", "--out", w / "c1"],
        ["generate", "--model", "nosuch", "--prompt", "x", "--out", w / "g.png"],
        ["interpret", "--run", d, "--store", s, "--out", w / "i1", "--explainer", "nosuch"],
        ["interpret", "--run", d, "--store", s, "--out", w / "i1", "--features", "0,99999"],
        ["study", "nosuch", "--out", w / "st"],
        ["nosuch-command"],
    ]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _manifest(change):
    return lambda s: _edit(s / "manifest.json", change)


SHARD = f"shards/{SITE}/000001.safetensors"
STORE_CORRUPTIONS = {
    "activation byte": (lambda s: _flip(s / SHARD, (s / SHARD).stat().st_size // 2), SHARD),
    "metadata byte": (lambda s: _flip(s / SHARD, -3), SHARD),
    "shard header byte": (lambda s: _flip(s / SHARD, 30), SHARD),
    "truncated shard": (lambda s: (s / SHARD).write_bytes((s / SHARD).read_bytes()[:-100]), SHARD),
    "deleted shard": (lambda s: (s / SHARD).unlink(), SHARD),
    "swapped shards": (lambda s: [os.replace(s / SHARD, s / "x"), os.replace(s / f"shards/{SITE}/000000.safetensors",
                                                                             s / SHARD),
                                  os.replace(s / "x", s / f"shards/{SITE}/000000.safetensors")], "safetensors"),
    "duplicated shard": (lambda s: shutil.copy(s / f"shards/{SITE}/000000.safetensors", s / SHARD), SHARD),
    "image byte": (lambda s: _flip(s / "images/000001.safetensors", -5), "images/000001.safetensors"),
    "deleted chunk record": (lambda s: (s / "chunks/000001.json").unlink(), "chunks/000001.json"),
    "edited chunk record": (lambda s: _edit(s / "chunks/000001.json", lambda r: r["sites"][SITE].update(tokens=9)),
                            "chunks/000001.json"),
    "edited header": (lambda s: _edit(s / "store.json", lambda h: h.update(chunk_size=8)), "store.json"),
    "manifest tokens": (_manifest(lambda m: m["sites"][SITE].update(tokens=m["sites"][SITE]["tokens"] + 64)),
                        "manifest.json"),
    "manifest num_prompts": (_manifest(lambda m: m.update(num_prompts=PROMPTS - 1)), "manifest.json"),
    "manifest chunk_size": (_manifest(lambda m: m.update(chunk_size=CHUNK + 1)), "manifest.json"),
    "manifest grid": (_manifest(lambda m: m["sites"][SITE].update(grid=[4, 16])), "manifest.json"),
    "manifest digest": (_manifest(lambda m: m.update(digest="sha256:" + "0" * 64)), "manifest.json"),
    "manifest prompt text": (_manifest(lambda m: m["prompts"].__setitem__(0, "a blue square")), "manifest.json"),
    "manifest settings": (_manifest(lambda m: m["settings"].update(model="sdxl-turbo")), "manifest.json"),
    "manifest shard sha256": (_manifest(lambda m: m["chunks"][1]["sites"][SITE].update(sha256="0" * 64)),
                              "chunks/000001.json"),
    "manifest chunk order": (_manifest(lambda m: m["chunks"].reverse()), "manifest.json"),
}
DICT_CORRUPTIONS = {
    "weights byte": (lambda d: _flip(d / "model.safetensors", -9), "model.safetensors"),
    "weights header byte": (lambda d: _flip(d / "model.safetensors", 20), "model.safetensors"),
    "config k": (lambda d: _edit(d / "config.json", lambda c: c["mechanism_options"].update(k=2)), "config.json"),
    "config normalization": (lambda d: _edit(d / "config.json", lambda c: c.update(normalization="scalar")),
                             "config.json"),
    "config width": (lambda d: _edit(d / "config.json", lambda c: c.update(n_features=7)), "config.json"),
}
ESCAPES = ["../outside/000000.safetensors", "/tmp/diffdict-outside/000000.safetensors",
           "../../../../../../etc/passwd", f"shards/{SITE}/../../../outside/000000.safetensors"]


def consumers(store: Path, f: dict[str, Path], scratch: Path, dictionary: Path | None = None) -> dict[str, list]:
    dictionary = dictionary or f["dict"]
    run_folder = dictionary.parent
    return {
        "store verify": ["store", "verify", store],
        "train": ["train", "--acts", store, *TRAIN, "--out", scratch / "train"],
        "evaluate": ["evaluate", "--run", run_folder, "--acts", store, "--site", SITE, "--fidelity-prompts", "0",
                     "--out", scratch / "metrics.json"],
        "feature-stats": ["feature-stats", "--run", dictionary, "--store", store, "--site", SITE],
        "interpret": ["interpret", "--run", dictionary, "--store", store, "--site", SITE, "--max-features", "2",
                      "--top-n", "2", "--out", scratch / "interpret"],
    }


# -------------------------------------------------------------------------- kill -9 loops


def kill_loop(argv: list, out: Path, reference: bytes | str, read, runs: int, rng: random.Random,
              duration: float) -> tuple[int, list[str]]:
    good, problems = 0, []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for i in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        process = subprocess.Popen([sys.executable, "-m", "diffdict", *map(str, argv)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.0) * duration)
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = subprocess.run([sys.executable, "-m", "diffdict", *map(str, argv)], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0 or "terminate called" in done.stderr:
            problems.append(f"run {i}: resume exit {done.returncode}: {done.stderr.strip()[-200:]}")
        elif read(out) != reference:
            problems.append(f"run {i}: resumed result differs from the uninterrupted run")
        else:
            good += 1
    return good, problems


def timed(argv: list) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffdict", *map(str, argv)], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


# -------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work folder (default: a temp folder, removed)")
    parser.add_argument("--subprocess", action="store_true", help="run every command in its own interpreter")
    parser.add_argument("--kill-train", type=int, default=0, help="kill -9 / resume loops of train")
    parser.add_argument("--kill-collect", type=int, default=0, help="kill -9 / resume loops of collect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", default="bad,corrupt,escape",
                        help="which checks to run besides the kill loops (default: bad,corrupt,escape)")
    parser.add_argument("--verbose", action="store_true", help="print every unclean outcome")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.addaudithook(_audit)
    rng = random.Random(args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="diffdict-harness-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    try:
        f = setup(work / "fixtures", args.seed)

        sections = set(args.sections.split(","))
        # bad inputs: clean, and nothing that existed changed
        w = work / "fixtures"
        cases = bad_inputs(w, f) if "bad" in sections else []
        good = 0
        for case in cases:
            before = snapshot(w)
            code, err, _ = run(case, args.subprocess)
            why = clean(code, err)
            after = snapshot(w)
            changed = [name for name, stamp in before.items() if after.get(name) != stamp]
            if why is None and changed:
                why = f"changed {changed[:3]}"
            if why is None:
                good += 1
            else:
                problems.append(f"bad input {' '.join(map(str, case[:2]))} ...{' '.join(map(str, case[-2:]))}: {why}")
            for name in set(after) - set(before):  # leave the fixtures as they were for the next case
                (w / name).unlink()
        if cases:
            results["bad inputs"] = (good, len(cases))

        # corrupted stores and dictionaries, through every consumer
        good = total = 0
        for name, (corrupt, names) in ({**STORE_CORRUPTIONS, **DICT_CORRUPTIONS} if "corrupt" in sections else {}).items():
            case = work / "cases" / name.replace(" ", "-")
            store, dictionary = case / "store", case / "run" / f["dict"].name
            shutil.copytree(f["store"], store)
            shutil.copytree(f["run"], case / "run")
            corrupt(store if name in STORE_CORRUPTIONS else dictionary)
            for consumer, command in consumers(store, f, case / "out", dictionary).items():
                if name in DICT_CORRUPTIONS and consumer in ("store verify", "train"):
                    continue  # they read no dictionary
                if name == "image byte" and consumer in ("train", "evaluate", "feature-stats"):
                    continue  # they read no images
                total += 1
                code, err, _ = run(command, args.subprocess)
                why = clean(code, err, names)
                if why is None:
                    good += 1
                else:
                    problems.append(f"corruption '{name}' / {consumer}: {why}")
            shutil.rmtree(case)
        if total:
            results["corruptions x consumers"] = (good, total)

        # manifest paths leading out of the store: refused, and nothing outside is opened
        good = total = opened_outside = 0
        for entry in ESCAPES if "escape" in sections else []:
            case = work / "escape" / str(total)
            store = case / "store"
            shutil.copytree(f["store"], store)
            for outside in (case / "outside", Path("/tmp/diffdict-outside")):
                outside.mkdir(parents=True, exist_ok=True)
                shutil.copy(store / f"shards/{SITE}/000000.safetensors", outside / "000000.safetensors")
            for record in ("manifest.json", "chunks/000000.json"):
                _edit(store / record, lambda r: (r["chunks"][0] if "chunks" in r else r)["sites"][SITE].update(file=entry))
            for consumer, command in consumers(store, f, case / "out").items():
                total += 1
                code, err, opened = run(command, False, audit=True)
                escaped = [p for p in opened if "outside" in p or p == "/etc/passwd"]
                opened_outside += bool(escaped)
                why = clean(code, err, "outside the store; refused") or (f"opened {escaped[:2]}" if escaped else None)
                if why is None:
                    good += 1
                else:
                    problems.append(f"escape {entry!r} / {consumer}: {why}")
            shutil.rmtree(case)
        shutil.rmtree("/tmp/diffdict-outside", ignore_errors=True)
        if total:
            results["paths outside the store x consumers"] = (good, total)
            results["... and no file outside the store opened"] = (total - opened_outside, total)

        # kill -9 during train and collect, then resume
        if args.kill_train:
            out = work / "kill-train"
            command = ["train", "--acts", f["store"], *TRAIN, "--tokens", "4096", "--checkpoint-every", "2",
                       "--out", out, "--seed", args.seed]
            duration = timed(command)
            weights = lambda o: b"".join(p.read_bytes() for p in sorted(o.glob("*/model.safetensors")))  # noqa: E731
            reference = weights(out)
            good, issues = kill_loop(command, out, reference, weights, args.kill_train, rng, duration)
            results["kill -9 train, resumed bitwise equal"] = (good, args.kill_train)
            problems += [f"kill train {p}" for p in issues]
        if args.kill_collect:
            out = work / "kill-collect"
            command = ["collect", "--sites", SITE, "--prompts", PROMPTS, "--chunk-size", 2, "--out", out,
                       "--seed", args.seed, "--no-progress", "--denoise-steps", 2, "--steps", 0, "--batch-size", 2]
            duration = timed(command)
            digest = lambda o: json.loads((o / "manifest.json").read_text())["digest"]  # noqa: E731
            reference = digest(out)
            good, issues = kill_loop(command, out, reference, digest, args.kill_collect, rng, duration)
            results["kill -9 collect, resumed digest equal"] = (good, args.kill_collect)
            problems += [f"kill collect {p}" for p in issues]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"{'check':<42}{'clean':>7}{'of':>6}")
    for name, (good, total) in results.items():
        print(f"{name:<42}{good:>7}{total:>6}")
    if problems:
        print(f"\n{len(problems)} unclean outcomes" + (":" if args.verbose else " (--verbose lists them)"))
        for line in problems if args.verbose else []:
            print("  " + line)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
