"""Run a server command as the leader of its own process group, and stop everything it started.

MLflow's server starts uvicorn workers and huey job processes; stopping only the process we started
leaves those running. Here the server leads a new session, so one ``killpg`` reaches every process
it started; on Linux, processes that left the group (MLflow starts each job in a session of its own)
are found through their parents in /proc before the group is signalled. SIGTERM and SIGINT stop the
whole tree (SIGTERM first, SIGKILL for what is left after a grace period), and so does any other way
out of :func:`serve`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import Mapping, Optional, Sequence

__all__ = ["serve", "stop_tree", "wait_until_up"]

_PROC = Path("/proc")


def _stat(pid: int) -> Optional[tuple]:
    """``(state, ppid, pgrp, start time)`` of a process from /proc (None: gone or no /proc)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_stats() -> dict:
    out = {}
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def _tree(pid: int) -> set:
    """``{(pid, start time)}`` of the live processes under ``pid`` (itself included) and in its group."""
    stats = _all_stats()
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in stats and p not in seen:
            seen.add(p)
            todo.extend(c for c, st in stats.items() if st[1] == p)
    seen |= {p for p, st in stats.items() if st[2] == pid}
    return {(p, stats[p][3]) for p in seen if stats[p][0] != "Z"}


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    if st is None and not _PROC.is_dir():  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    return st is not None and st[0] != "Z" and st[3] == start


def _signal(pgid: int, procs: set, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
    for pid, start in procs:
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def stop_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` (a process group leader) and every process it started: SIGTERM, then SIGKILL for
    whatever still lives after ``grace_s`` seconds; returns once none is left (zombies aside)."""
    procs = _tree(proc.pid)  # empty without /proc: the group signal and the leader's exit have to do
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        _signal(proc.pid, procs, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not any(_alive(p, s) for p, s in procs):
                return
            time.sleep(0.1)
    proc.wait()


def wait_until_up(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    """Poll ``url`` until it answers (True), ``proc`` exits or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.3)
    return False


class _Stop(Exception):
    pass


def serve(cmd: Sequence[str], env: Optional[Mapping[str, str]] = None, ready_url: Optional[str] = None,
          open_url: Optional[str] = None, grace_s: float = 10.0) -> int:
    """Run ``cmd`` in a session of its own until it exits (its exit code) or SIGTERM / SIGINT arrive (0);
    either way no process it started is left (:func:`stop_tree` with ``grace_s``). ``open_url`` is opened
    in a web browser once ``ready_url`` answers."""
    proc = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, start_new_session=True)

    def on_signal(signum, frame):
        raise _Stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if open_url and wait_until_up(ready_url or open_url, proc):
            webbrowser.open(open_url)
        return proc.wait()
    except _Stop:
        return 0
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        try:
            stop_tree(proc, grace_s)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
