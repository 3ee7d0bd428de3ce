"""Reviewer decisions: `<record dir>/reviews.json`, written by /review and read by the dataset build.

    {"format": "roam.reviews", "version": 1,
     "decisions": {"<episode folder name>": {"decision": "accept" | "reject", "time": 1767000000.0, "note": "..."}}}

An accepted episode goes into the dataset even if a quality filter flagged it (a person looked);
a rejected one never does; one without a decision goes in unless a filter flagged it. The file is
rewritten whole (temp file + rename) under a lock, so a reader never sees half of it.
`read_reviews` raises `ReviewError` (a ValueError) with a one-line message naming the file and entry.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from streaming.recorder import write_json_atomic

REVIEWS_FILE = "reviews.json"
REVIEWS_FORMAT = "roam.reviews"
DECISIONS = ("accept", "reject")
MAX_NOTE_CHARS = 1000
_lock = threading.Lock()


class ReviewError(ValueError):
    """A reviews.json that cannot be used (one-line message)."""


def read_reviews(record_dir: str | Path) -> dict[str, dict]:
    """{episode name: {"decision", "time", "note"}}; {} when there is no reviews.json yet."""
    path = Path(record_dir) / REVIEWS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReviewError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != REVIEWS_FORMAT:
        raise ReviewError(f"{path}: not a {REVIEWS_FORMAT} file (its format is {raw.get('format') if isinstance(raw, dict) else type(raw).__name__!r})")
    if raw.get("version") != 1:
        raise ReviewError(f"{path}: version {raw.get('version')!r}; this reader knows version 1")
    decisions = raw.get("decisions")
    if not isinstance(decisions, dict):
        raise ReviewError(f"{path}: decisions must be an object keyed by episode name")
    for name, entry in decisions.items():
        if not isinstance(entry, dict):
            raise ReviewError(f"{path}: decisions[{name!r}] must be an object, got {type(entry).__name__}")
        if entry.get("decision") not in DECISIONS:
            raise ReviewError(f"{path}: decisions[{name!r}].decision must be accept or reject, got {entry.get('decision')!r}")
        note = entry.get("note", "")
        if not isinstance(note, str):
            raise ReviewError(f"{path}: decisions[{name!r}].note must be a string")
    return decisions


def write_decision(record_dir: str | Path, episode: str, decision: str | None, note: str = "") -> dict[str, dict]:
    """Set (or with decision None, clear) one episode's decision; returns all decisions."""
    if decision is not None and decision not in DECISIONS:
        raise ReviewError(f"decision must be accept, reject or null (clear), got {decision!r}")
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"note must be a string of at most {MAX_NOTE_CHARS} characters")
    with _lock:
        decisions = read_reviews(record_dir)
        if decision is None:
            decisions.pop(episode, None)
        else:
            decisions[episode] = {"decision": decision, "time": time.time(), "note": note}
        write_json_atomic(Path(record_dir) / REVIEWS_FILE, {"format": REVIEWS_FORMAT, "version": 1, "decisions": decisions})
    return decisions
