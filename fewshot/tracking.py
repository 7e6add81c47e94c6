"""MLflow tracking, the only module that imports mlflow (lazily: it is slow to import).

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``<cwd>/mlruns/artifacts``.
One MLflow run per command; params logged once; metrics always with an explicit step.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["Tracker", "NullTracker", "ending", "default_tracking_uri", "default_artifact_root", "make_tracker",
           "allow_file_store", "load_run_artifacts", "metric_history", "headline", "EXPERIMENT_KIND"]

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag MLflow 3's UI reads to open an experiment on its runs table ("Machine learning")
instead of the GenAI overview (values in its UI: ``genai_development``, ``custom_model_development``)."""

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


def allow_file_store(tracking_uri: str) -> str:
    """Let MLflow 3 open a file store (``file:///dir`` or a bare folder), which it refuses unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: the variable is set for this process, with a one-line warning
    naming the sqlite form. Other stores are returned untouched."""
    if "://" in tracking_uri and not tracking_uri.startswith("file:"):
        return tracking_uri
    if tracking_uri.startswith(("sqlite:", "postgresql", "mysql", "http", "databricks")):
        return tracking_uri
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        folder = tracking_uri[len("file://"):] if tracking_uri.startswith("file://") else tracking_uri
        warnings.warn(f"MLflow 3 keeps file stores such as {tracking_uri} in maintenance mode; using it anyway "
                      f"(MLFLOW_ALLOW_FILE_STORE=true). The supported form is sqlite:///{Path(folder).resolve()}"
                      "/mlflow.db", UserWarning, stacklevel=2)
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return tracking_uri


def _client(tracking_uri: Optional[str]):
    _quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=allow_file_store(tracking_uri or default_tracking_uri()))


def load_run_artifacts(run_id: str, names: Sequence[str], tracking_uri: Optional[str] = None) -> tuple:
    """``(run name, {name: text})`` of text artifacts of an MLflow run; ``LookupError`` saying why when
    the run or an artifact cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or default_tracking_uri()
    try:
        run = _client(uri).get_run(run_id)
        texts = {name: mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{name}") for name in names}
    except (MlflowException, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LookupError(f"no MLflow run {run_id} with {', '.join(names)} in {uri} ({first})") from None
    return run.info.run_name or run_id, texts


def metric_history(tracking_uri: str, run_id: str, names: Sequence[str]) -> dict:
    """``{name: (steps, values)}`` of an MLflow run's metric histories, by step (missing metrics left out)."""
    client = _client(tracking_uri)
    out = {}
    for name in names:
        ms = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        if ms:
            out[name] = ([m.step for m in ms], [m.value for m in ms])
    return out


def headline(result: Mapping) -> dict:
    """Run tags that put a result's headline first: the run description (the runs table's Description
    column and the top of the run page) and ``test_acc`` / ``test_ci95`` / ``way`` / ``shot`` /
    ``bank`` tags, from a result dict with ``test_acc``, ``test_ci95``, ``test_way``, ``test_shot``,
    ``test_episodes`` and ``test_bank_id``."""
    acc, ci = 100 * float(result["test_acc"]), 100 * float(result["test_ci95"])
    way, shot = result.get("test_way"), result.get("test_shot")
    note = (f"test accuracy {acc:.2f} +- {ci:.2f} % ({way}-way {shot}-shot, {result.get('test_episodes')} "
            f"episodes, bank {result.get('test_bank_id')})")
    return {"mlflow.note.content": note, "test_acc": f"{acc:.2f}", "test_ci95": f"{ci:.2f}", "way": str(way),
            "shot": str(shot), "bank": str(result.get("test_bank_id"))}


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

    def log_result(self, result: Mapping) -> None:
        """Store ``result`` as ``result.json`` and tag the run with its headline (:func:`headline`)."""
        self.log_dict(dict(result), "result.json")

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
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self._client = _client(self.tracking_uri)
        exp = self._client.get_experiment_by_name(self.experiment)
        key, kind = EXPERIMENT_KIND
        if exp is None:
            return self._client.create_experiment(self.experiment, tags={key: kind},
                                                  artifact_location=default_artifact_root(self.tracking_uri))
        if key not in exp.tags:  # made before this tag was set (or by hand): mark it, never overwrite a choice
            self._client.set_experiment_tag(exp.experiment_id, key, kind)
        return exp.experiment_id

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
        flat = {}
        for k, v in params.items():  # option mappings become one param per option: matcher_opts.k
            flat.update({f"{k}.{o}": x for o, x in v.items()} if isinstance(v, Mapping) else {k: v})
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
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

    def log_result(self, result: Mapping) -> None:
        super().log_result(result)
        if "test_acc" in result and "test_ci95" in result:
            for key, value in headline(result).items():
                self._client.set_tag(self.run_id, key, value)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None and self._client is not None:
            self._client.set_terminated(self.run_id, status=status)


def make_tracker(enabled: bool, tracking_uri: Optional[str], experiment: str) -> NullTracker:
    return Tracker(tracking_uri, experiment) if enabled else NullTracker()


@contextmanager
def ending(tracker):
    """Close ``tracker``'s run with the status of the block: FINISHED when it returns, KILLED on Ctrl-C,
    FAILED on any other exception (which propagates)."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
