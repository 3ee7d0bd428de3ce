"""The campaign desk: who takes part, which task each is on, and the campaign's progress.

A participant is a pseudonym (`p-` and 8 hex characters drawn at random) and a number (the order
they joined in, which picks their tasks: `Campaign.task_order`). Nothing else about a person is
kept: no name, no IP address, no user agent. `participants.jsonl` in the record dir holds one line
per participant: `participant`, `number`, `joined` (unix seconds) and `consent_sha256` (which
consent text they agreed to). Joining requires consent; a participant's page proves who it is with
a `secret` that is only ever held in memory (a restarted server starts new participants).

Each attempt of a task is one live session and one episode: binding a session tags its recorder
(`campaign`, `participant`, `task`, `attempt`, `scene`) and turns recording on; the participant's
next step (done, skip, retry, end, time_up) tags the episode's `outcome` and turns recording off,
which closes the episode, before moving on. Methods are called on the event loop only.
"""
from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collect.campaign import Campaign, Task

log = logging.getLogger("roam.campaign")

OUTCOMES = ("done", "skip", "retry", "end", "time_up")
PARTICIPANTS_FILE = "participants.jsonl"


class DeskError(ValueError):
    """A participant request that cannot be honoured; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Participant:
    id: str
    number: int
    secret: str
    order: list[Task]
    position: int = 0
    attempt: int = 0
    # The live session recording this participant's current attempt (None between attempts).
    session: Any = None
    finished: bool = False

    @property
    def task(self) -> Task | None:
        return None if self.finished or self.position >= len(self.order) else self.order[self.position]


class CampaignDesk:
    """The participants of one campaign run (see the module docstring)."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign
        self.record_dir = campaign.record_dir
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.participants: dict[str, Participant] = {}
        self._file = self.record_dir / PARTICIPANTS_FILE
        # Numbering continues across restarts, so assignment keeps rotating.
        self._next_number = _count_lines(self._file)

    def join(self, consent: Any) -> Participant:
        if consent is not True:
            raise DeskError(400, "joining needs consent: true (the participant agreed to the consent text)")
        pid = f"p-{secrets.token_hex(4)}"
        while pid in self.participants:
            pid = f"p-{secrets.token_hex(4)}"
        number = self._next_number
        self._next_number += 1
        participant = Participant(pid, number, secrets.token_urlsafe(18), self.campaign.task_order(number))
        self.participants[pid] = participant
        with open(self._file, "a") as f:
            f.write(json.dumps({"participant": pid, "number": number, "joined": time.time(), "consent_sha256": self.campaign.consent_sha256}) + "\n")
        log.info("campaign %s: participant %s joined (number %d)", self.campaign.name, pid, number)
        return participant

    def find(self, pid: Any, secret: Any) -> Participant:
        import hmac

        participant = self.participants.get(pid) if isinstance(pid, str) else None
        if participant is None or not isinstance(secret, str) or not hmac.compare_digest(secret.encode(), participant.secret.encode()):
            raise DeskError(403, "unknown participant, or not its secret")
        return participant

    def current(self, participant: Participant) -> dict | None:
        """The participant's current task as the page sees it (None: all done)."""
        task = participant.task
        if task is None:
            return None
        start = self.campaign.start_for(task, participant.number, participant.attempt)
        return {**task.public(), "start": start, "attempt": participant.attempt, "index": participant.position, "of": len(participant.order)}

    def bind(self, participant: Participant, session: Any, start_id: str) -> None:
        """Record `session` as the participant's current attempt (consent was given at join)."""
        task = participant.task
        if task is None:
            raise DeskError(409, "this participant has no task left")
        if participant.session is not None and participant.session is not session:
            self._stop(participant, "abandoned")
        recorder = getattr(session, "recorder", None)
        if recorder is None:
            raise DeskError(409, "this server records nothing (no record dir)")
        start = self.campaign.start_for(task, participant.number, participant.attempt)
        recorder.set_tags({
            "campaign": self.campaign.name, "participant": participant.id, "task": task.id,
            "task_instruction": task.instruction, "attempt": participant.attempt,
            "scene": Path(start).name if not start.startswith("scene:") else start, "start_id": start_id,
        })
        recorder.set_consent(True)
        participant.session = session

    def step(self, participant: Participant, outcome: Any) -> None:
        """End the current attempt with `outcome` and move on (retry: same task, next attempt)."""
        if outcome not in OUTCOMES:
            raise DeskError(400, f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        task = participant.task
        if task is None:
            raise DeskError(409, "this participant has no task left")
        self._stop(participant, outcome)
        if outcome == "retry":
            participant.attempt += 1
        elif outcome == "end":
            participant.finished = True
        else:
            participant.position += 1
            participant.attempt = 0
            participant.finished = participant.position >= len(participant.order)
        log.info("campaign %s: %s %s task %s -> %s", self.campaign.name, participant.id, outcome, task.id, "finished" if participant.finished else f"task {participant.position + 1}/{len(participant.order)}")

    def _stop(self, participant: Participant, outcome: str) -> None:
        session = participant.session
        participant.session = None
        recorder = getattr(session, "recorder", None)
        if recorder is not None and not getattr(session, "closed", False):
            recorder.set_tags({"outcome": outcome})
            recorder.set_consent(False)

    def progress(self) -> dict:
        """Participants, episodes, minutes recorded and accepted episodes (reads meta files only)."""
        return campaign_progress(self.record_dir, self.campaign.name, _count_lines(self._file))


def _count_lines(path: Path) -> int:
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def campaign_progress(record_dir: Path, campaign: str | None, participants: int | None = None) -> dict:
    """{participants, episodes, minutes, accepted, rejected} of the episodes in `record_dir` (of
    `campaign` when given). Counts a crashed episode's durable lines. Unreadable folders are skipped."""
    from collect.reviews import ReviewError, read_reviews

    try:
        reviews = read_reviews(record_dir)
    except ReviewError:
        reviews = {}
    episodes = 0
    seconds = 0.0
    seen: set[str] = set()
    accepted = rejected = 0
    if record_dir.is_dir():
        for folder in record_dir.iterdir():
            meta_path = folder / "meta.json"
            if not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
                if campaign is not None and meta.get("campaign") != campaign:
                    continue
                frames = meta.get("frames") if meta.get("complete") else _count_lines(folder / "frames.jsonl")
                seconds += float(frames) / float(meta["fps"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            episodes += 1
            if meta.get("participant"):
                seen.add(str(meta["participant"]))
            decision = reviews.get(folder.name, {}).get("decision")
            accepted += decision == "accept"
            rejected += decision == "reject"
    return {"participants": participants if participants is not None else len(seen), "episodes": episodes,
            "minutes": round(seconds / 60.0, 2), "accepted": accepted, "rejected": rejected}
