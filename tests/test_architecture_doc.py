"""docs/architecture.md stays true: it names every Redis key and field `shared/keys.py` defines, as rendered,
and its reading list of a voice turn is at most 12 files that exist."""

from __future__ import annotations

import inspect
import re

from shared import keys
from tests.conftest import REPO

DOC = (REPO / "docs" / "architecture.md").read_text()


def _defined() -> dict[str, str]:
    """Every public name of shared.keys and what it renders to (functions with `<param>` placeholders)."""
    out = {}
    for name, obj in vars(keys).items():
        if name.startswith("_") or name == "annotations":
            continue
        if inspect.isfunction(obj) and obj.__module__ == keys.__name__:
            params = inspect.signature(obj).parameters
            out[name] = obj(*(f"<{p}>" for p in params))
        elif isinstance(obj, str):
            out[name] = obj
    return out


def test_every_key_and_field_is_documented_as_rendered() -> None:
    defined = _defined()
    assert len(defined) >= 40  # the checker sees the module
    missing = [name for name in defined if f"`keys.{name}" not in DOC]
    assert not missing, f"docs/architecture.md does not mention {missing}"
    wrong = [f"{name} = {value!r}" for name, value in defined.items() if f"`{value}`" not in DOC]
    assert not wrong, f"docs/architecture.md does not show these as rendered: {wrong}"
    assert "`keys.PERMANENT`" in DOC


def test_reading_list_traces_a_turn_in_at_most_12_existing_files() -> None:
    section = DOC.split("## Trace a voice turn", 1)[1].split("\n## ", 1)[0]
    files = re.findall(r"^\d+\. `([^`]+)`", section, flags=re.M)
    assert 8 <= len(files) <= 12, files
    assert all((REPO / f).is_file() for f in files), [f for f in files if not (REPO / f).is_file()]
