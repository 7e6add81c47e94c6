"""fewshot.tracking: the experiment kind MLflow 3's UI reads, headline tags, file stores, option params."""
import warnings

import pytest
from mlflow.tracking import MlflowClient

from fewshot.tracking import EXPERIMENT_KIND, Tracker, allow_file_store, headline

RESULT = {"test_acc": 0.91456, "test_ci95": 0.0043, "test_way": 5, "test_shot": 1, "test_episodes": 2000,
          "test_bank_id": "ab12cd34"}


def test_a_created_experiment_is_marked_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "kind-test").start("r", {"way": 5})
    tracker.end()
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("kind-test")
    assert EXPERIMENT_KIND == ("mlflow.experimentKind", "custom_model_development")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_is_marked_but_a_kind_chosen_by_hand_is_kept(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    plain = client.create_experiment("plain")
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("plain", "chosen"):
        Tracker(uri, name).start("r", {}).end()
    assert client.get_experiment(plain).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_the_result_headline_becomes_the_run_description_and_tags_and_options_are_params(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
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
