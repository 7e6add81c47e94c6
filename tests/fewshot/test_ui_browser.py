"""``fewshot ui`` as a person uses it: two tracked runs, ``fewshot ui`` started, the exact address it
prints opened in headless Chromium in a 1400x900 window, and each run's name, test accuracy, way,
shot, backbone and matcher visible there without a click or a scroll (inside the window, not cut
off, not covered). The screenshot is kept under ``$FEWSHOT_TEST_ARTIFACTS`` (default: the test's tmp
folder; the path is printed). Ctrl-C then stops the UI with every process it started."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1400, 900


class Page:
    """One Chromium tab driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
    on the browser's fd 3, replies on its fd 4, each a JSON object ended by a NUL byte)."""

    def __init__(self, binary: str, profile: Path):
        to_browser, self._to = os.pipe()
        self._from, from_browser = os.pipe()

        def fds():  # the browser's fd 3 and 4, whatever numbers the pipes got here
            import fcntl
            a, b = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser, from_browser))
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4, to_browser, from_browser), preexec_fn=fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buf, self._id, self.session = b"", 0, None

    def send(self, method: str, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": self.session} if self.session else {})}
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._from, 1 << 16)
                assert chunk, "Chromium closed its DevTools pipe"
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# Every cell of the runs table (header cells: row null) with the text pieces it draws, and for each piece
# how many of its leading characters a person sees: inside the window and the cell (not cut off), with
# the cell itself at that text's middle (nothing drawn over it).
CELLS = """(() => {
  const out = [];
  for (const cell of document.querySelectorAll('.ag-header-cell[col-id], .ag-row .ag-cell[col-id]')) {
    const row = cell.closest('.ag-row');
    const box = cell.getBoundingClientRect();
    const right = Math.min(box.right, innerWidth), bottom = Math.min(box.bottom, innerHeight);
    const parts = [];
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const text = node.textContent;
      if (!text.trim()) continue;
      const range = document.createRange();
      let seen = 0;
      for (let n = 1; n <= text.length; n++) {
        range.setStart(node, 0); range.setEnd(node, n);
        const r = range.getBoundingClientRect();
        if (r.width === 0 || r.left < Math.max(box.left, 0) || r.right > right + 0.5 || r.top < Math.max(box.top, 0)
            || r.bottom > bottom + 0.5) break;
        seen = n;
      }
      if (seen) {
        range.setStart(node, 0); range.setEnd(node, seen);
        const r = range.getBoundingClientRect();
        const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
        if (!(hit && hit.contains(node.parentElement) || node.parentElement.contains(hit))) seen = 0;
      }
      parts.push([text.trim(), seen, text.length]);
    }
    out.push({col: cell.getAttribute('col-id'), row: row ? row.getAttribute('row-index') : null, parts,
              left: Math.round(box.left), width: Math.round(box.width)});
  }
  return out;
})()"""


def _shown(cell: dict, text: str, chars: int | None = None) -> bool:
    """Whether ``cell`` draws ``text`` with its first ``chars`` characters (default: all) in view; a cut-off
    text ends in an ellipsis drawn over its last two characters in view."""
    for part, seen, length in cell["parts"]:
        if part == text:
            need = chars or length
            return seen >= need if seen == length else seen - 2 >= need
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path: Path, uri: str, name: str, *options: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "fewshot", "train", "--dataset", "glyphs", "--backbone", "conv4", "--episodes", "3",
         "--val-episodes", "0", "--eval-episodes", "5", "--threads", "1", "--tracking-uri", uri, "--no-progress",
         "--run-dir", str(tmp_path / name), "--json", *options],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _run_names(base: str) -> dict:
    """``{run id: run name}`` as the page's REST API gives them."""
    exps = _post(base + "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    runs = _post(base + "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [e["experiment_id"] for e in exps]})
    return {r["info"]["run_id"]: r["info"]["run_name"] for r in runs["runs"]}


def _live(pids) -> set:
    from fewshot.ui_server import _stat

    return {p for p in pids if (st := _stat(p)) is not None and st[0] != "Z"}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install chromium; .ci/run does it as root)")
def test_the_address_fewshot_ui_prints_shows_each_runs_figures_in_a_1400x900_window(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    matchers = ["prototype", "patch_voting"]
    results = [_train(tmp_path, uri, "glyphs-seed1", "--matcher", matchers[0], "--way", "5", "--shot", "1", "--seed", "1"),
               _train(tmp_path, uri, "glyphs-seed2", "--matcher", matchers[1], "--way", "3", "--shot", "2", "--seed", "2")]
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "fewshot", "ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    page = None
    try:
        printed = ui.stdout.readline()
        found = re.search(r"http://\S+", printed)
        assert found, printed
        url, base = found.group(0), f"http://127.0.0.1:{port}"
        assert re.fullmatch(rf"{base}/#/experiments/\d+/runs\?viewStateShareKey=\S+", url), url
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                assert ui.poll() is None, "fewshot ui exited early"
                assert time.monotonic() < deadline, "the MLflow UI did not answer within 120 s"
                time.sleep(0.5)
        names = {r["mlflow_run_id"]: _run_names(base)[r["mlflow_run_id"]] for r in results}

        page = Page(CHROMIUM, tmp_path / "chromium-profile")
        page.open(url)  # the exact address printed
        deadline, cells, last = time.monotonic() + 120, [], None
        while time.monotonic() < deadline:  # until both runs' rows are drawn and the columns stop moving
            cells = page.evaluate(CELLS) or []
            texts = {part[0] for c in cells for part in c["parts"]}
            layout = [(c["col"], c["left"], c["width"]) for c in cells if c["row"] is None]
            if set(names.values()) <= texts and layout == last:
                break
            last = layout
            time.sleep(1.0)
        art = Path(os.environ.get("FEWSHOT_TEST_ARTIFACTS", tmp_path)).resolve()
        art.mkdir(parents=True, exist_ok=True)
        shot = art / "fewshot_ui_runs_1400x900.png"
        page.screenshot(shot)
        print(f"screenshot: {shot}")

        headers = {c["col"]: c for c in cells if c["row"] is None}
        for col, title in [("metrics.`test_acc`", "test_acc"), ("tags.`way`", "way"), ("tags.`shot`", "shot"),
                           ("tags.`backbone`", "backbone"), ("tags.`matcher`", "matcher")]:
            assert col in headers and _shown(headers[col], title), f"column {title} not in view: {headers.get(col)}"
        for res, matcher in zip(results, matchers):
            name = names[res["mlflow_run_id"]]
            assert name == f"{Path(res['run_dir']).name} conv4 {matcher} {res['test_way']}w{res['test_shot']}s", name
            (row,) = {c["row"] for c in cells if c["row"] is not None and name in [p[0] for p in c["parts"]]}
            by_col = {c["col"]: c for c in cells if c["row"] == row}
            # the name starts in view (its settings are the columns beside it; all of it shows on hover)
            assert _shown(by_col["attributes.`Run Name`"], name, 12), f"run {name} not in view: {by_col}"
            (acc,) = [p[0] for p in by_col["metrics.`test_acc`"]["parts"]]
            assert float(acc) == pytest.approx(res["test_acc"], abs=1e-6)
            assert _shown(by_col["metrics.`test_acc`"], acc, 5), f"{name}: test accuracy {acc} not readable in view"
            for col, value in {"tags.`way`": str(res["test_way"]), "tags.`shot`": str(res["test_shot"]),
                               "tags.`backbone`": "conv4", "tags.`matcher`": matcher}.items():
                assert _shown(by_col[col], value), f"{name}: {col} {value} not in view: {by_col.get(col)}"
            dataset = " ".join(p[0] for p in by_col["attributes.`Dataset`"]["parts"])
            assert res["test_bank_id"] in dataset, f"the Dataset column names the test bank: {dataset}"

        from fewshot.ui_server import _tree
        tree = {p for p, _ in _tree(ui.pid)} - {ui.pid}
        assert tree, "no server under fewshot ui"
        ui.send_signal(signal.SIGINT)  # Ctrl-C
        assert ui.wait(60) == 0
        deadline = time.monotonic() + 10
        while _live(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _live(tree), f"processes left after Ctrl-C: {_live(tree)}"
    finally:
        if page is not None:
            page.close()
        if ui.poll() is None:
            ui.send_signal(signal.SIGTERM)
            try:
                ui.wait(30)
            except subprocess.TimeoutExpired:
                ui.kill()
