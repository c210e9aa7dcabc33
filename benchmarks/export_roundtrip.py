"""Round trip of ``diffdict export`` through the real SAE Lens and sparsify loaders.

Trains one small SAE per sparsity mechanism (standardised input, so the normalisation
has to be folded into the exported weights) on synthetic activations with per-dimension
offsets and scales, exports each with ``export_dictionary``, loads the folder with
``sae_lens.SAE.load_from_disk`` / ``sparsify.Sae.load_from_disk`` and prints the largest
difference from diffdict (float32, bf16 off) on held-out tokens: of the codes, and of
the reconstruction of diffdict's codes. ``--run`` exports saved dictionaries instead
(then the held-out tokens are drawn around each SAE's b_dec).

    python benchmarks/export_roundtrip.py --seed 0
    python benchmarks/export_roundtrip.py --run out/study-all/sparsity-mechanism/...  # saved SAEs
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from diffdict.dictionaries import SparseAutoencoder, load_dictionary
from diffdict.dictionaries.export import export_dictionary, max_differences, probe_inputs
from diffdict.errors import DiffdictError

MECHANISMS = {
    "topk": {"k": 16}, "batchtopk": {"k": 16}, "matryoshka-batchtopk": {"k": 16},
    "jumprelu": {"theta": 0.5, "l0_coef": 0.01}, "relu-l1": {"l1": 0.03}, "relu": {},
    "soft-threshold": {"theta": 0.5, "l1": 0.01},
}


def synthetic_activations(d: int, tokens: int, seed: int) -> torch.Tensor:
    """Sparse combinations of random directions, shifted and scaled per dimension."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(4 * d, d, generator=generator)
    codes = torch.rand(tokens, 4 * d, generator=generator).lt(8 / (4 * d)).float()
    codes *= torch.rand(tokens, 4 * d, generator=generator) * 3
    offset = torch.randn(d, generator=generator) * 4
    scale = torch.rand(d, generator=generator) * 3 + 0.2
    return offset + scale * (codes @ directions / d ** 0.5 + 0.1 * torch.randn(tokens, d, generator=generator))


def train_sae(mechanism: str, x: torch.Tensor, width: int, steps: int, batch: int, seed: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(x.shape[1], width, mechanism=mechanism, mechanism_options=MECHANISMS[mechanism],
                            normalization="standardise", seed=seed)
    variance = sae.initialize(x[:4096])
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.train()
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (batch,), generator=order)
        loss = sae.training_forward(sae.normalize(x[rows]), variance).loss
        optimizer.zero_grad()
        loss.backward()
        sae.remove_parallel_decoder_grad()
        optimizer.step()
        sae.after_step()
    return sae.eval()


def real_loaders() -> dict:
    """format -> function(folder) -> (encode, decode) on dense codes, for the libraries installed."""
    loaders = {}
    try:
        import sae_lens

        def sae_lens_loader(folder):
            sae = sae_lens.SAE.load_from_disk(str(folder))
            return sae.encode, sae.decode

        loaders["saelens"] = sae_lens_loader
    except ImportError:
        print("sae-lens is not installed: SAE Lens rows skipped (pip install sae-lens)")
    try:
        import sparsify

        def sparsify_loader(folder):
            sae = sparsify.Sae.load_from_disk(folder)

            def encode(x):
                out = sae.encode(x)
                return torch.zeros(x.shape[0], sae.num_latents).scatter(1, out.top_indices, out.top_acts)

            def decode(codes):
                values, indices = codes.topk(sae.cfg.k, dim=1)
                return sae.decode(values, indices)

            return encode, decode

        loaders["sparsify"] = sparsify_loader
    except ImportError:
        print("eai-sparsify is not installed: sparsify rows skipped (pip install eai-sparsify)")
    return loaders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", nargs="*", default=None, help="saved SAE folders to export instead of training")
    parser.add_argument("--d", type=int, default=128, help="activation width (default: 128)")
    parser.add_argument("--width", type=int, default=512, help="SAE width (default: 512)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per SAE (default: 200)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch (default: 256)")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out tokens compared (default: 4096)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaders = real_loaders()

    if args.run:
        saes = {str(folder): load_dictionary(folder) for folder in args.run}
        held_out = {name: probe_inputs(sae, args.tokens, args.seed) for name, sae in saes.items()}
    else:
        data = synthetic_activations(args.d, 32768 + args.tokens, args.seed)
        train, test = data[:32768], data[32768:]
        saes = {name: train_sae(name, train, args.width, args.steps, args.batch_size, args.seed) for name in MECHANISMS}
        held_out = {name: test for name in saes}
        print(f"synthetic activations d = {args.d}, max |x| = {float(test.abs().max()):.1f}; SAEs of "
              f"{args.width} features, standardised input, {args.steps} steps of {args.batch_size} tokens")

    print(f"{'dictionary':<24} {'format':<9} {'loaded as':<10} {'L0':>6} {'max |Δ codes|':>14} {'max |Δ recon|':>14}")
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
        for name, sae in saes.items():
            x = held_out[name]
            l0 = float((sae.encode(x) != 0).float().sum(1).mean())
            for format, loader in loaders.items():
                folder = Path(scratch) / f"{Path(name).name}-{format}"
                try:
                    export_dictionary(sae, folder, format)
                except DiffdictError as error:
                    print(f"{Path(name).name:<24} {format:<9} refused ({str(error).split(';')[0]})")
                    continue
                encode, decode = loader(folder)
                loaded_as = json.loads((folder / "cfg.json").read_text()).get("architecture", "topk")
                diff = max_differences(sae, x, encode, decode)
                print(f"{Path(name).name:<24} {format:<9} {loaded_as:<10} {l0:>6.1f} {diff['codes']:>14.1e} "
                      f"{diff['reconstruction']:>14.1e}")


if __name__ == "__main__":
    main()
