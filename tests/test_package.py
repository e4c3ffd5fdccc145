"""The package as a new user meets it: importing it from a source checkout
whose C core was never built."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.quick
def test_unbuilt_checkout_says_what_to_do(tmp_path: Path) -> None:
    """`import pyipc` from a checkout without the built C core (after a
    non-editable install, say) raises ImportError saying how to go on."""
    shutil.copytree(ROOT / "pyipc", tmp_path / "pyipc",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # -S: without site-packages, where an editable install's import hook
    # would find the C core of this checkout.
    p = subprocess.run([sys.executable, "-S", "-c", "import pyipc"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: pyipc was imported from ")
    assert "pip install -e ." in last and "another directory" in last
