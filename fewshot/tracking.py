"""MLflow tracking, the only module that imports mlflow (lazily: it is slow to import).

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``<cwd>/mlruns/artifacts``.
One MLflow run per command; params logged once; metrics always with an explicit step.

Any number of processes share one store (docs/tracking.md):

- opening a store (MLflow creates its tables on first use) and finding or creating the experiment
  happen under a file lock beside it (``mlflow.db.lock``), so they happen once;
- a sqlite store on a local disk is switched to WAL (readers and one writer at a time, without
  blocking each other); writes that meet a locked database are retried with back-off;
- no tracking error ends a command. The first one is reported in one warning line; from then on the
  run's records go to :data:`PENDING_FILE` in its record folder (the run folder, or an evaluation's
  folder), and :func:`sync_pending` writes them into the store when the run ends, when it is resumed,
  or on ``fewshot track sync FOLDER``.
"""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["Tracker", "NullTracker", "ending", "default_tracking_uri", "default_artifact_root", "make_tracker",
           "allow_file_store", "load_run_artifacts", "metric_history", "headline", "key_settings", "EXPERIMENT_KIND",
           "PENDING_FILE", "sync_pending", "pending_files", "runs_table_route", "RUNS_VIEW", "RUNS_VIEW_KEY"]

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
"""The experiment tag MLflow 3's UI reads to open an experiment on its runs table ("Machine learning")
instead of the GenAI overview (values in its UI: ``genai_development``, ``custom_model_development``)."""

PENDING_FILE = "mlflow_pending.jsonl"
"""A run's records that the store has not taken yet, one JSON object a line, in its record folder."""

LOCK_TIMEOUT_S = 600.0
"""How long a process waits for the store's file lock (creating a store runs MLflow's migrations, ~10 s)."""

RETRY_S = 60.0
"""How long a write that meets a locked database is retried, with back-off, before the tracker gives up."""

RUNS_VIEW_KEY = "fewshot-runs"
_VIEW_COLUMNS = {"attributes.`Run Name`": 190, "runDateAndNestInfo": 120, "metrics.`test_acc`": 90, "tags.`way`": 50,
                 "tags.`shot`": 50, "tags.`backbone`": 110, "tags.`matcher`": 100, "attributes.`Dataset`": 260,
                 "duration": 80}
RUNS_VIEW = {
    "selectedColumns": [c for c in _VIEW_COLUMNS if c.startswith(("metrics.", "tags.", "attributes.`Dataset`"))],
    "columnOrder": list(_VIEW_COLUMNS), "columnWidths": _VIEW_COLUMNS,
    "orderByKey": "attributes.start_time", "orderByAsc": False,
}
"""The runs table ``fewshot ui`` lands on: MLflow's shared view state (experiment tag
``mlflow.sharedViewState.<key>``, opened by the URL parameter ``viewStateShareKey``), with the test
accuracy, way, shot, backbone, matcher and test bank right after the run names, in widths that fit
them beside MLflow's navigation and assistant panels in a 1400 px wide window; newest run first.
(MLflow offers no default columns for an experiment other than a view like this.)"""

_NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
                         "afs", "beegfs", "davfs", "sshfs"})
_JITTER = random.Random()  # its own generator: back-off jitter never touches the global RNG

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
    for name in ("alembic", "mlflow", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # store errors are reported by the tracker in one line; MLflow would add a traceback for each
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)


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


# ---------------------------------------------------------------- the store: one lock, WAL, retries

def _sqlite_file(uri: str) -> Optional[Path]:
    return Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None


def _store_lock_file(uri: str) -> Optional[Path]:
    """The lock file beside a local store (sqlite file or file-store folder); None for servers and databases."""
    db = _sqlite_file(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    if uri.startswith("file:") or "://" not in uri:
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri) / ".fewshot-store.lock"
    return None


def _local_disk(path: Path) -> bool:
    """Whether ``path`` is on a local file system (from /proc/mounts), where sqlite's WAL is safe: it needs
    memory shared by the processes, which NFS, SMB or FUSE mounts do not give. False where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return False
    target, best, fstype = str(path.resolve()), "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, fstype = mount, parts[2]
    return fstype is not None and fstype not in _NETWORK_FS and not fstype.startswith("fuse")


def _prepare_sqlite(db: Path) -> None:
    """Open the sqlite file ``db`` (created when missing) before MLflow does, so that one that cannot be
    opened (a read-only folder) fails at once, where MLflow would retry for minutes as if a database
    server were starting; and switch it to WAL on a local disk (best effort: a file another process
    holds open keeps its journal mode)."""
    import sqlite3

    try:
        con = sqlite3.connect(db, timeout=5.0)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if _local_disk(db.parent) and str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                except sqlite3.Error as e:
                    log.debug("sqlite %s stays in its journal mode (%s)", db, e)
        finally:
            con.close()
    except sqlite3.Error as e:
        if _locked(e):
            return  # busy: MLflow's own busy timeout waits for it
        raise OSError(f"sqlite: {e}") from None


def _locked(e: BaseException) -> bool:
    text = str(e).lower()
    return "database is locked" in text or "database table is locked" in text or "sqlite_busy" in text


def _retrying(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, retried with exponential back-off and jitter for up to :data:`RETRY_S`
    while it meets a locked database (sqlite's own busy timeout has already waited by then)."""
    delay, deadline = 0.05, time.monotonic() + RETRY_S
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _locked(e) or time.monotonic() + delay > deadline:
                raise
            log.debug("store locked, retrying in %.2f s", delay)
            time.sleep(delay * (1 + _JITTER.random()))
            delay = min(2 * delay, 2.0)


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created when missing, marked with :data:`EXPERIMENT_KIND`."""
    exp = client.get_experiment_by_name(name)
    key, kind = EXPERIMENT_KIND
    if exp is None:
        try:
            return client.create_experiment(name, tags={key: kind},
                                            artifact_location=default_artifact_root(tracking_uri))
        except Exception:  # a tracking server has no file lock: another process may have just made it
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
    if key not in exp.tags:  # made before this tag was set (or by hand): mark it, never overwrite a choice
        client.set_experiment_tag(exp.experiment_id, key, kind)
    return exp.experiment_id


def _open_store(tracking_uri: str, experiment: Optional[str] = None):
    """``(MlflowClient, experiment id or None)`` on a ready store: a local store is opened (and created on
    first use: MLflow's migrations) and ``experiment`` found or created under the store's file lock, so
    that processes starting together on a new store neither migrate it twice nor create the experiment
    twice. Raises what the store raises (a read-only folder: ``PermissionError``)."""
    _quiet_mlflow_logs()
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    uri = allow_file_store(tracking_uri)
    lock = _store_lock_file(uri)
    if lock is None:
        client = MlflowClient(tracking_uri=uri)
        return client, _experiment_id(client, experiment, uri) if experiment else None
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock), timeout=LOCK_TIMEOUT_S):
        db = _sqlite_file(uri)
        if db is not None:
            _prepare_sqlite(db)
        client = MlflowClient(tracking_uri=uri)
        return client, _experiment_id(client, experiment, uri) if experiment else None


def _client(tracking_uri: Optional[str]):
    return _retrying(_open_store, tracking_uri or default_tracking_uri())[0]


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
        ms = sorted(_retrying(client.get_metric_history, run_id, name), key=lambda m: m.step)
        if ms:
            out[name] = ([m.step for m in ms], [m.value for m in ms])
    return out


# ---------------------------------------------------------------- what a run shows

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


def key_settings(params: Mapping) -> dict:
    """The settings a reader compares runs by, as run tags: ``backbone`` (the resolved one when the params
    carry ``backbone_resolved``), ``matcher``, ``way``, ``shot``; those the params lack are left out."""
    out = {"backbone": params.get("backbone_resolved") or params.get("backbone"), "matcher": params.get("matcher"),
           "way": params.get("way"), "shot": params.get("shot")}
    return {k: str(v) for k, v in out.items() if v not in (None, "")}


def _run_name(name: str, settings: Mapping) -> str:
    """``name`` followed by the key settings it does not already carry, e.g.
    ``glyphs-conv4-5w1s-seed0-1a2b3c4d prototype`` or ``r1 conv4 prototype 5w1s``."""
    words = [settings.get("backbone"), settings.get("matcher")]
    if "way" in settings and "shot" in settings:
        words.append(f"{settings['way']}w{settings['shot']}s")
    extra = [w for w in words if w and w not in name]
    return " ".join([name, *extra])


def _test_dataset(params: Mapping) -> Optional[dict]:
    """The record logging a run's test episodes (an EpisodeBank: ``test_bank_id``; a transfer test set:
    ``test_set_id``) as its MLflow dataset input, which the runs table's Dataset column names."""
    dataset = params.get("dataset") or "data"
    source = json.dumps({"uri": str(params.get("data_root") or f"fewshot:{dataset}")})
    if params.get("test_bank_id"):
        way, shot, episodes = params.get("way"), params.get("shot"), params.get("eval_episodes")
        profile = {"split": "test", "way": way, "shot": shot, "query": params.get("query"), "episodes": episodes,
                   "bank_seed": params.get("bank_seed")}
        return {"op": "dataset", "name": f"{dataset}-test-{way}w{shot}s-{episodes}ep",
                "digest": str(params["test_bank_id"]), "source": source, "context": "test",
                "profile": json.dumps({k: v for k, v in profile.items() if v is not None})}
    if params.get("test_set_id"):
        return {"op": "dataset", "name": f"{dataset}-test", "digest": str(params["test_set_id"]), "source": source,
                "context": "test", "profile": json.dumps({"split": "test", "images": params.get("test_images")})}
    return None


def runs_table_route(tracking_uri: Optional[str] = None, experiment: Optional[str] = None) -> str:
    """The UI route to land on: ``#/experiments/<id>/runs?viewStateShareKey=<key>``, the runs table of
    ``experiment`` (default: the experiment holding the latest run) in the view :data:`RUNS_VIEW`, stored
    as that experiment's shared view state; ``""`` (the UI's root) when the store holds no run.
    ``ValueError`` naming the experiments when ``experiment`` is not in the store."""
    uri = tracking_uri or default_tracking_uri()
    client = _client(uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {uri} (experiments: {', '.join(names) or 'none'})")
        exp_id = exp.experiment_id
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1) if ids else []
        if not runs:
            return ""
        exp_id = runs[0].info.experiment_id
    exp = client.get_experiment(exp_id)
    key, kind = EXPERIMENT_KIND
    if key not in exp.tags:
        _retrying(client.set_experiment_tag, exp_id, key, kind)
    _retrying(client.set_experiment_tag, exp_id, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", json.dumps(RUNS_VIEW))
    return f"#/experiments/{exp_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"


# ---------------------------------------------------------------- records: written live or kept pending

def _now_ms() -> int:
    return int(time.time() * 1000)


def _first_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _flat_params(params: Mapping) -> dict:
    flat = {}
    for k, v in params.items():  # option mappings become one param per option: matcher_opts.k
        flat.update({f"{k}.{o}": x for o, x in v.items()} if isinstance(v, Mapping) else {k: v})
    return {k: str(v)[:6000] for k, v in flat.items()}


def _create_run(client, experiment_id: str, head: Mapping) -> str:
    return client.create_run(experiment_id, run_name=head["run_name"], tags=dict(head["tags"]),
                             start_time=head["time"]).info.run_id


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException as e:
        if _locked(e):
            raise
        return False


def _apply(client, run_id: str, rec: Mapping) -> None:
    """Write one record of a run (``op``: params, metrics, tags, text, file, dataset, status) to its MLflow run."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    op = rec["op"]
    if op == "params":
        items = [Param(k, v) for k, v in rec["params"].items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, params=items[i:i + 100])
    elif op == "metrics":
        items = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rec["items"]]
        for i in range(0, len(items), 1000):
            client.log_batch(run_id, metrics=items[i:i + 1000])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in rec["tags"].items()])
    elif op == "text":
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / rec["name"]
            p.write_text(rec["text"])
            client.log_artifact(run_id, str(p))
    elif op == "file":
        if Path(rec["path"]).exists():
            client.log_artifact(run_id, rec["path"])
        else:
            log.warning("%s is gone; not logged to MLflow run %s", rec["path"], run_id)
    elif op == "dataset":
        ds = Dataset(rec["name"], rec["digest"], "local", rec["source"], profile=rec.get("profile"))
        client.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", rec["context"])])])
    elif op == "status":
        if rec["status"] == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=rec["status"], end_time=rec.get("time"))
    else:
        raise ValueError(f"unknown MLflow record {op!r}")


_WHAT = {"params": "logging the params", "metrics": "logging metrics", "tags": "tagging the run",
         "text": "logging an artifact", "file": "logging an artifact", "dataset": "logging the test set",
         "status": "closing the run"}


def _read_pending(path: Path) -> list:
    """The records of a pending file (a last line cut short by a killed process is left out)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is not a record (cut short?); left out", path, i + 1)
    if not out or out[0].get("op") != "start":
        raise ValueError(f"{path}: not a pending MLflow record file (its first line is not the run's start)")
    return out


def _folder_lock(folder: Path):
    from filelock import FileLock

    return FileLock(str(Path(folder) / ".mlflow_pending.lock"), timeout=0)


def sync_pending(path, tracking_uri: Optional[str] = None) -> str:
    """Write the records of the pending file ``path`` into their store (or ``tracking_uri``), then remove
    it; the MLflow run id. The run is created there first when it never was (or is gone); the file is
    rewritten with its id at once, so a failure later never creates it twice (metrics logged twice are
    one: MLflow drops exact repeats). Raises what the store raises; ``RuntimeError`` when a running
    command holds the folder."""
    from filelock import Timeout

    path = Path(path)
    lock = _folder_lock(path.parent)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(f"{path.parent} is in use by a running command; sync it once that has ended") from None
    try:
        records = _read_pending(path)
        head, rest = records[0], records[1:]
        uri = tracking_uri or head["tracking_uri"]
        client, exp_id = _retrying(_open_store, uri, head["experiment"])
        run_id = head.get("run_id") if uri == head["tracking_uri"] else None
        if run_id is None or not _retrying(_run_exists, client, run_id):
            run_id = _retrying(_create_run, client, exp_id, head)
            head = {**head, "run_id": run_id, "tracking_uri": uri}
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in [head, *rest]))
            os.replace(tmp, path)
        for rec in rest:
            _retrying(_apply, client, run_id, rec)
        path.unlink()
        return run_id
    finally:
        lock.release()


def pending_files(folder) -> list:
    """The pending record files in ``folder`` and below (a run folder holds its evaluations' folders)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    return sorted(folder.rglob("mlflow_pending*.jsonl"))


class NullTracker:
    """Tracking switched off (``--no-track``): same interface, records nothing."""

    run_id: Optional[str] = None

    def start(self, run_name: str, params: Mapping, run_id: Optional[str] = None, tags: Optional[Mapping] = None,
              resume: bool = False):
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

    def metric_history(self, names: Sequence[str]) -> dict:
        """``{name: (steps, values)}`` of this run's metrics, by step (nothing: no tracking)."""
        return {}

    def end(self, status: str = "FINISHED") -> None:
        pass


class Tracker(NullTracker):
    """An MLflow run in an experiment of a store, which never fails the command it tracks.

    Each record (params, metrics, tags, artifacts, the test set, the status) goes to the store at once.
    When the store fails (read-only, disk full, locked beyond :data:`RETRY_S`, gone), one warning line
    says what failed, ``run_id`` stays what it was (None when the run could not be created), and the
    records from then on go to :data:`PENDING_FILE` in ``record_dir``; :meth:`end` writes them to the
    store when it takes them again, and a resumed run (``start(..., resume=True)``) first does.

    Args:
        tracking_uri: the store (None: the default sqlite store under ./mlruns).
        experiment: experiment name, created when missing.
        record_dir: the command's own folder (run folder, evaluation folder) for pending records;
            None: records the store does not take are lost (with the warning saying so).
    """

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = "fewshot", record_dir=None):
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.run_id = None
        self._client = None
        self._head = None          # what creating the run takes: the first line of a pending file
        self._failed = None        # why the store is skipped, once it failed
        self._lock = None          # the record folder's lock while records are pending there
        self._keeps = True         # False once the pending file cannot be written either

    @property
    def pending_file(self) -> Optional[Path]:
        return self.record_dir / PENDING_FILE if self.record_dir is not None else None

    def start(self, run_name: str, params: Mapping, run_id: Optional[str] = None, tags: Optional[Mapping] = None,
              resume: bool = False):
        """Start a run (or reopen ``run_id`` when resuming) and log ``params`` once. Its MLflow name is
        ``run_name`` with the key settings (:func:`key_settings`) it lacks; those settings are also run
        tags, and the test bank named in ``params`` is the run's dataset input. ``resume``: a pending
        file of the run in ``record_dir`` is synced first (the run continues there) or kept appending."""
        settings = key_settings(params)
        self._head = {"op": "start", "tracking_uri": self.tracking_uri, "experiment": self.experiment,
                      "run_name": _run_name(run_name, settings), "tags": {**settings, **dict(tags or {})},
                      "time": _now_ms(), "run_id": run_id}
        pending = self.pending_file
        if pending is not None and pending.exists():
            try:
                synced = sync_pending(pending)
                run_id = synced if resume else run_id
            except Exception as e:
                if resume and self._continue_pending(pending, e):
                    return self
                aside = pending.with_name(f"mlflow_pending-{_now_ms()}.jsonl")
                try:
                    os.replace(pending, aside)
                    log.info("earlier pending MLflow records kept in %s (the store: %s)", aside, _first_line(e))
                except OSError as moved:
                    log.warning("cannot set %s aside (%s)", pending, _first_line(moved))
        try:
            self._client, exp_id = _retrying(_open_store, self.tracking_uri, self.experiment)
            if run_id is not None and _retrying(_run_exists, self._client, run_id):
                _retrying(self._client.update_run, run_id, status="RUNNING")
                self.run_id = self._head["run_id"] = run_id
                return self
            if run_id is not None:  # the store was moved or deleted: start a new run
                log.warning("MLflow run %s not found in %s; starting a new run", run_id, self.tracking_uri)
            self.run_id = self._head["run_id"] = _retrying(_create_run, self._client, exp_id, self._head)
        except Exception as e:
            self._head["run_id"] = None
            self._fail("creating the run", e)
        self._record({"op": "params", "params": _flat_params(params)})
        dataset = _test_dataset(params)
        if dataset is not None:
            self._record(dataset)
        return self

    def _continue_pending(self, pending: Path, e: BaseException) -> bool:
        """A resumed run whose pending records the store still refuses goes on appending to them."""
        try:
            head = _read_pending(pending)[0]
        except (OSError, ValueError):
            return False
        self._head, self.run_id = head, head.get("run_id")
        self._fail("writing the run's pending records", e)
        self._record({"op": "status", "status": "RUNNING"})
        return True

    def _record(self, rec: dict) -> None:
        if self._head is None:
            raise RuntimeError("Tracker.start must come before anything is logged")
        if self._failed is None:
            try:
                _retrying(_apply, self._client, self.run_id, rec)
                return
            except Exception as e:
                self._fail(_WHAT[rec["op"]], e)
        self._keep(rec)

    def _fail(self, what: str, e: BaseException) -> None:
        self._failed = f"{what}: {_first_line(e)}"
        if self.pending_file is None:
            tail = "; its tracking records from here on are lost (no run folder to keep them)"
            self._keeps = False
        else:
            tail = (f"; its records are kept in {self.pending_file} and written to the store when the run ends, "
                    f"on --resume, or by `fewshot track sync {self.record_dir}`")
        log.warning("MLflow tracking to %s failed (%s); the run goes on%s", self.tracking_uri, self._failed, tail)

    def _keep(self, rec: dict) -> None:
        if not self._keeps:
            return
        path = self.pending_file
        try:
            if self._lock is None:
                self._lock = _folder_lock(self.record_dir)
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._lock.acquire()
                except Exception as e:  # another process holds it; keep writing all the same
                    log.debug("no lock on %s (%s)", self.record_dir, e)
            lines = [] if path.exists() else [json.dumps(self._head)]
            with open(path, "a") as f:
                f.write("".join(line + "\n" for line in [*lines, json.dumps(rec, default=str)]))
        except OSError as e:
            self._keeps = False
            log.warning("cannot keep pending MLflow records in %s (%s); the run goes on without them", path,
                        _first_line(e))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = _now_ms()
        items = [[k, float(v), ts, int(step)] for k, v in metrics.items()]
        if items:
            self._record({"op": "metrics", "items": items})

    def log_metric_history(self, name: str, values, start_step: int) -> None:
        """Log ``values[i]`` as metric ``name`` at step ``start_step + i`` (batched)."""
        ts = _now_ms()
        items = [[name, float(v), ts, start_step + i] for i, v in enumerate(values)]
        if items:
            self._record({"op": "metrics", "items": items})

    def log_dict(self, obj, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._record({"op": "text", "name": artifact_file, "text": text})

    def log_artifact(self, path: str | Path) -> None:
        self._record({"op": "file", "path": str(Path(path).resolve())})

    def log_result(self, result: Mapping) -> None:
        super().log_result(result)
        if "test_acc" in result and "test_ci95" in result:
            self._record({"op": "tags", "tags": headline(result)})

    def metric_history(self, names: Sequence[str]) -> dict:
        """``{name: (steps, values)}`` of this run's metrics by step: what the store holds and what is pending."""
        series = {name: {} for name in names}
        if self.run_id is not None and self._client is not None:
            try:
                for name in names:
                    for m in _retrying(self._client.get_metric_history, self.run_id, name):
                        series[name][m.step] = m.value
            except Exception as e:
                log.debug("metric history from the store: %s", e)
        path = self.pending_file
        if path is not None and path.exists():
            for rec in _read_pending(path)[1:]:
                for k, v, _, step in rec.get("items", []) if rec["op"] == "metrics" else []:
                    if k in series:
                        series[k][step] = v
        return {k: (sorted(s), [s[i] for i in sorted(s)]) for k, s in series.items() if s}

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``status``; pending records are written to the store when it takes them now
        (not after Ctrl-C, status KILLED: the user is waiting; ``--resume`` or ``fewshot track sync`` does)."""
        if self._head is None:
            return
        self._record({"op": "status", "status": status, "time": _now_ms()})
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        path = self.pending_file
        if self._failed is None or status == "KILLED" or path is None or not path.exists():
            return
        try:
            self.run_id = sync_pending(path)
            log.info("MLflow run %s in %s is up to date (the pending records were written)", self.run_id,
                     self.tracking_uri)
        except Exception as e:
            log.info("the MLflow store still fails (%s); %s keeps the run's records", _first_line(e), path)


def make_tracker(enabled: bool, tracking_uri: Optional[str], experiment: str, record_dir=None) -> NullTracker:
    return Tracker(tracking_uri, experiment, record_dir) if enabled else NullTracker()


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
