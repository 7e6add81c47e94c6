"""fewshot.tracking: the experiment kind MLflow 3's UI reads, headline tags, file stores, option params; run
names, dataset inputs and the UI's landing view; stores that fail (one warning, records kept in the run
folder, written later) and ``fewshot track sync``. Many processes at once: test_tracking_concurrency.py."""
import json
import logging
import sqlite3
import warnings
from contextlib import closing

import pytest
from mlflow.tracking import MlflowClient

from fewshot import tracking
from fewshot.tracking import (EXPERIMENT_KIND, PENDING_FILE, RUNS_VIEW, RUNS_VIEW_KEY, Tracker, allow_file_store, ending,
                              headline, runs_table_route, sync_pending)

RESULT = {"test_acc": 0.91456, "test_ci95": 0.0043, "test_way": 5, "test_shot": 1, "test_episodes": 2000,
          "test_bank_id": "ab12cd34"}


def test_a_created_experiment_is_marked_as_model_training(store):
    uri = store
    tracker = Tracker(uri, "kind-test").start("r", {"way": 5})
    tracker.end()
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("kind-test")
    assert EXPERIMENT_KIND == ("mlflow.experimentKind", "custom_model_development")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_is_marked_but_a_kind_chosen_by_hand_is_kept(store):
    uri = store
    client = MlflowClient(tracking_uri=uri)
    plain = client.create_experiment("plain")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("plain", "chosen"):
        Tracker(uri, name).start("r", {}).end()
    assert client.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_the_result_headline_becomes_the_run_description_and_tags_and_options_are_params(store):
    uri = store
    tracker = Tracker(uri, "headline").start("r", {"way": 5, "matcher_opts": {"k": 3, "weighted": True}})
    tracker.log_result(RESULT)
    tracker.end()
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.tags["mlflow.note.content"] == ("test accuracy 91.46 +- 0.43 % (5-way 1-shot, 2000 episodes, "
                                                    "bank ab12cd34)")
    assert {k: run.data.tags[k] for k in ("test_acc", "test_ci95", "way", "shot", "bank")} == \
        {"test_acc": "91.46", "test_ci95": "0.43", "way": "5", "shot": "1", "bank": "ab12cd34"}
    assert run.data.params["matcher_opts.k"] == "3" and run.data.params["matcher_opts.weighted"] == "True"
    assert headline(RESULT)["bank"] == "ab12cd34"


def test_a_file_store_is_accepted_with_one_warning_naming_the_sqlite_form(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "store").as_uri()
    with pytest.warns(UserWarning, match=r"supported form is sqlite:///.*/store/mlflow.db"):
        assert allow_file_store(uri) == uri
    tracker = Tracker(uri, "files").start("r", {"way": 5})
    tracker.end()
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).data.params["way"] == "5"
    assert allow_file_store("sqlite:///x.db") == "sqlite:///x.db"


def test_the_cli_with_a_file_store_warns_instead_of_an_mlflow_traceback(tmp_path, monkeypatch, caplog):
    from click.testing import CliRunner

    from fewshot.cli import cli

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "store").as_uri()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        r = CliRunner().invoke(cli, ["compare", "0123abcd", "4567ef01", "--tracking-uri", uri])
    said = caplog.text + "".join(str(w.message) for w in recorded)  # the CLI may route warnings to logging
    assert said.count("maintenance mode; using it anyway") == 1
    assert r.exit_code == 2 and "no MLflow run 0123abcd" in r.output and "Traceback" not in r.output
    assert "MLFLOW_ALLOW_FILE_STORE" not in r.output


# ---------------------------------------------------------------- stores shared, stores that fail

@pytest.fixture(scope="session")
def template_store(tmp_path_factory):
    """An empty store (MLflow's tables: its migrations) made once, here; :func:`store` copies it."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    tracking._open_store(f"sqlite:///{db}")
    return db


@pytest.fixture
def store(tmp_path, template_store):
    """A ready sqlite store of this test's own: its URI. Copied with sqlite's backup API, which copies what
    the template's WAL holds too although this process's MLflow engine still has it open."""
    (tmp_path / "mlruns").mkdir()
    db = tmp_path / "mlruns" / "mlflow.db"
    with closing(sqlite3.connect(template_store)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    return f"sqlite:///{db}"


PARAMS = {"dataset": "glyphs", "way": 5, "shot": 1, "query": 15, "backbone": "conv4", "matcher": "prototype",
          "eval_episodes": 600, "bank_seed": 0, "test_bank_id": "f8f03a76036367fb", "matcher_opts": {"k": 3}}


def _full(monkeypatch, calls=None):
    """The store's disk is full from now on (``calls``: for that many writes, then it takes them again)."""
    from mlflow.exceptions import MlflowException

    real, left = MlflowClient.log_batch, [calls]

    def log_batch(self, *args, **kwargs):
        if left[0] is None or left[0] > 0:
            left[0] = None if left[0] is None else left[0] - 1
            raise MlflowException("(sqlite3.OperationalError) database or disk is full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch)


def _tracking_warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "fewshot.tracking" and r.levelno >= logging.WARNING]


def test_a_runs_name_carries_its_key_settings_which_are_tags_and_its_test_bank_is_its_dataset(store, tmp_path):
    tracker = Tracker(store, "names", tmp_path / "run").start("glyphs-conv4-5w1s-seed0-1a2b3c4d", PARAMS)
    tracker.end()
    run = MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.info.run_name == "glyphs-conv4-5w1s-seed0-1a2b3c4d prototype"  # what the name lacks is added
    assert {k: run.data.tags[k] for k in ("backbone", "matcher", "way", "shot")} == \
        {"backbone": "conv4", "matcher": "prototype", "way": "5", "shot": "1"}
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("glyphs-test-5w1s-600ep", "f8f03a76036367fb")
    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": "test"}
    assert json.loads(dataset.dataset.profile)["episodes"] == 600
    eval_params = {**PARAMS, "backbone_resolved": "vig_small_c4_28", "backbone": None, "shot": 5}
    tracker = Tracker(store, "names").start("eval-r1", eval_params)
    assert MlflowClient(tracking_uri=store).get_run(tracker.run_id).info.run_name == \
        "eval-r1 vig_small_c4_28 prototype 5w5s"
    assert not (tmp_path / "run").exists(), "a store that works leaves nothing in the run folder"


def test_a_store_that_fails_mid_run_costs_one_warning_and_the_run_folder_keeps_the_records(store, tmp_path,
                                                                                          monkeypatch, caplog):
    run_dir = tmp_path / "run"
    tracker = Tracker(store, "full", run_dir).start("r", PARAMS)
    run_id = tracker.run_id
    tracker.log_metrics({"val_acc": 0.5}, step=10)
    _full(monkeypatch)
    tracker.log_metric_history("train_loss", [3.0, 2.0, 1.0], start_step=1)
    tracker.log_metrics({"val_acc": 0.75}, step=20)
    tracker.log_text("hello\n", "note.txt")
    tracker.log_result(RESULT)
    assert tracker.metric_history(["train_loss", "val_acc"]) == {"train_loss": ([1, 2, 3], [3.0, 2.0, 1.0]),
                                                                 "val_acc": ([10, 20], [0.5, 0.75])}
    tracker.end()  # tries the store once more: still full
    (warning,) = _tracking_warnings(caplog)
    assert f"MLflow tracking to {store} failed (logging metrics: (sqlite3.OperationalError) database or disk is " \
           f"full); the run goes on" in warning and f"`fewshot track sync {run_dir}`" in warning
    pending = run_dir / PENDING_FILE
    assert pending.exists() and tracker.run_id == run_id
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(run_id).info.status == "RUNNING" and "train_loss" not in client.get_run(run_id).data.metrics

    monkeypatch.undo()  # the disk has room again
    assert sync_pending(pending) == run_id and not pending.exists()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")) == [(10, 0.5), (20, 0.75)]
    assert run.data.tags["test_acc"] == "91.46" and run.data.params["matcher_opts.k"] == "3"
    assert {a.path for a in client.list_artifacts(run_id)} == {"note.txt", "result.json"}


def test_a_store_that_takes_writes_again_is_brought_up_to_date_when_the_run_ends(store, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fewshot.tracking")
    tracker = Tracker(store, "again", tmp_path / "run").start("r", PARAMS)
    _full(monkeypatch, calls=1)  # one write refused
    tracker.log_metrics({"val_acc": 0.5}, step=10)
    tracker.log_metrics({"val_acc": 0.6}, step=20)  # kept too: the tracker no longer asks a store that failed
    with ending(tracker):
        pass
    assert len(_tracking_warnings(caplog)) == 1 and not (tmp_path / "run" / PENDING_FILE).exists()
    assert f"MLflow run {tracker.run_id} in {store} is up to date" in caplog.text
    run = MlflowClient(tracking_uri=store).get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] == 0.6


def test_a_run_the_store_never_took_is_created_by_sync_and_a_resumed_run_goes_on_in_it(store, tmp_path, monkeypatch,
                                                                                         caplog):
    """Read-only store folder: nothing can be created there; ``--resume`` later, once it can, continues the run."""
    real = tracking._open_store

    def read_only(uri, experiment=None):
        raise PermissionError(13, "Permission denied", str(tmp_path / "mlruns"))

    monkeypatch.setattr(tracking, "_open_store", read_only)
    run_dir = tmp_path / "run"
    tracker = Tracker(store, "ro", run_dir).start("r", PARAMS)
    assert tracker.run_id is None
    tracker.log_metric_history("train_loss", [3.0, 2.0], start_step=1)
    with pytest.raises(KeyboardInterrupt), ending(tracker):
        raise KeyboardInterrupt  # Ctrl-C: status KILLED, no attempt to reach the store
    (warning,) = _tracking_warnings(caplog)
    assert "failed (creating the run: [Errno 13] Permission denied" in warning
    head = json.loads((run_dir / PENDING_FILE).read_text().splitlines()[0])
    assert head["run_name"] == "r conv4 prototype 5w1s" and head["run_id"] is None

    monkeypatch.setattr(tracking, "_open_store", real)  # writable again; the run is resumed
    tracker = Tracker(store, "ro", run_dir).start("r", PARAMS, run_id=None, resume=True)
    tracker.log_metric_history("train_loss", [1.0], start_step=3)
    tracker.end()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("ro").experiment_id])
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [3.0, 2.0, 1.0]
    assert not (run_dir / PENDING_FILE).exists()


def test_track_sync_writes_each_folders_records_and_says_what_it_could_not(store, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fewshot.cli import cli

    trackers = []
    for name in ("a", "b"):
        t = Tracker(store, "sync", tmp_path / "runs" / name).start(name, PARAMS)
        trackers.append(t)
    _full(monkeypatch)
    for t in trackers:
        t.log_metrics({"test_acc": 0.5}, step=1)
        t.end()
    r = CliRunner().invoke(cli, ["track", "sync", str(tmp_path / "runs")])
    assert r.exit_code == 2 and r.output.count("database or disk is full") == 2
    assert "2 of 2 pending record files could not be written; they are kept" in r.output
    monkeypatch.undo()
    r = CliRunner().invoke(cli, ["track", "sync", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    for t in trackers:
        assert f"MLflow run {t.run_id} is up to date" in r.output
        assert MlflowClient(tracking_uri=store).get_run(t.run_id).info.status == "FINISHED"
    r = CliRunner().invoke(cli, ["track", "sync", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "nothing pending in" in r.output


def test_the_ui_lands_on_the_runs_table_of_the_latest_runs_experiment_in_the_fewshot_view(store, tmp_path):
    assert runs_table_route(store) == ""  # no run yet: the UI's root
    Tracker(store, "older").start("a", PARAMS).end()
    Tracker(store, "newer").start("b", PARAMS).end()
    client = MlflowClient(tracking_uri=store)
    newer = client.get_experiment_by_name("newer").experiment_id
    assert runs_table_route(store) == f"#/experiments/{newer}/runs?viewStateShareKey={RUNS_VIEW_KEY}"
    view = json.loads(client.get_experiment(newer).tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert view == RUNS_VIEW and view["selectedColumns"][:5] == \
        ["metrics.`test_acc`", "tags.`way`", "tags.`shot`", "tags.`backbone`", "tags.`matcher`"]
    older = client.get_experiment_by_name("older").experiment_id
    assert runs_table_route(store, "older").startswith(f"#/experiments/{older}/runs?")
    with pytest.raises(ValueError, match=r"no experiment 'nope' in .* \(experiments: Default, newer, older\)"):
        runs_table_route(store, "nope")


def test_a_new_sqlite_store_on_a_local_disk_is_in_wal_mode_with_its_lock_beside_it(tmp_path):
    import sqlite3

    db = tmp_path / "s" / "mlflow.db"
    tracking._open_store(f"sqlite:///{db}")
    assert (tmp_path / "s" / "mlflow.db.lock").exists()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
