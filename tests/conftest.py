"""Shared test fixtures: where the golden dumps and darknet's cfg files are."""

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
#: Golden dumps copied into the repository (strict build; the large bn-b8c64h26w26 is read from shared/).
GOLDEN = DATA / "golden" / "strict"
#: ``../shared`` beside the checkout: present on developer machines and in CI, absent on a fresh clone.
SHARED = Path(os.environ.get("DARKPY_SHARED", TESTS.parent.parent / "shared"))


def golden_cases(prefix=""):
    """Names of the golden cases in tests/data whose name starts with ``prefix``."""
    return sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith(prefix))


def shared_path(*parts):
    """A path under ../shared, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared not beside this checkout)")
    return path
