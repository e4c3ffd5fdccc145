"""The package type-checks cleanly under ``mypy --strict`` (with the stub
for the compiled module, pyipc/_core.pyi, and the py.typed marker)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_mypy_strict_is_clean() -> None:
    """`mypy --strict pyipc` reports no error."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the 'test' extra)")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "pyipc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_package_ships_typing_files() -> None:
    """py.typed and the compiled module's stub are in the package."""
    pkg = ROOT / "pyipc"
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_core.pyi").is_file()
