"""Every ``pip install 'diffdict[EXTRA]'`` that an error message or docstring names is an
extra of pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED_EXTRA = re.compile(r"diffdict\[([^\]]+)\]")


def named_extras() -> dict[str, set[str]]:
    """extra -> the source files naming it; ``diffdict[{NAME}]`` resolves NAME = "..." in
    the same file."""
    named: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src" / "diffdict").rglob("*.py")):
        text = path.read_text()
        for match in NAMED_EXTRA.finditer(text):
            for name in match.group(1).split(","):
                name = name.strip()
                if name.startswith("{") and name.endswith("}"):
                    constant = re.search(rf"^{re.escape(name[1:-1])}\s*=\s*[\"']([^\"']+)[\"']", text, re.M)
                    assert constant, f"{path.relative_to(ROOT)} names diffdict[{name}] but defines no {name[1:-1]}"
                    name = constant.group(1)
                named.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return named


def test_every_named_extra_exists():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = named_extras()
    assert {"metrics", "app", "real"} <= set(named)  # the scan finds the known ones
    missing = {name: sorted(files) for name, files in named.items() if name not in extras}
    assert not missing, f"extras named in src/ but absent from pyproject.toml: {missing}"


def test_metrics_extra_has_every_backbone_package():
    from diffdict.metrics.backbones import EXTRA

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    packages = {re.split(r"[<>=\[ ]", requirement)[0].lower().replace("_", "-") for requirement in extras[EXTRA]}
    text = (ROOT / "src" / "diffdict" / "metrics" / "backbones.py").read_text()
    required = {package.lower().replace("_", "-") for package in re.findall(r'require\("[\w.]+", "([\w-]+)"', text)}
    assert required == {"open-clip-torch", "lpips", "pytorch-fid"} and required <= packages
