"""Test helper: real ``fewshot`` processes without paying torch's and MLflow's imports in each.

:class:`Launcher` starts ONE Python process that imports torch, MLflow and fewshot and draws the glyphs
once, then waits for requests. Each request is a list of commands; the launcher forks one child per
command, all before any waits (so they run together), and each child is a process of its own: its own
working directory, environment, stdout/stderr files and, in the child, its own MLflow store, engine
and sqlite connections (the launcher itself never opens a store). A child runs
``fewshot <arguments>`` through the CLI's own entry point, as the console script does.

``startup`` of a command is a file the child runs before the command, as a fresh interpreter runs a
``sitecustomize`` on its PYTHONPATH (tests/fewshot/sqlite_faults: the sqlite faults).

:func:`shared_launcher` gives every test module of the session the same launcher (its start-up, ~20 s
of CPU for the imports and the glyphs, is paid once); it ends when the session does.
"""
from __future__ import annotations

import atexit
import json
import subprocess
import sys
from pathlib import Path

LAUNCHER = r"""
import json, logging, os, runpy, sys
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot, mlflow.entities, mlflow.tracking, torch
import fewshot.evaluate_run, fewshot.plots, fewshot.training, matchers, models, prompts
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from episodes import load_splits
from fewshot.cli import cli
load_splits("glyphs", None, 28)  # the generated glyphs are memoised: the children inherit them
requests = sys.stdin
sys.stdin = open(os.devnull)
print("ready", flush=True)
for line in requests:
    pids = []
    for cmd in json.loads(line):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.chdir(cmd["cwd"])
                os.environ.update(cmd["env"])
                for fd, suffix in ((1, ".out"), (2, ".err")):
                    os.dup2(os.open(cmd["prefix"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                logging.root.handlers.clear()
                if cmd["startup"]:
                    runpy.run_path(cmd["startup"])
                try:
                    cli.main(args=cmd["args"], prog_name="fewshot")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                import traceback; traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]), flush=True)
"""


class Launcher:
    """One warm launcher process; :meth:`together` runs commands as processes forked together from it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"the launcher did not start (exit {self.proc.wait()})"

    def together(self, commands, folder: Path) -> list:
        """Run ``commands`` at the same time, one process each: a list of ``(arguments, cwd)`` or
        ``(arguments, cwd, env, startup)``; their stdout/stderr are kept in ``folder``. Returns a
        ``subprocess.CompletedProcess`` per command, in order."""
        folder.mkdir(parents=True, exist_ok=True)
        first = len(list(folder.glob("process*.out")))
        request = []
        for i, cmd in enumerate(commands):
            args, cwd, env, startup = (*cmd, None, None)[:4]
            request.append({"args": [str(a) for a in args], "cwd": str(cwd), "env": dict(env or {}),
                            "startup": str(startup) if startup else None,
                            "prefix": str(folder / f"process{first + i}")})
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the launcher died (exit {self.proc.wait()})"
        return [subprocess.CompletedProcess(["fewshot", *r["args"]], code, Path(r["prefix"] + ".out").read_text(),
                                            Path(r["prefix"] + ".err").read_text())
                for r, code in zip(request, json.loads(line))]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


_shared = None


def shared_launcher() -> Launcher:
    """The session's launcher, started on first use (again if it has died)."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = Launcher()
        atexit.register(_shared.close)
    return _shared
