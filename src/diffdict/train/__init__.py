"""The trainer: a list of dictionaries fitted in one pass over the activations.

Members (one SAE + optimiser, or one ITDA build, each) come from ``settings.members`` or the
grid of the settings' comma-separated options (``grid_members``). Each step: the batch
f(seed, step), this rank's slice; every member's forward and backward (ITDA: grow the
dictionary); gradients all-reduced in one flat buffer (torchrun); every member's optimiser
step, unit-norm decoder and dead-feature counters. Every ``log_every`` steps a line of
RUN/<member>/metrics.jsonl; every ``checkpoint_every`` RUN/<member>/checkpoint-<step>.safetensors,
then RUN/state.json names the step (the commit point); the last step saves the dictionaries only.

One host sync a step (all members' loss flags at once), metrics summed on the device and
read every log_every steps; members with the same input normalisation share the
normalised batch. Adam is ``diffdict.adam`` (``torch.optim`` costs 3 s of imports).

Everything a step does is a function of (settings, step) and the checkpointed state, so a
run killed at any moment and started again with the same settings ends with the same
weights as an uninterrupted one. ``settings.json`` holds what determines the weights; a
different command on an existing RUN folder is refused.

``RUN/<member>/metrics.jsonl`` has one line per ``log_every`` steps, averaged over them:
step, tokens, lr, mse (per element), fvu, explained_variance, l0, dead_fraction (share of
features silent for ``dead_window`` tokens), aux_loss (the AuxK term before α), penalty,
tokens_per_s (this member's own compute), elapsed_s and cpu_s (wall and CPU time of the
pass). Metrics are in the activations' own space, undoing any input normalisation.

Data parallel: ``torchrun --nproc_per_node=N -m diffdict train ...`` (gloo on CPU, NCCL
on GPU). Each rank takes a contiguous 1/N of every global batch; gradients, fired
features and metrics are summed across ranks, so N processes follow the same trajectory
as one (up to float rounding). ITDA members gather the whole batch on every rank.
"""

from diffdict.train.loop import SMALL_STEP_MACS, train
from diffdict.train.members import ITDAMember, SAEMember, StepResult
from diffdict.train.run import MEMBER_FILE, METRICS_FILE, SETTINGS_FILE, STATE_FILE, load_run_settings, run_members
from diffdict.train.settings import (GRID_OPTIONS, NAME_FORMATS, MemberSpec, TrainSettings, default_lr, grid_members,
                                     lr_at, mechanism_flags, members_of)

__all__ = [
    "GRID_OPTIONS", "ITDAMember", "MEMBER_FILE", "METRICS_FILE", "MemberSpec", "NAME_FORMATS", "SAEMember",
    "SETTINGS_FILE", "SMALL_STEP_MACS", "STATE_FILE", "StepResult", "TrainSettings", "default_lr", "grid_members",
    "load_run_settings", "lr_at", "mechanism_flags", "members_of", "run_members", "train",
]
