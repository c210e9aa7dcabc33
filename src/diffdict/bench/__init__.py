"""The ground-truth benchmark: can a dictionary's features detect, purely represent and
causally steer the shapes world's concepts, better than untrained weights and the raw basis?
One module per score (``detection``, ``purity``, ``absorption``, ``steering``); ``data`` holds
the ground truth and codes, ``baselines`` the two baselines, ``runner`` runs it all and
``report`` writes the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffdict.bench.runner import BASELINES, BenchConfig, run_bench


def write_bench(results: dict[str, Any], folder: str | Path) -> Path:
    """``bench.json``, ``table.md`` and the plots, each written atomically."""
    from diffdict.bench.report import markdown, plots
    from diffdict.io import atomic_target

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_target(folder / "bench.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, default=float))
    with atomic_target(folder / "table.md") as tmp:
        tmp.write_text(markdown(results))
    plots(results, folder)
    return folder / "bench.json"


__all__ = ["BASELINES", "BenchConfig", "run_bench", "write_bench"]
