"""A data-collection campaign: one TOML file naming the consent text, the tasks and the outputs.

    name = "trees"
    consent = "We record the frames you see and the keys you press. No names, no addresses. ..."
    assignment = "round-robin"        # or "random" (seeded by `seed`)
    seed = 0
    record_dir = "recordings/trees"   # relative to this file; where the episodes are recorded
    dataset = "datasets/trees"        # relative to this file; what `run.py dataset build` writes

    [filters]                         # optional; the defaults are `FilterConfig`'s
    min_seconds = 2.0

    [[tasks]]
    id = "tallest-tree"
    instruction = "Walk to the tallest tree, then look back."
    starts = ["scene:1", "images/park.jpg"]   # scene ids of the server, or image files (relative)
    time_limit_s = 60                          # a time limit, a goal text, or both
    goal = "you stand under the tree, facing where you came from"

`load_campaign(path)` returns a frozen `Campaign` or raises `CampaignError` (a ValueError) whose
message is one line naming the file and the bad key, e.g. `campaign.toml: tasks[1].time_limit_s
must be a positive number, got -5`. Unknown keys are errors too (a typo must not be ignored).

Assignment is a pure function of (campaign, participant number): participant k gets every task
once, in the campaign's order rotated by k (round-robin) or shuffled by `Random(seed * 1_000_003 + k)`
(random); attempt a of a task starts at `starts[(k + a) % len(starts)]`, so retries and
participants spread over the start scenes.
"""
from __future__ import annotations

import hashlib
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSIGNMENTS = ("round-robin", "random")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Longest consent text and instruction accepted (they are shown on a page, not stored per frame).
MAX_CONSENT_CHARS = 20_000
MAX_INSTRUCTION_CHARS = 2_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class CampaignError(ValueError):
    """A campaign file that cannot be used; the message is one line naming the file and key."""


@dataclass(frozen=True)
class FilterConfig:
    """Quality filters of the dataset build (`collect.quality`); a threshold of 0 turns a filter off.

    min_seconds: an episode shorter than this is `too_short`.
    max_idle_seconds: a longer run of frames with no input change is `idle`.
    max_stuck_seconds: a longer run of frames whose pose does not change is `stuck`.
    max_dropped_fraction: more skipped frame ids than this fraction of the frames is `dropped_frames`.
    """

    min_seconds: float = 2.0
    max_idle_seconds: float = 10.0
    max_stuck_seconds: float = 10.0
    max_dropped_fraction: float = 0.05

    def __post_init__(self) -> None:
        for name in ("min_seconds", "max_idle_seconds", "max_stuck_seconds", "max_dropped_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"filters.{name} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class Task:
    """One task: what the participant is asked to do, where they start, when it ends."""

    id: str
    instruction: str
    # Scene ids ("scene:1") or absolute image paths.
    starts: tuple[str, ...]
    time_limit_s: float | None = None
    goal: str | None = None

    def public(self) -> dict[str, Any]:
        """What the participant's page is told (image paths are not)."""
        return {"id": self.id, "instruction": self.instruction, "time_limit_s": self.time_limit_s, "goal": self.goal}


@dataclass(frozen=True)
class Campaign:
    """A validated campaign file (see the module docstring). Paths are absolute."""

    path: Path
    name: str
    consent: str
    tasks: tuple[Task, ...]
    assignment: str
    seed: int
    record_dir: Path
    dataset: Path
    filters: FilterConfig = field(default_factory=FilterConfig)

    @property
    def consent_sha256(self) -> str:
        """Which consent text a participant agreed to (stored with the participant, not the text)."""
        return hashlib.sha256(self.consent.encode()).hexdigest()

    def task(self, task_id: str) -> Task | None:
        return next((t for t in self.tasks if t.id == task_id), None)

    def task_order(self, participant_number: int) -> list[Task]:
        """The tasks participant `participant_number` (0, 1, ...) does, in order: each once."""
        n = len(self.tasks)
        if self.assignment == "round-robin":
            k = participant_number % n
            return list(self.tasks[k:] + self.tasks[:k])
        order = list(self.tasks)
        random.Random(self.seed * 1_000_003 + participant_number).shuffle(order)
        return order

    def start_for(self, task: Task, participant_number: int, attempt: int) -> str:
        """The start (scene id or image path) of `attempt` (0, 1, ...) of `task` for that participant."""
        return task.starts[(participant_number + attempt) % len(task.starts)]


def _fail(where: str, message: str) -> CampaignError:
    return CampaignError(f"{where}: {message}")


def _check_keys(table: dict, allowed: set[str], required: set[str], where: str, label: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(where, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(f'{label}{k}' for k in unknown)} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(table))
    if missing:
        raise _fail(where, f"missing key{'s' if len(missing) > 1 else ''} {', '.join(f'{label}{k}' for k in missing)}")


def _text(table: dict, key: str, where: str, label: str, limit: int, required: bool = True) -> str | None:
    value = table.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise _fail(where, f"{label}{key} must be a non-empty string of at most {limit} characters, got {_brief(value)}")
    return value.strip()


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:45] + f"... ({len(text)} chars)"


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, f"{key} must be a folder path string, got {_brief(value)}")
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _task(raw: Any, index: int, base: Path, where: str) -> Task:
    label = f"tasks[{index}]."
    if not isinstance(raw, dict):
        raise _fail(where, f"tasks[{index}] must be a table ([[tasks]]), got {_brief(raw)}")
    _check_keys(raw, {"id", "instruction", "starts", "time_limit_s", "goal"}, {"id", "instruction", "starts"}, where, label)
    task_id = raw["id"]
    if not isinstance(task_id, str) or not _ID.match(task_id):
        raise _fail(where, f"{label}id must be 1-64 of [A-Za-z0-9_.-] starting with a letter or digit, got {_brief(task_id)}")
    instruction = _text(raw, "instruction", where, label, MAX_INSTRUCTION_CHARS)
    goal = _text(raw, "goal", where, label, MAX_INSTRUCTION_CHARS, required=False)
    limit = raw.get("time_limit_s")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 3600):
        raise _fail(where, f"{label}time_limit_s must be a positive number of seconds (at most 3600), got {_brief(limit)}")
    if limit is None and goal is None:
        raise _fail(where, f"tasks[{index}] needs a time_limit_s or a goal (or both)")
    starts = raw["starts"]
    if not isinstance(starts, list) or not starts:
        raise _fail(where, f"{label}starts must be a non-empty list of scene ids or image files, got {_brief(starts)}")
    resolved = []
    for j, start in enumerate(starts):
        if not isinstance(start, str) or not start:
            raise _fail(where, f"{label}starts[{j}] must be a scene id or an image path, got {_brief(start)}")
        if start.startswith("scene:"):
            resolved.append(start)
            continue
        if not start.lower().endswith(IMAGE_SUFFIXES):
            raise _fail(where, f"{label}starts[{j}] {start!r} is neither a scene id (scene:N) nor an image file ({', '.join(IMAGE_SUFFIXES)})")
        image = _resolve(base, start, where, f"{label}starts[{j}]")
        if not image.is_file():
            raise _fail(where, f"{label}starts[{j}]: image {str(image)!r} does not exist")
        resolved.append(str(image))
    return Task(id=task_id, instruction=instruction, starts=tuple(resolved), time_limit_s=None if limit is None else float(limit), goal=goal)


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file (CampaignError with a one-line message if it is bad)."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CampaignError(f"{where}: no such campaign file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CampaignError(f"{where}: not readable ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise CampaignError(f"{where}: not valid TOML ({error})") from None
    base = path.resolve().parent
    _check_keys(raw, {"name", "consent", "tasks", "assignment", "seed", "record_dir", "dataset", "filters"}, {"name", "consent", "tasks", "record_dir", "dataset"}, where, "")
    name = raw["name"]
    if not isinstance(name, str) or not _ID.match(name):
        raise _fail(where, f"name must be 1-64 of [A-Za-z0-9_.-] starting with a letter or digit, got {_brief(name)}")
    consent = _text(raw, "consent", where, "", MAX_CONSENT_CHARS)
    assignment = raw.get("assignment", "round-robin")
    if assignment not in ASSIGNMENTS:
        raise _fail(where, f"assignment must be one of {', '.join(ASSIGNMENTS)}, got {_brief(assignment)}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(where, f"seed must be an integer >= 0, got {_brief(seed)}")
    tasks = raw["tasks"]
    if not isinstance(tasks, list) or not tasks:
        raise _fail(where, "tasks must be a non-empty list of [[tasks]] tables")
    parsed = tuple(_task(t, i, base, where) for i, t in enumerate(tasks))
    ids = [t.id for t in parsed]
    duplicate = sorted({i for i in ids if ids.count(i) > 1})
    if duplicate:
        raise _fail(where, f"task ids must be unique; repeated: {', '.join(duplicate)}")
    filters_raw = raw.get("filters", {})
    if not isinstance(filters_raw, dict):
        raise _fail(where, f"filters must be a table, got {_brief(filters_raw)}")
    known = set(FilterConfig.__dataclass_fields__)
    _check_keys(filters_raw, known, set(), where, "filters.")
    try:
        filters = FilterConfig(**filters_raw)
    except ValueError as error:
        raise _fail(where, str(error)) from None
    record_dir = _resolve(base, raw["record_dir"], where, "record_dir")
    dataset = _resolve(base, raw["dataset"], where, "dataset")
    if record_dir == dataset or dataset in record_dir.parents or record_dir in dataset.parents:
        raise _fail(where, f"record_dir {record_dir} and dataset {dataset} must be separate folders (neither inside the other)")
    return Campaign(path=path.resolve(), name=name, consent=consent, tasks=parsed, assignment=assignment, seed=seed, record_dir=record_dir, dataset=dataset, filters=filters)
