"""The run folder: its files, resuming (the step to start from, refusing other settings),
the metrics log cut back to a checkpoint, and the member folders of a finished run::

    RUN/settings.json           what determines the weights (TrainSettings)
    RUN/state.json              the last checkpoint's step (the commit point)
    RUN/<member>/member.json    the member's name, architecture and grid options
    RUN/<member>/metrics.jsonl  one line per log_every steps
    RUN/<member>/checkpoint-<step>.safetensors, config.json, model.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

from diffdict.errors import DiffdictError
from diffdict.io import read_json
from diffdict.train.settings import TrainSettings

SETTINGS_FILE = "settings.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
MEMBER_FILE = "member.json"


def _read_run(out: Path, settings: TrainSettings) -> int:
    """The step to resume from (0 for a new run); refuses a run with other settings."""
    settings_path = out / SETTINGS_FILE
    if settings_path.exists():
        stored = read_json(settings_path)
        if stored != settings.to_json():
            raise DiffdictError(
                f"{out} holds a run with different settings ({_settings_differences(stored, settings.to_json())}); "
                "rerun with the same settings (or --resume) to continue it, or use a new --out folder"
            )
        state_path = out / STATE_FILE
        return int(read_json(state_path)["step"]) if state_path.exists() else 0
    if out.exists() and any(out.iterdir()):
        raise DiffdictError(f"{out} exists and is not a diffdict training run; use a new --out folder")
    return 0


def _settings_differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill ends the file
    path.write_text("".join(line + "\n" for line in kept))


def load_run_settings(out: str | Path) -> TrainSettings:
    path = Path(out) / SETTINGS_FILE
    if not path.exists():
        raise DiffdictError(f"{out} is not a training run (no {SETTINGS_FILE}); nothing to resume")
    return TrainSettings.from_json(read_json(path))


def run_members(out: str | Path) -> list[Path]:
    """The member folders of a run that hold a dictionary."""
    out = Path(out)
    if not (out / SETTINGS_FILE).exists():
        raise DiffdictError(f"{out} is not a training run (no {SETTINGS_FILE})")
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.json").exists())
