"""Status computation: what `kubectl get mlflow` and `kubectl describe` show a user."""
from __future__ import annotations

from mlflow_operator import status as st

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def _conds(status):
    return {c["type"]: c for c in status["conditions"]}


def _job(**status):
    return {"kind": "Job", "status": status}


def _deploy(ready, updated=None, available=None, generation=2, observed=2):
    return {"metadata": {"generation": generation},
            "status": {"readyReplicas": ready, "updatedReplicas": ready if updated is None else updated,
                       "availableReplicas": ready if available is None else available,
                       "observedGeneration": observed}}


def ready_obs(generation=3):
    return st.Observation(generation, migration=st.Migration("srv-migrate-1", "Succeeded"),
                          rollout=st.Rollout.from_deployment(2, _deploy(2)),
                          url="http://srv.team.svc:5000", audience="https://srv.team.svc",
                          admin_secret="srv-admin")


def test_ready_server_reports_ready_phase_and_identity():
    status = st.compute(ready_obs(), None, now=T0)
    conds = _conds(status)
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == 3
    assert status["readyReplicas"] == 2
    assert status["url"] == "http://srv.team.svc:5000"
    assert status["audience"] == "https://srv.team.svc"
    assert status["adminSecret"] == "srv-admin"
    assert conds["Ready"]["status"] == "True"
    assert conds["Progressing"]["status"] == "False"
    assert conds["Degraded"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])


def test_migration_running_is_progressing_not_ready():
    obs = st.Observation(1, migration=st.Migration.from_job("srv-migrate-1", _job(active=1)),
                         rollout=st.Rollout.from_deployment(1, None))
    status = st.compute(obs, None, now=T0)
    conds = _conds(status)
    assert status["phase"] == "Progressing"
    assert conds["Progressing"]["reason"] == "MigrationRunning"
    assert "srv-migrate-1" in conds["Progressing"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert status["migration"] == {"job": "srv-migrate-1", "state": "Running"}


def test_job_states_read_from_job_status():
    assert st.Migration.from_job("j", None).state == "Pending"
    assert st.Migration.from_job("j", _job(succeeded=1)).state == "Succeeded"
    failed = _job(failed=6, conditions=[{"type": "Failed", "status": "True"}])
    assert st.Migration.from_job("j", failed).state == "Failed"


def test_rollout_in_progress_until_controller_observed_the_new_generation():
    stale = st.Rollout.from_deployment(2, _deploy(2, generation=3, observed=2))
    assert not stale.complete
    obs = st.Observation(1, migration=st.Migration("j", "Succeeded"), rollout=stale)
    status = st.compute(obs, None, now=T0)
    assert status["phase"] == "Progressing"
    assert _conds(status)["Progressing"]["reason"] == "RollingOut"


def test_problem_makes_degraded_with_reason_and_message():
    obs = st.Observation(4, problem=st.Problem("SqliteWithReplicas", "replicas > 1 requires ..."))
    status = st.compute(obs, None, now=T0)
    conds = _conds(status)
    assert status["phase"] == "Degraded"
    assert conds["Degraded"] == {"type": "Degraded", "status": "True", "reason": "SqliteWithReplicas",
                                 "message": "replicas > 1 requires ...", "observedGeneration": 4,
                                 "lastTransitionTime": T0}
    assert conds["Progressing"]["status"] == "False"


def test_last_transition_time_kept_while_status_unchanged():
    first = st.compute(ready_obs(), None, now=T0)
    second = st.compute(ready_obs(), first, now=T1)
    assert second == first
    assert not st.changed(first, second)
    degraded = st.compute(st.Observation(3, problem=st.Problem("X", "y")), second, now=T1)
    conds = _conds(degraded)
    assert conds["Degraded"]["lastTransitionTime"] == T1
    assert conds["Ready"]["lastTransitionTime"] == T1  # flipped True -> False
    assert st.changed(second, degraded)


def test_transitions_post_events_once():
    progressing = st.compute(st.Observation(1, migration=st.Migration("srv-migrate-1", "Pending"),
                                            rollout=st.Rollout(1)), None, now=T0)
    events = st.transitions(None, progressing)
    assert ("Normal", "MigrationStarted", "Started database migration Job srv-migrate-1") in events
    assert st.transitions(progressing, progressing) == []
    ready = st.compute(ready_obs(), progressing, now=T1)
    reasons = [reason for _, reason, _ in st.transitions(progressing, ready)]
    assert reasons == ["MigrationSucceeded", "Ready"]
    bad = st.compute(st.Observation(2, problem=st.Problem("SecretNotFound", "Secret 'db' not found")),
                     ready, now=T1)
    assert st.transitions(ready, bad) == [("Warning", "SecretNotFound", "Secret 'db' not found")]
    assert st.transitions(bad, bad) == []
    fixed = st.compute(ready_obs(), bad, now=T1)
    assert ("Normal", "Recovered", "No longer degraded (was SecretNotFound)") in st.transitions(bad, fixed)


def test_scaled_to_zero_is_ready():
    obs = st.Observation(1, migration=st.Migration("j", "Succeeded"),
                         rollout=st.Rollout.from_deployment(0, _deploy(0)))
    status = st.compute(obs, None, now=T0)
    assert status["phase"] == "Ready"
    assert _conds(status)["Ready"]["reason"] == "ScaledToZero"
