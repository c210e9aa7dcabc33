"""Training throughput of diffdict's TopK SAE against EleutherAI sparsify and SAE Lens.

Same activations, same batches in the same order, same hyperparameters: d = 1280,
expansion 4 and 16, k = 10, batch 4096, Adam at sparsify's default learning rate
2e-4 / sqrt(n / 2^14), AuxK on (α = 1/32, k_aux = d/2) with a dead window of
``--dead-window`` tokens so that it actually runs within a short benchmark. Reported:
tokens/s (wall clock) and tokens per CPU-second (all threads; robust to other load on the
machine) over the training steps after the first two (diffdict: the trainer end to end,
reading a memory-mapped .npy through its prefetching loader; the peers: a loop over
batches already in memory, as their own trainers do it) and FVU on held-out tokens.
Also: ITDA build time against the time the SAE needs to reach the ITDA's FVU.

Activations are synthetic: each token is a sparse combination of 24 of 20,000 fixed random
unit directions (Zipf-like frequencies, exponential magnitudes) plus Gaussian noise
(σ = 0.05 per dimension) plus a fixed offset; float32 .npy files, written once.

Peers run when importable; install them into a separate environment that sees diffdict:

    python -m venv /tmp/bench-venv --system-site-packages
    /tmp/bench-venv/bin/pip install "torch==2.13.0" eai-sparsify sae-lens
    /tmp/bench-venv/bin/python benchmarks/train_throughput.py --steps 30

Results go to ``--out`` (JSON) and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffdict.dictionaries import ITDA, load_dictionary
from diffdict.dictionaries.data import open_activations
from diffdict.train import TrainSettings, train

D, K, BATCH = 1280, 10, 4096
N_DIRECTIONS, ACTIVE, NOISE = 20000, 24, 0.05


def make_activations(path: Path, tokens: int, seed: int) -> None:
    """Write (tokens, D) float32 synthetic activations; the directions do not depend on seed."""
    if path.exists() and np.load(path, mmap_mode="r").shape == (tokens, D):
        return
    world = torch.Generator().manual_seed(1234)
    directions = torch.randn(N_DIRECTIONS, D, generator=world)
    directions /= directions.norm(dim=1, keepdim=True)
    offset = torch.randn(D, generator=world) * 0.15
    frequency = 1.0 / (torch.arange(N_DIRECTIONS) + 50.0) ** 0.8
    gen = torch.Generator().manual_seed(seed)
    out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float32, shape=(tokens, D))
    for start in range(0, tokens, 16384):
        n = min(16384, tokens - start)
        chosen = torch.multinomial(frequency, n * ACTIVE, replacement=True, generator=gen).view(n, ACTIVE)
        magnitude = torch.empty(n, ACTIVE).exponential_(1.0, generator=gen) + 0.2
        x = torch.nn.functional.embedding_bag(chosen, directions, per_sample_weights=magnitude, mode="sum")
        out[start:start + n] = (x + offset + NOISE * torch.randn(n, D, generator=gen)).numpy()
    out.flush()
    del out
    path.with_suffix(".tmp.npy").rename(path)


def fvu(reconstruct, heldout: torch.Tensor) -> float:
    with torch.no_grad():
        error = sum(float((x - reconstruct(x)).pow(2).sum()) for x in heldout.split(4096))
    return error / float((heldout - heldout.mean(0)).pow(2).sum())


def lr_for(n: int) -> float:
    return 2e-4 / math.sqrt(n / 2**14)


def run_diffdict(acts: Path, heldout: torch.Tensor, expansion: int, steps: int, dead_window: int, work: Path,
                 bf16: bool = True) -> dict:
    n = expansion * D
    settings = TrainSettings(acts=str(acts), arch=["topk"], k=[K], expansion=[float(expansion)], lr=[lr_for(n)],
                             batch_size=BATCH, tokens=steps * BATCH, dead_window=dead_window, b_dec_init="mean",
                             bf16=bf16, init_tokens=16384, auxk=[True])
    run = work / f"diffdict-x{expansion}-{'bf16' if bf16 else 'fp32'}"
    shutil.rmtree(run, ignore_errors=True)
    began = time.perf_counter()
    folders = train(settings, run, checkpoint_every=10**9, log_every=1, progress=False)
    wall = time.perf_counter() - began
    rows = [json.loads(line) for line in (next(iter(folders.values())) / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[1], rows[-1]  # steady state: from the end of step 2
    sae = load_dictionary(next(iter(folders.values())))
    return {
        "tokens_per_s": (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"]),
        "tokens_per_cpu_s": (last["tokens"] - first["tokens"]) / (last["cpu_s"] - first["cpu_s"]),
        "wall_s_incl_init_and_save": wall,
        "fvu": fvu(sae, heldout),
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


def run_sparsify(batches, heldout, expansion, dead_window) -> dict:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(D, SparseCoderConfig(expansion_factor=expansion, k=K))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr_for(sae.num_latents))
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
    return {**speed, "fvu": fvu(lambda x: sae(x).sae_out, heldout)}


def run_sae_lens(batches, heldout, expansion, dead_window) -> dict:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    n = expansion * D
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=n, k=K, aux_loss_coefficient=1 / 32,
                                                dtype="float32", device="cpu"))
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr_for(n))
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


def run_itda(acts: Path, heldout: torch.Tensor, atoms: int, tau: float, max_tokens: int) -> dict:
    itda = ITDA(D, l0=K, tau=tau, max_atoms=atoms, chunk_tokens=1024)
    source = open_activations(acts)
    began, used = time.perf_counter(), 0
    for batch in source.batches(BATCH, seed=1):
        itda.build_step(batch.x)
        used += batch.x.shape[0]
        if itda.n_features >= atoms or used >= max_tokens:
            break
    seconds = time.perf_counter() - began
    return {"build_s": seconds, "tokens": used, "atoms": itda.n_features, "fvu": fvu(itda, heldout)}


def seconds_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """First time the SAE's training FVU (per step) is at or below target."""
    for elapsed, value in curve:
        if value <= target:
            return elapsed
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps of 4096 tokens (default: 30)")
    parser.add_argument("--expansion", default="4,16", help="expansion factors (default: 4,16)")
    parser.add_argument("--libraries", default="diffdict,sparsify,sae-lens")
    parser.add_argument("--data-steps", type=int, default=None,
                        help="size of the training file in batches (default: --steps; fewer repeats epochs)")
    parser.add_argument("--dead-window", type=int, default=10 * BATCH, help="AuxK dead window in tokens")
    parser.add_argument("--itda-tau", type=float, default=0.4)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "diffdict-bench")
    parser.add_argument("--out", type=Path, default=Path("train_throughput.json"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.data.mkdir(parents=True, exist_ok=True)
    acts, heldout_path = args.data / "train.npy", args.data / "heldout.npy"
    make_activations(acts, (args.data_steps or args.steps) * BATCH, seed=0)
    make_activations(heldout_path, 8192, seed=1)
    heldout = torch.from_numpy(np.load(heldout_path))
    libraries = args.libraries.split(",")
    source = open_activations(acts)
    peers = [lib for lib in libraries if lib in ("sparsify", "sae-lens")]
    batches = [b.x for _, b in zip(range(args.steps), source.batches(BATCH, seed=0))] if peers else []

    results: dict = {"threads": torch.get_num_threads(), "steps": args.steps, "runs": {}}
    for expansion in [int(e) for e in args.expansion.split(",")]:
        for library in libraries:
            key = f"{library}-x{expansion}"
            print(f"running {key} ...", flush=True)
            try:
                if library == "diffdict":
                    result = run_diffdict(acts, heldout, expansion, args.steps, args.dead_window, args.data)
                elif library == "diffdict-fp32":
                    result = run_diffdict(acts, heldout, expansion, args.steps, args.dead_window, args.data, bf16=False)
                elif library == "sparsify":
                    result = run_sparsify(batches, heldout, expansion, args.dead_window)
                elif library == "sae-lens":
                    result = run_sae_lens(batches, heldout, expansion, args.dead_window)
                elif library == "itda":
                    result = run_itda(acts, heldout, expansion * D, args.itda_tau, args.steps * BATCH)
                else:
                    raise SystemExit(f"unknown library {library}")
            except ImportError as error:
                result = {"skipped": f"not installed: {error}"}
            results["runs"][key] = result
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if k != "train_curve"}
            print(f"  {key}: {shown}", flush=True)
        itda, sae = results["runs"].get(f"itda-x{expansion}"), results["runs"].get(f"diffdict-x{expansion}")
        if itda and sae and "fvu" in itda and "train_curve" in sae:
            reach = seconds_to_reach(sae["train_curve"], itda["fvu"])
            results["runs"][f"itda-vs-sae-x{expansion}"] = {"itda_build_s": itda["build_s"], "sae_s_to_same_fvu": reach}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
