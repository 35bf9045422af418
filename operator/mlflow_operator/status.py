"""Pure computation of an MLflowServer's status from what the reconcile observed.

No I/O here: the handlers gather an `Observation`, this module turns it into the status
dict (conditions Ready / Progressing / Degraded, phase, observedGeneration, url, ...).
"""
from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why the server is Degraded: a CamelCase reason and a message without secrets."""
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Migration:
    job: str
    state: str  # Pending | Running | Succeeded | Failed

    @classmethod
    def from_job(cls, name: str, job: Mapping[str, Any] | None) -> Migration:
        if job is None:
            return cls(name, "Pending")
        status = job.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if (status.get("succeeded") or 0) >= 1 or conditions.get("Complete") == "True":
            return cls(name, "Succeeded")
        if conditions.get("Failed") == "True":
            return cls(name, "Failed")
        return cls(name, "Running")


@dataclasses.dataclass(frozen=True)
class Rollout:
    desired: int
    ready: int = 0
    updated: int = 0
    available: int = 0
    current: bool = False  # the Deployment controller has seen the latest generation

    @classmethod
    def from_deployment(cls, desired: int, deployment: Mapping[str, Any] | None) -> Rollout:
        if deployment is None:
            return cls(desired)
        status = deployment.get("status") or {}
        generation = (deployment.get("metadata") or {}).get("generation") or 0
        return cls(desired=desired,
                   ready=int(status.get("readyReplicas") or 0),
                   updated=int(status.get("updatedReplicas") or 0),
                   available=int(status.get("availableReplicas") or 0),
                   current=int(status.get("observedGeneration") or 0) >= int(generation))

    @property
    def complete(self) -> bool:
        return (self.current and self.updated >= self.desired
                and self.ready >= self.desired and self.available >= self.desired)


@dataclasses.dataclass(frozen=True)
class Observation:
    generation: int
    problem: Problem | None = None
    migration: Migration | None = None
    rollout: Rollout | None = None
    url: str | None = None
    audience: str | None = None
    admin_secret: str | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int,
               previous: Mapping[str, Mapping[str, Any]], now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(kind) or {}
    # lastTransitionTime only moves when the status flips, as Kubernetes conventions ask.
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": since or now}


def _progress(obs: Observation) -> tuple[bool, str, str]:
    if obs.problem is not None:
        return False, obs.problem.reason, "Waiting for the problem to be fixed"
    mig = obs.migration
    if mig is not None and mig.state != "Succeeded":
        return True, "MigrationRunning", f"Waiting for the database migration Job {mig.job}"
    roll = obs.rollout
    if roll is None or not roll.complete:
        ready = roll.ready if roll else 0
        desired = roll.desired if roll else 0
        pending = "" if roll is None or roll.current and roll.updated >= desired \
            else "; the new pod template is rolling out"
        return True, "RollingOut", f"{ready}/{desired} replicas ready{pending}"
    return False, "Reconciled", "All objects are up to date"


def _readiness(obs: Observation) -> tuple[bool, str, str]:
    roll = obs.rollout
    if roll is None:
        return False, "NotDeployed", "The Deployment does not exist yet"
    if roll.desired == 0:
        return True, "ScaledToZero", "Scaled to zero replicas"
    if roll.ready >= 1 and roll.complete:
        return True, "ReplicasReady", f"{roll.ready}/{roll.desired} replicas ready"
    if not roll.current or roll.updated < roll.desired:
        return False, "RollingOut", f"{roll.ready}/{roll.desired} replicas ready, not all on the new pod template"
    return False, "ReplicasNotReady", f"{roll.ready}/{roll.desired} replicas ready"


def compute(obs: Observation, previous: Mapping[str, Any] | None = None,
            now: str | None = None) -> dict[str, Any]:
    """The full `.status` for the observation; `previous` is the status now stored."""
    now = now or _now()
    old = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    ready, ready_reason, ready_msg = _readiness(obs)
    progressing, prog_reason, prog_msg = _progress(obs)
    problem = obs.problem
    conditions = [
        _condition(READY, ready, ready_reason, ready_msg, obs.generation, old, now),
        _condition(PROGRESSING, progressing, prog_reason, prog_msg, obs.generation, old, now),
        _condition(DEGRADED, problem is not None, problem.reason if problem else "AsExpected",
                   problem.message if problem else "No problems", obs.generation, old, now),
    ]
    phase = "Degraded" if problem else ("Ready" if ready and not progressing else "Progressing")
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase,
        "conditions": conditions,
        "readyReplicas": obs.rollout.ready if obs.rollout else 0,
    }
    for key, value in (("url", obs.url), ("audience", obs.audience),
                       ("adminSecret", obs.admin_secret)):
        if value is not None:
            status[key] = value
    if obs.migration is not None:
        status["migration"] = {"job": obs.migration.job, "state": obs.migration.state}
    return status


def condition(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    for cond in (status or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return {}


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing `new` would change anything (so steady state writes nothing)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())


def transitions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Sequence[tuple[str, str, str]]:
    """(type, reason, message) Events to post for what changed between two statuses."""
    events: list[tuple[str, str, str]] = []
    old_deg, new_deg = condition(old, DEGRADED), condition(new, DEGRADED)
    if new_deg.get("status") == "True" and (
            old_deg.get("status") != "True" or old_deg.get("reason") != new_deg.get("reason")
            or old_deg.get("message") != new_deg.get("message")):
        events.append(("Warning", new_deg["reason"], new_deg["message"]))
    if old_deg.get("status") == "True" and new_deg.get("status") != "True":
        events.append(("Normal", "Recovered", f"No longer degraded (was {old_deg.get('reason')})"))
    old_mig, new_mig = (old or {}).get("migration") or {}, new.get("migration") or {}
    if new_mig and (old_mig.get("job"), old_mig.get("state")) != (new_mig["job"], new_mig["state"]):
        state = new_mig["state"]
        if state in ("Pending", "Running") and old_mig.get("job") != new_mig["job"]:
            events.append(("Normal", "MigrationStarted", f"Started database migration Job {new_mig['job']}"))
        elif state == "Succeeded":
            events.append(("Normal", "MigrationSucceeded", f"Database migration Job {new_mig['job']} succeeded"))
        elif state == "Failed":
            pass  # reported through the Degraded condition (reason MigrationFailed)
    if condition(new, READY).get("status") == "True" and condition(old, READY).get("status") != "True":
        events.append(("Normal", "Ready", condition(new, READY).get("message", "")))
    return events
