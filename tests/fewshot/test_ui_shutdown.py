"""``fewshot ui`` stops its whole process tree on SIGTERM and Ctrl-C (SIGINT): the server it starts,
the server's workers, and processes that left its process group; also those ignoring SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fewshot.ui_server import _stat

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find processes")

# A server stand-in: a worker, a worker that ignores SIGTERM, and one in a session of its own (as MLflow
# starts its jobs); it prints their pids and waits.
TREE = """
import signal, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
deaf = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(600)"]
kids = [subprocess.Popen(sleep), subprocess.Popen(deaf, stdout=subprocess.PIPE), subprocess.Popen(sleep, start_new_session=True)]
kids[1].stdout.readline()  # its SIGTERM handler is in place
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _descendants(pid: int) -> set:
    """Live processes under ``pid`` (from /proc), itself included."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[0] != "Z":
            parents.setdefault(st[1], []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(parents.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait_gone(pids, timeout_s: float) -> set:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if _alive(p)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_workers_deaf_ones_and_those_in_their_own_session(sig):
    code = ("import sys; from fewshot.ui_server import serve; "
            f"raise SystemExit(serve([sys.executable, '-c', {TREE!r}], grace_s=1.0))")
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        kids = [int(p) for p in runner.stdout.readline().split()]
        assert len(kids) == 3 and all(_alive(p) for p in kids)
        server = _stat(kids[0])[1]  # the stand-in, parent of its workers
        assert _stat(kids[2])[2] != server, "the third worker should have left the server's process group"
        runner.send_signal(sig)
        assert runner.wait(30) == 0
        assert _wait_gone([server, *kids], 10) == set()
    finally:
        runner.kill()
        for p in _descendants(runner.pid) - {runner.pid}:
            os.kill(p, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fewshot_ui_stopped_by_sigterm_leaves_no_process_behind(tmp_path):
    """MLflow's server with its job runners on (huey workers), as the issue saw them left running; Ctrl-C
    on the real server ends tests/fewshot/test_ui_browser.py."""
    sig = signal.SIGTERM
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    ui = subprocess.Popen([sys.executable, "-m", "fewshot", "ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        line = ui.stdout.readline()
        assert re.search(rf"http://127\.0\.0\.1:{port}/", line), line
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                assert ui.poll() is None, "fewshot ui exited early"
                assert time.monotonic() < deadline, "the MLflow server did not answer within 120 s"
                time.sleep(0.5)
        while not any("huey_consumer" in _cmdline(p) for p in _descendants(ui.pid)):  # the job runner starts them
            assert time.monotonic() < deadline, "no huey job runner under fewshot ui within 120 s"
            time.sleep(0.2)
        tree = _descendants(ui.pid) - {ui.pid}
        assert len(tree) >= 2, f"expected the server and its workers under fewshot ui, found {tree}"
        ui.send_signal(sig)
        assert ui.wait(60) == 0
        assert _wait_gone(tree, 10) == set(), "processes left running after fewshot ui stopped"
    finally:
        ui.kill()
        for p in _descendants(ui.pid) - {ui.pid}:
            os.kill(p, signal.SIGKILL)


def test_serve_opens_the_address_once_the_server_answers_and_sigterm_stops_it(monkeypatch):
    import webbrowser

    from fewshot.ui_server import serve

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    opened = []

    def browser(url):  # the server must answer by now; then the user's service manager stops fewshot ui
        opened.append((url, urllib.request.urlopen(base + "/", timeout=5).status))
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(webbrowser, "open", browser)
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert serve(cmd, ready_url=base + "/", open_url=base + "/#/experiments/1/runs", grace_s=2.0) == 0
    assert opened == [(base + "/#/experiments/1/runs", 200)]
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/", timeout=2)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers given back
