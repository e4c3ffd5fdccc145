"""pytest configuration for the benches (``pytest benches/``).

The benches are ``bench_*.py`` files, which the default test run never
collects (``testpaths = ["tests"]`` and the usual ``test_*.py`` pattern);
this hook makes pytest collect them when it is pointed at this directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest


def pytest_collect_file(file_path: Path, parent: Any) -> Optional[pytest.Module]:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None
