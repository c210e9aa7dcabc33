"""The pass: every member of the grid trained on the same batches, with logging,
checkpoints and the checks for non-finite losses and data (see ``diffdict.train``)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from diffdict.dictionaries.data import ActivationSource, Batch, open_activations, prefetch
from diffdict.dictionaries.fused import native_bf16
from diffdict.dictionaries.provenance import training_provenance
from diffdict.errors import DiffdictError
from diffdict.io import load_checkpoint, read_json, save_checkpoint, write_json
from diffdict.train.distributed import _all_reduce_gradients, _Distributed
from diffdict.train.members import ITDAMember, SAEMember, StepResult
from diffdict.train.run import MEMBER_FILE, METRICS_FILE, SETTINGS_FILE, STATE_FILE, _read_run, _truncate_metrics
from diffdict.train.settings import MemberSpec, TrainSettings, members_of


class _Metrics:
    """Sums over one logging interval for every member, kept on each rank and summed over
    the ranks only when a line is written."""

    def __init__(self, members: list, tokens_total: int, data_variance: float, device: torch.device):
        self.members = members
        self.tokens_total = tokens_total  # tokens of the whole run so far
        self.data_variance = data_variance
        self.device = device
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.members), 4, dtype=torch.float64, device=self.device)
        self.seconds = [0.0] * len(self.members)
        self.tokens = 0
        self.steps = 0

    def rows(self, step: int, d: int, comm: _Distributed) -> dict[str, dict[str, Any]]:
        """Every rank calls this at the same steps (it sums over the ranks); rank 0 writes."""
        all_sums = comm.sum_(self.sums).tolist()
        rows = {}
        for member, member_sums, seconds in zip(self.members, all_sums, self.seconds):
            name = member.spec.name
            if not any(member_sums) and not member.logs_idle_intervals:
                continue
            sq_error, aux, penalty, l0_tokens = member_sums
            fvu = sq_error / (self.tokens * self.data_variance) if self.data_variance > 0 else float("nan")
            row = {
                "step": step, "tokens": self.tokens_total, "lr": member.lr_at(step - 1),
                "mse": sq_error / (self.tokens * d), "fvu": fvu, "explained_variance": 1 - fvu,
                "l0": l0_tokens / self.tokens, "dead_fraction": member.dead_fraction(),
                "aux_loss": aux / self.tokens, "penalty": penalty / self.tokens,
                "tokens_per_s": self.tokens / seconds if seconds else None,
                # wall and CPU (all threads) time of this pass so far, all members together
                "elapsed_s": time.perf_counter() - self.started,
                "cpu_s": time.process_time() - self.started_cpu,
            }
            row.update(member.log_extras())
            rows[name] = row
        return rows


def train(settings: TrainSettings, out: str | Path, *, checkpoint_every: int = 500, log_every: int = 50,
          progress: bool | None = None, device: str = "cpu", stop_after_step: int | None = None,
          threads: int | None = None, members: list[MemberSpec] | None = None) -> dict[str, Path]:
    """Train ``members`` (default: the grid of ``settings``) in one pass with the shared data,
    batches, schedule and seed of ``settings``; return member name → dictionary folder.

    An existing ``out`` with the same settings is resumed from its last checkpoint; with
    different settings it is refused. ``stop_after_step`` stops once that many steps are done
    without writing a checkpoint, as a kill would (for tests). ``threads``: torch CPU threads
    during the pass (default: one for a small step, see ``SMALL_STEP_MACS``, else torch's own);
    the caller's setting is restored after.
    """
    if members is not None:
        settings = dataclasses.replace(settings, members=[dataclasses.asdict(m) for m in members])
    settings.validate()
    members_of(settings)  # checked before anything is written
    if checkpoint_every < 1 or log_every < 1:
        raise DiffdictError("--checkpoint-every and --log-every must be positive")
    out = Path(out)
    torch_device = torch.device(device)
    if settings.bf16 is None:
        settings = dataclasses.replace(settings, bf16=_default_bf16(out, torch_device))
    source = open_activations(settings.acts, settings.site)
    comm = _Distributed(torch_device)
    before = torch.get_num_threads()
    if threads is None and torch_device.type == "cpu" and _encoder_macs(settings, source.d, comm) < SMALL_STEP_MACS:
        threads = 1
    try:
        if threads:
            torch.set_num_threads(threads)
        return _train(settings, out, source, comm, torch_device, checkpoint_every, log_every, progress,
                      stop_after_step)
    finally:
        torch.set_num_threads(before)
        comm.close()


def _default_bf16(out: Path, device: torch.device) -> bool:
    """bf16 where the device computes it natively; a run being resumed keeps its own."""
    stored = read_json(out / SETTINGS_FILE).get("bf16") if (out / SETTINGS_FILE).exists() else None
    return stored if isinstance(stored, bool) else native_bf16(device)


# Below this many encoder multiply-adds a step, a pass runs on one thread: its operations
# are too small for OpenMP's fork and join to pay, and on a machine whose other cores are
# busy, threads waiting for each other make a toy-scale step 20x slower (d = 128, 512
# features, batch 1024 with the other core taken: 3.8k tokens/s on 2 threads, 78k on 1).
SMALL_STEP_MACS = 1e9


def _encoder_macs(settings: TrainSettings, d: int, comm: _Distributed) -> float:
    widths = [spec.options.get("width") or round(spec.options["expansion"] * d)
              for spec in members_of(settings) if spec.arch != "itda"]
    return settings.batch_size / comm.world_size * d * sum(widths)


def _train(settings, out, source: ActivationSource, comm: _Distributed, device, checkpoint_every, log_every,
           progress, stop_after_step) -> dict[str, Path]:
    d = source.d
    specs = members_of(settings)
    source.check_batch_size(settings.batch_size, comm.world_size)
    start = _read_run(out, settings)
    comm.barrier()  # every rank has read the folder before rank 0 writes to it
    total = settings.total_steps
    if start >= total:  # finished: the dictionaries are saved and there is nothing to resume
        return {spec.name: out / spec.name for spec in specs}
    members = [(ITDAMember if spec.arch == "itda" else SAEMember)(spec, settings, d, device) for spec in specs]
    writer = comm.rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / SETTINGS_FILE, settings.to_json())

    if start:
        for member in members:
            member.load_state(load_checkpoint(out / member.spec.name / f"checkpoint-{start}.safetensors"))
        data_variance = float(read_json(out / STATE_FILE)["data_variance"])
    else:
        sample = source.sample(settings.init_tokens, settings.seed).to(device)
        if not torch.isfinite(sample).all():
            raise DiffdictError(f"non-finite values in the initialisation sample of {source.name}")
        for member in members:
            member.initialize(sample)
        # E‖x − x̄‖² per token: the denominator of the training FVU
        data_variance = float((sample.double() - sample.double().mean(0)).pow(2).sum(1).mean())
        del sample
    if writer:
        for member in members:
            folder = out / member.spec.name
            folder.mkdir(exist_ok=True)
            write_json(folder / MEMBER_FILE, {"name": member.spec.name, "arch": member.spec.arch,
                                              "options": member.spec.options})
            _truncate_metrics(folder / METRICS_FILE, start)

    record = training_provenance(source, settings.acts, settings.seed)
    last_checkpoint = start
    metrics = _Metrics(members, start * settings.batch_size, data_variance, device)
    batches = prefetch(source.batches(settings.batch_size, settings.seed, start, comm.rank, comm.world_size))
    # progress None: tqdm shows the bar on a terminal only
    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
               disable=True if not writer else (None if progress is None else not progress))

    def checkpoint(step: int) -> None:
        """The last step saves the dictionaries only: a finished run is never resumed."""
        if writer:
            for member in members:
                if step < total:
                    save_checkpoint(out / member.spec.name / f"checkpoint-{step}.safetensors", member.state())
                member.model.provenance = {**record, "tokens": step * settings.batch_size}
                member.model.save(out / member.spec.name)
            write_json(out / STATE_FILE, {"step": step, "total_steps": total, "done": step >= total,
                                          "data_variance": data_variance})
            for member in members:
                for old in (out / member.spec.name).glob("checkpoint-*.safetensors"):
                    if old.name != f"checkpoint-{step}.safetensors":
                        old.unlink()
        comm.barrier()

    def log(step: int) -> None:
        if metrics.steps:
            rows = metrics.rows(step, d, comm)
            if writer:
                for name, row in rows.items():
                    with open(out / name / METRICS_FILE, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                first = next(iter(rows.values()), None)
                if first is not None:
                    bar.set_postfix(fvu=f"{first['fvu']:.4f}", l0=f"{first['l0']:.1f}")
        metrics.reset()

    try:
        for step in range(start, total):
            if stop_after_step is not None and step >= stop_after_step:
                return {}
            batch = next(batches)
            batch.x = batch.x.to(device, non_blocking=True)
            normalized: dict[str, torch.Tensor] = {}
            results = []
            for member in members:
                began = time.perf_counter()
                result = member.forward_backward(batch, comm, normalized)
                result.seconds = time.perf_counter() - began
                results.append(result)
            del normalized
            fired = _check_finite(results, batch, members, source, comm, step, out, last_checkpoint)
            _all_reduce_gradients(members, comm)
            for index, (member, result, member_fired) in enumerate(zip(members, results, fired)):
                began = time.perf_counter()
                member.step(step, member_fired, settings.batch_size)
                metrics.sums[index] += result.sums()
                metrics.seconds[index] += result.seconds + time.perf_counter() - began
            metrics.tokens += settings.batch_size
            metrics.tokens_total += settings.batch_size
            metrics.steps += 1
            bar.update(1)
            done = step + 1
            if done % log_every == 0 or done % checkpoint_every == 0 or done == total:
                log(done)
            if done % checkpoint_every == 0 or done == total:
                checkpoint(done)
                last_checkpoint = done
    finally:
        bar.close()
        batches.close()
    return {member.spec.name: out / member.spec.name for member in members}


def _check_finite(results: list[StepResult], batch: Batch, members, source, comm: _Distributed, step: int, out,
                  last_checkpoint: int) -> list[torch.Tensor]:
    """Raise if a member's loss or the batch is not finite on any rank; return each
    member's fired features, over all ranks. One host sync a step (all members at once);
    the batch is searched for bad rows only when a loss is not finite. Under torchrun one
    collective carries the flags and the fired features."""
    diverged = ~torch.stack([r.finite for r in results])
    bad_rows = (~torch.isfinite(batch.x)).any(1) if bool(diverged.any()) else None
    fired = [r.fired for r in results]
    bad_data = bad_rows is not None and bool(bad_rows.any())
    if comm.active:
        flags = comm.max_(torch.cat([torch.tensor([float(bad_data)], device=diverged.device), diverged.float()]
                                    + [f.float() for f in fired]))
        bad_data, diverged = bool(flags[0]), flags[1: 1 + len(results)].bool()
        fired = list(torch.split(flags[1 + len(results):].bool(), [f.numel() for f in fired]))
        stop = bad_data or bool(diverged.any())
    else:
        stop = bad_rows is not None  # some loss diverged
    if not stop:
        return fired
    kept = f"the last good checkpoint (step {last_checkpoint}) is kept in {out}" if last_checkpoint else \
        f"no checkpoint was written yet in {out}"
    if bad_data:
        if bad_rows is not None and bad_rows.any():
            where = f"{batch.describe_row(int(bad_rows.nonzero()[0]))} of {source.name}"
        else:
            where = f"another process's share of the batch from {source.name}"
        raise DiffdictError(f"NaN or infinite activations in the batch of step {step} ({where}); "
                            f"training stopped, {kept}")
    names = [m.spec.name for m, flag in zip(members, diverged) if flag]
    raise DiffdictError(f"the loss of {', '.join(names)} became NaN or infinite at step {step} "
                        f"(batch from {source.name}); training stopped, {kept}")
