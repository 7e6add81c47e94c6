"""scripts/gpu_check.sh on a machine without a GPU: it skips cleanly, installs nothing, and its dry
run prints commands that the real CLI accepts.

(No test name here contains the word the script selects its GPU tests by, so that the script's
own `pytest -k` run does not run these tests again.)
"""
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
PATHS = ["tests", "conv4", "vig", "patch_voting", "maml", "fomaml", "damvp", "knn_faiss", "bf16", "torchrun"]


@pytest.fixture
def logging_python(tmp_path):
    """A PYTHON for the script that records every invocation before running the real interpreter."""
    log = tmp_path / "python-calls.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {shlex.quote(str(log))}\n'
                       f'exec {shlex.quote(sys.executable)} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def run_script(*args, env=None, cwd=None, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_the_script_parses():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_hidden_gpus_mean_a_one_line_skip_with_exit_0_and_nothing_run(tmp_path, logging_python):
    python, log = logging_python
    t0 = time.perf_counter()
    proc = run_script(env={"CUDA_VISIBLE_DEVICES": "", "PYTHON": str(python)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["gpu_check: skipped: CUDA_VISIBLE_DEVICES='' hides every GPU"]
    assert time.perf_counter() - t0 < 10
    assert not log.exists()  # not even python ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python"]  # no JSON, no work folder here


def test_without_a_gpu_the_script_says_why_and_installs_nothing(tmp_path, logging_python):
    import torch

    if torch.cuda.is_available() or any((Path(d) / "nvidia-smi").exists() for d in os.environ["PATH"].split(":")):
        pytest.skip("this machine has a GPU (or nvidia-smi): the script would run its checks")
    python, log = logging_python
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run(["bash", str(SCRIPT), "out.json"], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**env, "PYTHON": str(python), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"gpu_check: skipped: no CUDA device (nvidia-smi lists no GPU and torch in "
                                        f"{python} sees none)"]
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "torch.cuda.is_available()" in calls[0]  # one look, no pip
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("args,words", [(["--bogus"], "unknown option --bogus"),
                                        (["--device", "tpu"], "--device must be cuda or cpu"),
                                        (["--device"], "--device needs a value")])
def test_bad_options_exit_2_with_one_line(args, words, tmp_path):
    proc = run_script(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_bad_episode_count_exits_2(tmp_path):
    proc = run_script("--dry-run", env={"GPU_CHECK_EPISODES": "ten"}, cwd=tmp_path)
    assert proc.returncode == 2 and "GPU_CHECK_EPISODES must be a positive integer, got 'ten'" in proc.stderr


@pytest.fixture
def dry_run(tmp_path, logging_python):
    python, log = logging_python
    work = tmp_path / "work"
    proc = run_script("--dry-run", env={"PYTHON": str(python), "GPU_CHECK_WORK": str(work)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists(), f"the dry run ran python: {log.read_text()}"
    assert not work.exists() and not (tmp_path / "gpu_check.json").exists()
    sections, commands = {}, {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("gpu_check: --- "):
            current = line.split()[2]
            sections[current] = []
        elif line.startswith("+ "):
            argv = shlex.split(line[2:])
            (sections[current] if current else commands.setdefault("install", [])).append(argv)
    return proc.stdout, sections, commands.get("install", []), work


def test_the_dry_run_shows_every_path_and_the_installs(dry_run):
    out, sections, installs, work = dry_run
    assert [name for name in sections if name != "knn_faiss_index"] == PATHS
    pip = [" ".join(argv) for argv in installs]
    assert any("uninstall -y -q faiss-cpu" in c for c in pip)
    assert any("install" in c and "faiss-gpu-cu12==" in c and "constraints.txt" in c for c in pip)
    assert any("install" in c and "torch==2.14.1" in c and "torchvision==0.29.1" in c for c in pip)
    assert "would write gpu_check.json" in out


def fewshot_argv(argv):
    """The arguments after ``-m fewshot`` of a printed command."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "fewshot":
            return argv[i + 2:]
    raise AssertionError(f"not a fewshot command: {argv}")


def option(argv, name):
    return argv[argv.index(name) + 1]


def test_the_dry_run_trains_each_path_on_the_gpu_with_the_vig_reused(dry_run):
    _, sections, _, work = dry_run
    cli = {name: fewshot_argv(cmds[0]) for name, cmds in sections.items()
           if name not in ("tests", "bf16", "knn_faiss_index")}
    for name, argv in cli.items():
        assert option(argv, "--device") == "cuda", name
        assert "--json" in argv and "--tracking-uri" in argv, name  # episodes/s are read from the run's MLflow
    vig = cli["vig"]
    assert option(vig, "--backbone") == "vig_small_28" and int(option(vig, "--val-episodes")) > 0  # writes best.pt
    best = str(Path(option(vig, "--run-dir")) / "best.pt")
    for name, init in (("maml", "maml"), ("fomaml", "fomaml")):
        assert option(cli[name], "--meta-init") == init and option(cli[name], "--adapt") == "tune"
        assert option(cli[name], "--backbone-from") == best
    assert option(cli["damvp"], "--prompt") == "damvp" and option(cli["damvp"], "--backbone-from") == best
    assert cli["knn_faiss"][0] == "eval" and option(cli["knn_faiss"], "--matcher") == "knn"
    assert option(cli["knn_faiss"], "--run-dir") == option(vig, "--run-dir")
    assert option(cli["patch_voting"], "--matcher") == "patch_voting"
    assert option(cli["conv4"], "--backbone") == "conv4"
    torchrun = sections["torchrun"][0]
    assert "torch.distributed.run" in torchrun and option(torchrun, "--nproc_per_node") == "1"
    assert sections["tests"][0][-3:] == ["-k", "cuda", str(REPO / "tests")]
    assert sections["bf16"][0][-2:] == ["cuda", "200"]


def test_every_printed_fewshot_command_is_accepted_by_the_real_cli(dry_run):
    """Each command's options parse with the click commands, and a training command's options make a
    valid Config (cross-option rules included, e.g. --meta-init needing --adapt tune)."""
    from fewshot.cli import cli
    from fewshot.config import Config, merge

    fields = {f.name for f in dataclasses.fields(Config)}
    _, sections, _, _ = dry_run
    checked = 0
    for name, cmds in sections.items():
        for argv in cmds:
            if "fewshot" not in argv:
                continue
            args = fewshot_argv(argv)
            command = cli.get_command(None, args[0])
            ctx = command.make_context(args[0], list(args[1:]))
            if args[0] == "train":
                merge(Config(), {k: v for k, v in ctx.params.items() if k in fields and v is not None})
            checked += 1
    assert checked == 8  # 7 trainings and the k-NN evaluation
