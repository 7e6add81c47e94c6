"""MLflow tracking, the only module that imports mlflow (lazily: it is slow to import).

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``<cwd>/mlruns/artifacts``.
One MLflow run per command; params logged once; metrics always with an explicit step.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

__all__ = ["Tracker", "NullTracker", "default_tracking_uri", "default_artifact_root", "make_tracker"]

log = logging.getLogger(__name__)


def default_tracking_uri(cwd: Optional[Path] = None) -> str:
    root = Path(cwd or os.getcwd()).resolve() / "mlruns"
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> Optional[str]:
    """Artifacts beside a sqlite store (``.../mlruns/artifacts``); None for other stores."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts")
    return None


def _quiet_mlflow_logs():
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


class NullTracker:
    """Tracking switched off (``--no-track``): same interface, records nothing."""

    run_id: Optional[str] = None

    def start(self, run_name: str, params: Mapping, run_id: Optional[str] = None, tags: Optional[Mapping] = None):
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_metric_history(self, name: str, values, start_step: int) -> None:
        pass

    def log_dict(self, obj, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    """An MLflow run in an experiment of a store.

    Args:
        tracking_uri: the store (None: the default sqlite store under ./mlruns).
        experiment: experiment name, created when missing.
    """

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "fewshot"):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.run_id = None
        self._client = None

    def _connect(self):
        _quiet_mlflow_logs()
        import mlflow
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        exp = self._client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = self._client.create_experiment(self.experiment,
                                                    artifact_location=default_artifact_root(self.tracking_uri))
        else:
            exp_id = exp.experiment_id
        self._mlflow = mlflow
        return exp_id

    def start(self, run_name: str, params: Mapping, run_id: Optional[str] = None, tags: Optional[Mapping] = None):
        """Start a run (or reopen ``run_id`` when resuming) and log ``params`` once."""
        exp_id = self._connect()
        if run_id is not None:
            try:
                self._client.get_run(run_id)
                self._client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
                return self
            except Exception:  # the store was moved or deleted: start a new run
                log.warning("MLflow run %s not found in %s; starting a new run", run_id, self.tracking_uri)
        run = self._client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id = run.info.run_id
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i:i + 100])
        return self

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        if ms:
            self._client.log_batch(self.run_id, metrics=ms)

    def log_metric_history(self, name: str, values, start_step: int) -> None:
        """Log ``values[i]`` as metric ``name`` at step ``start_step + i`` (batched)."""
        from mlflow.entities import Metric
        import time

        ts = int(time.time() * 1000)
        ms = [Metric(name, float(v), ts, start_step + i) for i, v in enumerate(values)]
        for i in range(0, len(ms), 1000):
            self._client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def log_dict(self, obj, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / artifact_file
            p.write_text(text)
            self._client.log_artifact(self.run_id, str(p))

    def log_artifact(self, path: str | Path) -> None:
        self._client.log_artifact(self.run_id, str(path))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None and self._client is not None:
            self._client.set_terminated(self.run_id, status=status)


def make_tracker(enabled: bool, tracking_uri: Optional[str], experiment: str) -> NullTracker:
    return Tracker(tracking_uri, experiment) if enabled else NullTracker()
