"""``fewshot ui`` as a person uses it: two tracked runs, the UI served on 127.0.0.1, the runs page
opened in headless Chromium, both runs and their final test accuracy on it, and a screenshot kept
under ``$FEWSHOT_TEST_ARTIFACTS`` (default: the test's tmp folder; the path is printed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path: Path, uri: str, seed: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "fewshot", "train", "--dataset", "glyphs", "--backbone", "conv4",
         "--episodes", "3", "--val-episodes", "0", "--eval-episodes", "5", "--seed", str(seed),
         "--threads", "1", "--tracking-uri", uri, "--run-dir", str(tmp_path / f"run{seed}"), "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium; .ci/run does it as root)")
def test_runs_page_lists_both_runs_with_accuracy(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    results = [_train(tmp_path, uri, seed) for seed in (1, 2)]

    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "fewshot", "ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        first = ui.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first, first
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                assert ui.poll() is None, "fewshot ui exited early"
                assert time.time() < deadline, "MLflow UI did not answer within 90 s"
                time.sleep(0.5)
        # The same REST API the page calls: which experiment holds the runs, and what they logged.
        exps = _post(base + "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        runs = _post(base + "/ajax-api/2.0/mlflow/runs/search",
                     {"experiment_ids": [e["experiment_id"] for e in exps]})["runs"]
        by_name = {r["info"]["run_name"]: {m["key"]: m["value"] for m in r["data"].get("metrics", [])} for r in runs}
        assert len(by_name) == 2, by_name
        exp_id = runs[0]["info"]["experiment_id"]

        page = f"{base}/#/experiments/{exp_id}/runs"
        art = Path(os.environ.get("FEWSHOT_TEST_ARTIFACTS", tmp_path))
        art.mkdir(parents=True, exist_ok=True)
        shot = art / "mlflow_ui_runs.png"
        common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=3600,1000", "--virtual-time-budget=20000"]
        dom = subprocess.run(common + ["--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        subprocess.run(common + [f"--screenshot={shot}", page], capture_output=True, timeout=180)
        print(f"screenshot: {shot}")
        assert shot.exists() and shot.stat().st_size > 1000
        text = re.sub(r"<[^>]+>", " ", dom)
        for res, (name, metrics) in zip(sorted(results, key=lambda r: r["test_acc"]),
                                        sorted(by_name.items(), key=lambda kv: kv[1]["test_acc"])):
            assert metrics["test_acc"] == pytest.approx(res["test_acc"])
            assert name in text, f"run {name} not on the runs page"
        # The runs table is a virtualised grid whose metric columns start off-screen, so each
        # run's own page (which lists its metrics) must show its final accuracy.
        ids = {r["info"]["run_name"]: r["info"]["run_id"] for r in runs}
        for name, metrics in by_name.items():
            run_dom = subprocess.run(common + ["--dump-dom", f"{base}/#/experiments/{exp_id}/runs/{ids[name]}"],
                                     capture_output=True, text=True, timeout=180).stdout
            run_text = re.sub(r"<[^>]+>", " ", run_dom)
            assert "test_acc" in run_text, f"run {name}: no test_acc on its page"
            value = metrics["test_acc"]
            assert any(f"{value:.{d}f}".rstrip("0") in run_text for d in (2, 3, 4)) or str(value) in run_text, \
                f"run {name}: test_acc {value} not shown on its page"
    finally:
        ui.terminate()
        try:
            ui.wait(10)
        except subprocess.TimeoutExpired:
            ui.kill()
