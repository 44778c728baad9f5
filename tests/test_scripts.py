"""scripts/venv installs only when pyproject.toml (or the extras) changed: scripts/dev and
scripts/test restart in seconds. Run on a copy, with a stand-in interpreter that records what
it was asked to do (the real install is what the suite itself was set up with)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "venv", project / "scripts" / "venv")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    calls = tmp_path / "calls.log"
    python = project / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return project, calls


def _installs(project: Path, calls: Path, *extras: str) -> list[str]:
    before = calls.read_text().splitlines() if calls.exists() else []
    subprocess.run(["bash", str(project / "scripts" / "venv"), *extras], check=True,
                   env={**os.environ, "PATH": os.environ["PATH"]})
    after = calls.read_text().splitlines() if calls.exists() else []
    return [c for c in after[len(before):] if "install" in c and "-e" in c]


def test_scripts_venv_installs_only_when_the_project_changed(tmp_path):
    project, calls = _project(tmp_path)
    assert _installs(project, calls, "test") == ["-m pip install --quiet -e .[test]"]
    assert _installs(project, calls, "test") == []  # a restart: nothing to install
    assert _installs(project, calls) == []  # the test extra covers the plain install
    with (project / "pyproject.toml").open("a") as f:
        f.write("\n# a dependency changed\n")
    assert _installs(project, calls) == ["-m pip install --quiet -e ."]
    assert _installs(project, calls, "test") == ["-m pip install --quiet -e .[test]"]
