"""The sample training job: what a user's in-cluster job does with MLflow.

Runs inside a Job pod (mounted from a ConfigMap at /app/train.py) with only
``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_AUTH=k8s-token`` and ``MLFLOW_K8S_TOKEN_PATH``
(a projected ServiceAccount token with the server's audience): no password anywhere.
Creates an experiment, logs params, metrics and an artifact, reads them all back and
checks them. The last line printed is JSON for the caller: ``{"ok": true, ...}`` or
``{"ok": false, "http_status": N, "error": "..."}``.
"""

import json
import os
import sys
import tempfile


def _status_of(exc: BaseException) -> int | None:
    code = getattr(exc, "get_http_status_code", lambda: None)()
    if isinstance(code, int) and code != 500:
        return code
    text = str(exc)
    for candidate in (401, 403, 404, 503):
        if f"status code {candidate}" in text or f"{candidate} " in text[:20] or f"HTTP {candidate}" in text:
            return candidate
    return code if isinstance(code, int) else None


def train() -> dict:
    import mlflow
    from mlflow import MlflowClient

    experiment = os.environ.get("EXPERIMENT_NAME", "sample-training")
    mlflow.set_experiment(experiment)
    params = {"learning_rate": "0.01", "epochs": "3"}
    losses = [1.0, 0.5, 0.25]
    with mlflow.start_run(run_name="sample") as run:
        mlflow.log_params(params)
        for step, loss in enumerate(losses):
            mlflow.log_metric("loss", loss, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.txt")
            with open(path, "w") as fh:
                fh.write("weights: 42\n")
            mlflow.log_artifact(path)
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.params == params, got.data.params
    history = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert history == losses, history
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model.txt", dst_path=tmp)
        with open(local) as fh:
            assert fh.read() == "weights: 42\n"
    return {
        "ok": True,
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
        "user": got.info.user_id,
    }


def main() -> int:
    try:
        result = train()
    except Exception as exc:  # reported as JSON for the caller; the job fails
        result = {"ok": False, "http_status": _status_of(exc), "error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
