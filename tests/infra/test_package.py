"""One import name: the repository's folders install beneath `onceflow`, and nothing else
does. The wheel is installed beside the OpenAI Agents SDK (whose import name is `agents`)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("schemas", "streams", "agents", "billing", "autoscaler", "infra")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_installed_beneath_onceflow() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    mapping = tool["package-dir"]
    assert mapping["onceflow"] == "infra/_root"
    assert {mapping[f"onceflow.{f}"] for f in FOLDERS} == set(FOLDERS)
    on_disk = {"onceflow"} | {
        "onceflow." + ".".join(init.parent.relative_to(ROOT).parts)
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")
        if "_root" not in init.parts and "target" not in init.parts
    }
    assert set(tool["packages"]) == on_disk
    assert all(p == "onceflow" or p.startswith("onceflow.") for p in tool["packages"])


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """Inside the repository the bare folder names still import (the working directory is
    on the path), so a stray one would pass the tests and break the installed wheel."""
    bare = re.compile(rf"^\s*(from|import)\s+({'|'.join(FOLDERS)})(\.|\s|$)", re.M)
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    offenders = [f for f in tracked if bare.search((ROOT / f).read_text())]
    assert offenders == []


def test_python_dash_m_onceflow_runs_the_cli_from_anywhere(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "onceflow", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60)
    assert "Usage" in out.stdout and "up" in out.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; "
         "print([n for n in ('schemas','streams','agents','billing','autoscaler','infra') "
         "if u.find_spec(n)])"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"  # outside the repository, no bare name imports


@pytest.mark.integration
def test_the_wheel_installs_one_top_level_name_beside_openai_agents(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(dist), str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    (wheel,) = dist.glob("onceflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/")[0] for n in zf.namelist()}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"onceflow"}

    venv = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "openai-agents"], check=True,
                   timeout=600, capture_output=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    shown = subprocess.run([py, "-m", "pip", "show", "-f", "onceflow"], check=True,
                           capture_output=True, text=True).stdout
    files = [line.strip() for line in shown.split("Files:", 1)[1].splitlines() if line.strip()]
    tops = {f.split("/")[0] for f in files if not f.startswith("..")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"onceflow"}
    # onceflow's own dependencies come from the test's environment, after the clean one's
    # site-packages, so that `agents` can only be the SDK's.
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    both = subprocess.run(
        [py, "-c", f"import sys; sys.path.append({deps!r}); "
         "import agents, onceflow, onceflow.agents, onceflow.settings; "
         "from agents import Agent; "
         "print(agents.__file__); print(onceflow.agents.__file__); print(Agent.__name__)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert both.returncode == 0, both.stderr[-2000:]
    sdk, ours, agent = both.stdout.split()
    assert sdk.startswith(str(venv)) and "/agents/" in sdk
    assert ours.startswith(str(venv)) and "/onceflow/agents/" in ours
    assert agent == "Agent"
