"""Training throughput and convergence of diffdict's TopK SAE against EleutherAI sparsify.

Cases (``--case``), each printing diffdict and sparsify side by side from one run:

* ``toy``: the studies' scale, d = 128, 512 features, k = 10, batch 1024, AuxK on
  (50k-token dead window), one thread.
* ``d1280``: the SDXL Turbo paper's scale, d = 1280, 5120 features (``--expansion``),
  k = 10, batch 4096, AuxK on with a dead window of ``--dead-window`` tokens so that it
  runs within a short benchmark.
* ``planted``: recovery of planted atoms (256 unit atoms in d = 64, 4 active per token,
  exponential coefficients, noise σ = 0.01; k = 4, 8x, batch 1024) and training FVU, for
  each learning rate of ``--lrs`` ("default": diffdict's width rule).

Both libraries train at the same learning rate: sparsify's default 2e-4 / sqrt(n / 2^14),
which is diffdict's default too (diffdict runs without ``--lr``). diffdict is timed as the
whole ``python -m diffdict train`` process (``process_tokens_per_s``: tokens over the
process's wall time, start-up, initialisation and saving included) and in its steady state
(``tokens_per_s``, ``tokens_per_cpu_s``: from its metrics log, after the first logging
interval); sparsify as a loop over batches already in memory, as its own trainer does it.
``--old-src OLD/src`` adds the same diffdict runs with another checkout's package (for a
before/after figure in the same run). FVU is on held-out tokens.

Activations are synthetic: each token is a sparse combination of a case's fixed random
unit directions (Zipf-like frequencies, exponential magnitudes) plus Gaussian noise
(σ = 0.05 per dimension) plus a fixed offset; float32 .npy files, written once.

    python benchmarks/train_throughput.py --case toy --threads 1
    python benchmarks/train_throughput.py --case d1280 --threads 1 --steps 30
    python benchmarks/train_throughput.py --case planted --lrs 1e-4,default

sparsify (``pip install "torch==2.13.0" eai-sparsify``) and SAE Lens run when importable.
Results go to ``--out`` (JSON) and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffdict.dictionaries import ITDA, load_dictionary
from diffdict.dictionaries.data import open_activations
from diffdict.train import TrainSettings, default_lr, train


@dataclass(frozen=True)
class Case:
    d: int
    expansion: int
    k: int
    batch: int
    directions: int
    active: int
    dead_window: int
    steps: int


CASES = {
    "toy": Case(d=128, expansion=4, k=10, batch=1024, directions=2000, active=8, dead_window=50_000, steps=300),
    "d1280": Case(d=1280, expansion=4, k=10, batch=4096, directions=20000, active=24, dead_window=10 * 4096, steps=30),
}
NOISE = 0.05


def make_activations(path: Path, case: Case, tokens: int, seed: int) -> None:
    """Write (tokens, d) float32 synthetic activations; the directions do not depend on seed."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (tokens, case.d):
        return
    world = torch.Generator().manual_seed(1234)
    directions = torch.randn(case.directions, case.d, generator=world)
    directions /= directions.norm(dim=1, keepdim=True)
    offset = torch.randn(case.d, generator=world) * 0.15
    frequency = 1.0 / (torch.arange(case.directions) + 50.0) ** 0.8
    gen = torch.Generator().manual_seed(seed)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32,
                                    shape=(tokens, case.d))
    for start in range(0, tokens, 16384):
        n = min(16384, tokens - start)
        chosen = torch.multinomial(frequency, n * case.active, replacement=True, generator=gen).view(n, case.active)
        magnitude = torch.empty(n, case.active).exponential_(1.0, generator=gen) + 0.2
        x = torch.nn.functional.embedding_bag(chosen, directions, per_sample_weights=magnitude, mode="sum")
        out[start:start + n] = (x + offset + NOISE * torch.randn(n, case.d, generator=gen)).numpy()
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


def fvu(reconstruct, heldout: torch.Tensor) -> float:
    with torch.no_grad():
        error = sum(float((x - reconstruct(x)).pow(2).sum()) for x in heldout.split(4096))
    return error / float((heldout - heldout.mean(0)).pow(2).sum())


def run_diffdict(acts: Path, heldout: torch.Tensor, case: Case, steps: int, dead_window: int, work: Path,
                 threads: int | None, src: str | None = None, extra: tuple[str, ...] = ()) -> dict:
    """``python -m diffdict train`` at its defaults (no --lr), in its own process; ``src``:
    another checkout's package. One checkpoint, at the end (as the studies train)."""
    run = work / f"diffdict-{case.d}-{'old' if src else 'new'}-{'-'.join(extra) or 'defaults'}"
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "diffdict", "train", "--acts", str(acts), "--arch", "topk", "--k", str(case.k),
               "--expansion", str(case.expansion), "--batch-size", str(case.batch), "--tokens",
               str(steps * case.batch), "--dead-window", str(dead_window), "--checkpoint-every", str(steps),
               "--log-every", str(max(1, steps // 10)), "--no-progress", "--out", str(run), *extra]
    if src is not None:  # the old default lr was 1e-4: give it the same lr as everyone else
        command += ["--lr", str(default_lr(case.expansion * case.d))]
    if threads:
        command += ["--threads", str(threads)]
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    began = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    (folder,) = [p for p in run.iterdir() if (p / "metrics.jsonl").exists()]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]  # steady state: after the first logging interval
    return {
        "process_tokens_per_s": steps * case.batch / wall,
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
        "tokens_per_cpu_s": (last["tokens"] - first["tokens"]) / (last["cpu_s"] - first["cpu_s"]),
        "process_s": wall,
        "lr": last["lr"],
        "fvu": fvu(load_dictionary(folder), heldout),
        "train_curve": [(r["elapsed_s"], r["fvu"]) for r in rows],
    }


def _timed_loop(step_fn, batches: list[torch.Tensor]) -> dict:
    for x in batches[:2]:
        step_fn(x)
    began, began_cpu = time.perf_counter(), time.process_time()
    for x in batches[2:]:
        step_fn(x)
    tokens = sum(x.shape[0] for x in batches[2:])
    return {"tokens_per_s": tokens / (time.perf_counter() - began),
            "tokens_per_cpu_s": tokens / (time.process_time() - began_cpu)}


def run_sparsify(batches, heldout, case: Case, dead_window, seed: int = 0) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(seed)
    sae = SparseCoder(case.d, SparseCoderConfig(expansion_factor=case.expansion, k=case.k))
    lr = default_lr(sae.num_latents)  # sparsify's own default: 2e-4 / sqrt(n / 2^14)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    sae.b_dec.data = batches[0].mean(0)

    def step(x):  # sparsify's Trainer.fit step for one hookpoint, fvu loss, Adam
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=since_fired > dead_window)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        since_fired.add_(x.shape[0])
        since_fired[out.latent_indices.flatten()] = 0

    speed = _timed_loop(step, batches)
    sae.eval()
    return {**speed, "lr": lr, "fvu": fvu(lambda x: sae(x).sae_out, heldout)}


def run_sae_lens(batches, heldout, case: Case, dead_window) -> dict:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    n = case.expansion * case.d
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=case.d, d_sae=n, k=case.k, aux_loss_coefficient=1 / 32,
                                                dtype="float32", device="cpu"))
    optimizer = torch.optim.Adam(sae.parameters(), lr=default_lr(n))
    since_fired = torch.zeros(n, dtype=torch.long)
    step_index = [0]

    def step(x):  # SAE Lens SAETrainer._train_step, without logging
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients={}, dead_neuron_mask=since_fired * x.shape[0] > dead_window,
            n_training_steps=step_index[0], is_logging_step=False))
        with torch.no_grad():
            since_fired.add_(1)
            since_fired[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step_index[0] += 1

    speed = _timed_loop(step, batches)
    sae.eval()
    return {**speed, "fvu": fvu(lambda x: sae(x), heldout)}


def run_itda(acts: Path, heldout: torch.Tensor, case: Case, tau: float, max_tokens: int) -> dict:
    atoms = case.expansion * case.d
    itda = ITDA(case.d, l0=case.k, tau=tau, max_atoms=atoms, chunk_tokens=1024)
    source = open_activations(acts)
    began, used = time.perf_counter(), 0
    for batch in source.batches(case.batch, seed=1):
        itda.build_step(batch.x)
        used += batch.x.shape[0]
        if itda.n_features >= atoms or used >= max_tokens:
            break
    seconds = time.perf_counter() - began
    return {"build_s": seconds, "tokens": used, "atoms": itda.n_features, "fvu": fvu(itda, heldout)}


def seconds_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First time the SAE's training FVU (per logging interval) is at or below target."""
    for elapsed, value in curve:
        if value <= target:
            return elapsed
    return None


PLANTED_D, PLANTED_ATOMS, PLANTED_ACTIVE, PLANTED_NOISE = 64, 256, 4, 0.01


def run_planted(work: Path, lrs: list[float | None], tokens: int, seed: int) -> dict:
    """Planted-atom recovery (share of atoms some decoder row matches at cosine >= 0.9)
    and the last training FVU, for each learning rate (None: diffdict's default)."""
    gen = torch.Generator().manual_seed(1234)  # not 0: an SAE seeded 0 would start on the atoms
    atoms = torch.randn(PLANTED_ATOMS, PLANTED_D, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    n = 500_000
    chosen = torch.multinomial(torch.ones(n, PLANTED_ATOMS), PLANTED_ACTIVE, generator=gen)
    magnitude = torch.empty(n, PLANTED_ACTIVE).exponential_(1.0, generator=gen)
    x = torch.nn.functional.embedding_bag(chosen, atoms, per_sample_weights=magnitude, mode="sum")
    x += PLANTED_NOISE * torch.randn(n, PLANTED_D, generator=gen)
    acts = work / "planted.npy"
    np.save(acts, x.numpy())
    results = {}
    for lr in lrs:
        settings = TrainSettings(acts=str(acts), arch=["topk"], k=[PLANTED_ACTIVE], expansion=[8.0], batch_size=1024,
                                 tokens=tokens, seed=seed, **({} if lr is None else {"lr": [lr]}))
        run = work / f"planted-{lr}"
        shutil.rmtree(run, ignore_errors=True)
        (folder,) = train(settings, run, checkpoint_every=10**9, log_every=100, progress=False).values()
        sae = load_dictionary(folder)
        directions = sae.decoder_directions / sae.decoder_directions.norm(dim=1, keepdim=True)
        recovery = float(((atoms @ directions.t()).max(1).values >= 0.9).float().mean())
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        results[f"lr={last['lr']:.3g}" + (" (default)" if lr is None else "")] = {
            "recovery": recovery, "train_fvu": last["fvu"], "dead_fraction": last["dead_fraction"]}
    return results


def show(key: str, result: dict) -> None:
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k != "train_curve"}
    print(f"  {key}: {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=[*CASES, "planted"], default="d1280")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: 300 toy, 30 d1280)")
    parser.add_argument("--expansion", default=None, help="expansion factors (default: 4)")
    parser.add_argument("--libraries", default="diffdict,sparsify",
                        help="any of diffdict, diffdict-fp32, sparsify, sae-lens, itda")
    parser.add_argument("--old-src", default=None, help="also run diffdict from this checkout's src folder")
    parser.add_argument("--diffdict-args", default="", help='more options for diffdict train, e.g. "--seed 1"')
    parser.add_argument("--peer-seed", type=int, default=0, help="torch seed of sparsify's initialisation")
    parser.add_argument("--data-steps", type=int, default=None,
                        help="size of the training file in batches (default: --steps; fewer repeats epochs)")
    parser.add_argument("--dead-window", type=int, default=None, help="AuxK dead window in tokens")
    parser.add_argument("--itda-tau", type=float, default=0.4)
    parser.add_argument("--lrs", default="1e-4,default", help="planted: learning rates ('default': diffdict's)")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="planted: training tokens")
    parser.add_argument("--seed", type=int, default=0, help="planted: training seed")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "diffdict-bench")
    parser.add_argument("--out", type=Path, default=Path("train_throughput.json"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.data.mkdir(parents=True, exist_ok=True)
    results: dict = {"case": args.case, "threads": torch.get_num_threads(), "runs": {}}
    if args.case == "planted":
        lrs = [None if lr == "default" else float(lr) for lr in args.lrs.split(",")]
        results["runs"] = run_planted(args.data, lrs, args.tokens, args.seed)
        for key, result in results["runs"].items():
            show(key, result)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
        return

    base = CASES[args.case]
    steps = args.steps or base.steps
    dead_window = args.dead_window or base.dead_window
    acts, heldout_path = args.data / f"train-{base.d}.npy", args.data / f"heldout-{base.d}.npy"
    make_activations(acts, base, (args.data_steps or steps) * base.batch, seed=0)
    make_activations(heldout_path, base, 8192, seed=1)
    heldout = torch.from_numpy(np.load(heldout_path))
    libraries = args.libraries.split(",")
    source = open_activations(acts)
    peers = [lib for lib in libraries if lib in ("sparsify", "sae-lens")]
    batches = [b.x for _, b in zip(range(steps), source.batches(base.batch, seed=0))] if peers else []
    results["steps"] = steps
    expansions = [int(e) for e in args.expansion.split(",")] if args.expansion else [base.expansion]
    for expansion in expansions:
        case = Case(**{**base.__dict__, "expansion": expansion})
        runs = [(lib, lib) for lib in libraries] + ([("diffdict-old", "diffdict-old")] if args.old_src else [])
        for key_name, library in runs:
            key = f"{key_name}-x{expansion}"
            print(f"running {key} ...", flush=True)
            try:
                if library == "diffdict":
                    result = run_diffdict(acts, heldout, case, steps, dead_window, args.data, args.threads,
                                          extra=tuple(shlex.split(args.diffdict_args)))
                elif library == "diffdict-fp32":
                    result = run_diffdict(acts, heldout, case, steps, dead_window, args.data, args.threads,
                                          extra=("--bf16", "off"))
                elif library == "diffdict-old":
                    result = run_diffdict(acts, heldout, case, steps, dead_window, args.data, args.threads,
                                          src=args.old_src)
                elif library == "sparsify":
                    result = run_sparsify(batches, heldout, case, dead_window, args.peer_seed)
                elif library == "sae-lens":
                    result = run_sae_lens(batches, heldout, case, dead_window)
                elif library == "itda":
                    result = run_itda(acts, heldout, case, args.itda_tau, steps * case.batch)
                else:
                    raise SystemExit(f"unknown library {library}")
            except ImportError as error:
                result = {"skipped": f"not installed: {error}"}
            results["runs"][key] = result
            show(key, result)
        runs_x = {k: v for k, v in results["runs"].items() if k.endswith(f"-x{expansion}")}
        ours, peer = runs_x.get(f"diffdict-x{expansion}"), runs_x.get(f"sparsify-x{expansion}")
        if ours and peer and "fvu" in peer:
            ratios = {"steady": ours["tokens_per_s"] / peer["tokens_per_s"],
                      "whole_process": ours["process_tokens_per_s"] / peer["tokens_per_s"],
                      "cpu": ours["tokens_per_cpu_s"] / peer["tokens_per_cpu_s"]}
            results["runs"][f"diffdict-vs-sparsify-x{expansion}"] = ratios
            show(f"diffdict / sparsify x{expansion}", ratios)
        old = runs_x.get(f"diffdict-old-x{expansion}")
        if ours and old:
            ratios = {"steady": ours["tokens_per_s"] / old["tokens_per_s"],
                      "whole_process": ours["process_tokens_per_s"] / old["process_tokens_per_s"],
                      "cpu": ours["tokens_per_cpu_s"] / old["tokens_per_cpu_s"]}
            results["runs"][f"new-vs-old-x{expansion}"] = ratios
            show(f"new / old x{expansion}", ratios)
        itda, sae = runs_x.get(f"itda-x{expansion}"), ours
        if itda and sae and "fvu" in itda and "train_curve" in sae:
            reach = seconds_to_reach(sae["train_curve"], itda["fvu"])
            results["runs"][f"itda-vs-sae-x{expansion}"] = {"itda_build_s": itda["build_s"], "sae_s_to_same_fvu": reach}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
