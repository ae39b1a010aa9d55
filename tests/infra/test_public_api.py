"""The public surface is pinned: each package's `__all__` is its API, every name in it
resolves, and the whole list is frozen here (as the Temporal SDK freezes its exports).

A change to it is deliberate: update `public_api.json` in the same commit, by running
`python -m tests.infra.test_public_api`, and say in the commit what changed and why.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FROZEN = Path(__file__).with_name("public_api.json")


def public_packages() -> list[str]:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    return [p for p in packages if "_impl" not in p.split(".")]


def surface() -> dict[str, list[str]]:
    return {p: sorted(importlib.import_module(p).__all__) for p in public_packages()}


@pytest.mark.parametrize("package", public_packages())
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert isinstance(module.__all__, list | tuple), f"{package} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == [], f"{package}.__all__ names what it does not define: {missing}"


def test_the_public_surface_is_the_frozen_one() -> None:
    frozen = json.loads(FROZEN.read_text())
    now = surface()
    changes = {p: {"added": sorted(set(now.get(p, [])) - set(frozen.get(p, []))),
                   "removed": sorted(set(frozen.get(p, [])) - set(now.get(p, [])))}
               for p in sorted(set(now) | set(frozen)) if now.get(p) != frozen.get(p)}
    assert changes == {}, (
        f"the public API changed: {changes}; if that is meant, run "
        "`python -m tests.infra.test_public_api` and commit tests/infra/public_api.json")


if __name__ == "__main__":
    FROZEN.write_text(json.dumps(surface(), indent=1) + "\n")
    print(f"wrote {FROZEN}")
