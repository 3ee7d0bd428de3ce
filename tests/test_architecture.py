"""The rooms' dependency rule (ARCHITECTURE.md): a lower room never imports a higher one."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# room -> rooms it must never import
FORBIDDEN = {
    "common": {"model", "controls", "sim", "streaming", "app", "train", "cluster"},
    "controls": {"model", "streaming", "app", "train", "sim", "cluster"},
    "model": {"streaming", "app", "train", "sim", "cluster"},
    "sim": {"model", "streaming", "app", "train", "cluster"},
    "streaming": {"app", "train", "collect", "cluster"},
    # Campaigns and the dataset build read what streaming writes; the app serves them, not the reverse.
    "collect": {"app", "train", "cluster"},
    # Serving past one machine sits above app/; plain `python run.py` must run without it (and Ray).
    "app": {"cluster", "ray"},
}


def imported_rooms(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_no_higher_room(room):
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for name, line in imported_rooms(path)
        if name in FORBIDDEN[room]
    ]
    assert not violations, "\n".join(violations)
