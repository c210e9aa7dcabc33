"""Collection: run a host model over prompts and write what chosen sites compute into a store.

Work is split into the store's chunks (consecutive prompt ids). A chunk's images and
activations depend only on the seed and its prompt ids: prompt ``i`` starts from noise
seeded by ``seed + i`` and each chunk is generated in the same batches (``batch_size``
consecutive prompts from the chunk start), whichever process or run makes it. So a
resumed run, or several ``torchrun`` ranks (chunks split by ``index % world_size``), give
the same store as one uninterrupted process.

Token order in a chunk (per site): prompt id, then denoising step, then row-major position.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import torch

from diffdict.capture import META_FIELDS, Recorder, parse_steps
from diffdict.errors import DiffdictError, require_int
from diffdict.hosts import HostModel


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.initialized_here:
            torch.distributed.destroy_process_group()


def distributed_from_env() -> DistContext:
    """The rank and world size set by ``torchrun`` (gloo process group, for barriers only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    initialized = not dist.is_initialized()
    if initialized:  # a rank may wait at the final barrier while others collect: allow long waits
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, initialized)


def steps_to_capture(spec: str | Collection[int] | None, num_steps: int) -> list[int]:
    """The steps :func:`~diffdict.capture.parse_steps` reads in ``spec`` (None: every
    step), checked against the run."""
    steps = parse_steps(spec)
    if steps is None:
        return list(range(num_steps))
    for step in sorted(steps):
        if not 0 <= step < num_steps:
            raise DiffdictError(
                f"step {step} out of range: the run has {num_steps} denoising step(s), numbered 0..{num_steps - 1}"
            )
    return sorted(steps)


def collect_settings(host: HostModel, capture: str, steps: list[int], num_steps: int, guidance: float,
                     seed: int, images: bool) -> dict:
    """What a store records about how it was made; reopening with other settings is refused.
    The capture mode is recorded under the key ``"what"`` (its name in every store already
    written, so stores keep comparing equal and older versions read new ones)."""
    return {
        "model": host.name,
        "host": host.describe(),
        "capture": {"what": capture, "steps": steps, "half": "cond"},
        "generation": {"num_steps": num_steps, "guidance": guidance, "seed": seed, "noise_seed": "seed + prompt_id"},
        "images": bool(images),
    }


def collect(
    host: HostModel,
    prompts: Sequence[str],
    sites: Sequence[str],
    out: str | Path,
    capture: str = "update",
    steps: str | Collection[int] | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    guidance: float | None = None,
    dtype: str = "float16",
    chunk_size: int = 64,
    batch_size: int = 16,
    images: bool = True,
    progress: bool | None = None,
    dist: DistContext | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> dict | None:
    """Record capture mode ``capture`` at ``sites`` for every prompt into the store ``out`` (resumable).

    Returns ``store_info(out)`` on rank 0 (None on other ranks). Everything is checked
    (sites, prompts, steps, store settings) before anything is written.
    """
    from diffdict.store import StoreWriter, store_info

    dist = dist or DistContext()
    prompts = list(prompts)
    if not prompts:
        raise DiffdictError("no prompts to collect")
    require_int(batch_size, "batch size")
    num_steps = host.default_steps if num_steps is None else int(num_steps)
    if num_steps < 1:
        raise DiffdictError(f"number of denoising steps {num_steps} must be at least 1")
    guidance = host.default_guidance if guidance is None else float(guidance)
    step_list = steps_to_capture(steps, num_steps)
    recorder = Recorder(host, list(sites), capture, step_list)
    host.check_prompts(prompts)

    settings = collect_settings(host, capture, step_list, num_steps, guidance, seed, images)

    def open_writer():
        return StoreWriter.open(out, settings=settings, sites={name: info.d for name, info in recorder.infos.items()},
                                grid={name: info.grid for name, info in recorder.infos.items()}, prompts=prompts,
                                chunk_size=chunk_size, dtype=dtype)

    # rank 0 creates the store; the others reopen it (the writer refuses to mix either way)
    writer = open_writer() if dist.rank == 0 else None
    dist.barrier()
    writer = writer or open_writer()
    pending = writer.pending_chunks(dist.rank, dist.world_size)
    tokens_per_prompt = sum(len(step_list) * info.tokens for info in recorder.infos.values())
    total = sum(len(writer.chunk_prompt_ids(i)) for i in pending) * tokens_per_prompt

    from tqdm import tqdm

    show = (sys.stderr.isatty() if progress is None else progress) and dist.rank == 0
    desc = f"collect {host.name}" + (f" [rank 0 of {dist.world_size}]" if dist.world_size > 1 else "")
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not show, smoothing=0.1)
    try:
        with host.hooks(recorder.hooks()):
            for index in pending:
                acts, meta, chunk_images = collect_chunk(
                    host, recorder, prompts, writer.chunk_prompt_ids(index), seed, num_steps, guidance, batch_size
                )
                writer.write_chunk(index, acts, meta, chunk_images if images else None)
                bar.update(len(writer.chunk_prompt_ids(index)) * tokens_per_prompt)
                if on_chunk is not None:
                    on_chunk(index)
    finally:
        bar.close()
    dist.barrier()
    if dist.rank != 0:
        return None
    writer.finalize()
    return store_info(out)


def collect_chunk(host: HostModel, recorder: Recorder, prompts: Sequence[str], ids: range, seed: int,
                  num_steps: int, guidance: float, batch_size: int):
    """(acts, meta, images) of one chunk; ``recorder``'s hooks must be installed."""
    images, taken = [], []
    recorder.clear()
    for start in range(ids.start, ids.stop, batch_size):
        batch = list(range(start, min(start + batch_size, ids.stop)))
        images.append(host.generate([prompts[i] for i in batch], seeds=[seed + i for i in batch],
                                    steps=num_steps, guidance=guidance))
        taken.append(recorder.take(batch))
    return (
        {name: torch.cat([acts[name] for acts, _ in taken]) for name in recorder.infos},
        {name: {k: torch.cat([meta[name][k] for _, meta in taken]) for k in META_FIELDS} for name in recorder.infos},
        np.concatenate(images),
    )


def read_prompts(spec: str | int, seed: int = 0, split: str = "train") -> list[str]:
    """``--prompts``: a count (sampled from the shapes world) or a text file, one prompt a line
    (blank lines skipped)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()):
        count = int(spec)
        if count < 1:
            raise DiffdictError(f"--prompts count must be at least 1, got {count}")
        from diffdict.world import sample_prompts

        return sample_prompts(count, seed=seed, split=split)
    path = Path(spec)
    if not path.exists():
        raise DiffdictError(f"prompt file not found: {path} (expected a count or a text file with one prompt a line)")
    if not path.is_file():
        raise DiffdictError(f"--prompts {path} is not a file (expected a count or a text file)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DiffdictError(f"prompt file {path} is not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DiffdictError(f"prompt file {path} has no prompts")
    return prompts


__all__ = ["DistContext", "collect", "collect_chunk", "collect_settings", "distributed_from_env", "read_prompts",
           "steps_to_capture"]
