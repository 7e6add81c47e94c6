"""Accuracy ablation on omniglot-minimal: every lever as a paired difference on the same banks.

A *plan* (YAML, e.g. ``benchmarks/configs/omniglot-minimal-ablation.yaml``) lists training
recipes as steps. Each step is ``fewshot train`` with the plan's common options plus its own
(``options:`` a mapping of option names to values, or ``config:`` a config file), and names the
step it is compared with (``vs:``). Every step is trained in ``--runs-dir/<name>`` with
``--resume`` (a finished run is only re-scored, a killed one continues), scored on the test bank
of every ``--settings`` entry (``fewshot eval`` for the settings other than the run's own), and
the report pairs each step with its ``vs`` step and the plan's ``final`` pair (ViG vs Conv-4) with
:func:`fewshot.compare.paired_test`. The Markdown report starts with the exact command, the git
commit and the date; nothing in it is written by hand.

Every evaluation is kept in ``--runs-dir/eval_cache.json`` under a key of its settings, the
sha256 of the weights it scored and the code version that scored it (the commit, plus a hash of
the uncommitted changes to tracked files when there are any): a rerun reuses a cell only when all
three are the same, so a reused cell is never stamped with a later commit than computed it.

Usage:
    python benchmarks/omniglot_minimal.py --plan benchmarks/configs/omniglot-minimal-ablation.yaml \\
        --data-root ../shared/data/omniglot --runs-dir runs/omniglot-minimal \\
        --out benchmarks/results/omniglot_minimal.md
    python benchmarks/omniglot_minimal.py --plan ... --smoke --out /tmp/smoke.md   # seconds, glyphs
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # after the repository: benchmarks/matchers.py is a script

import _results  # noqa: E402
from fewshot.compare import load_run, paired_test  # noqa: E402

SMOKE = {"dataset": "glyphs", "data_root": None, "episodes": 2, "eval_episodes": 4, "val_episodes": 2,
         "train_way": 5, "train_shot": 1, "train_query": 2}
"""What ``--smoke`` overrides (and pretraining cut to one epoch): the same machinery and report on a few
glyphs episodes."""


def _setting(text: str) -> tuple:
    way, shot = text.lower().rstrip("s").split("w")
    return int(way), int(shot)


def _flags(options: dict) -> list:
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            out += [flag, str(value)]
    return out


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(Path(path).read_text())
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list):
        raise SystemExit(f"{path}: a plan is a mapping with a 'steps' list")
    names = [s.get("name") for s in plan["steps"]]
    for step in plan["steps"]:
        if step.get("eval_of") is not None and step["eval_of"] not in names:
            raise SystemExit(f"{path}: step {step['name']!r} scores unknown step {step['eval_of']!r}")
        if step.get("vs") is not None and step["vs"] not in names:
            raise SystemExit(f"{path}: step {step['name']!r} is compared with unknown step {step['vs']!r}")
    for name in plan.get("final", []):
        if name not in names:
            raise SystemExit(f"{path}: final names unknown step {name!r}")
    return plan


def _run(cmd: list, log: Path) -> tuple:
    """Run ``cmd``, stderr to ``log``; returns (last JSON line of stdout, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "a") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}, see {log}): {shlex.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def _tracking(args) -> list:
    if args.no_track:
        return ["--no-track"]
    return ["--experiment", args.experiment] + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else [])


def code_version(outputs=()) -> str:
    """The version of the code that scores: :func:`_results.commit` (the short commit, ``-dirty`` when a tracked
    file differs), plus ``+<sha256 of git diff HEAD>`` (12 hex digits) for a dirty tree, so two different sets of
    uncommitted changes on one commit are two versions. Results files and ``outputs`` do not count."""
    commit = _results.commit(outputs)
    if not commit.endswith("-dirty"):
        return commit
    excluded = [":(exclude)benchmarks/results"]
    for path in outputs:
        path = Path(path).resolve()
        if path.is_relative_to(ROOT):
            excluded.append(f":(exclude){path.relative_to(ROOT).as_posix()}")
    diff = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD", "--", ".", *excluded], capture_output=True).stdout
    return f"{commit}+{hashlib.sha256(diff).hexdigest()[:12]}"


def weights_sha256(run_dir: Path) -> str | None:
    """sha256 of ``run_dir/best.pt``, read every time (a few MB: milliseconds); None when there is none."""
    best = Path(run_dir) / "best.pt"
    if not best.is_file():
        return None
    digest = hashlib.sha256()
    with open(best, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(args_key: list, run_dir: Path, code: str) -> str:
    """The eval cache's key: the scoring settings, the weights' sha256 and the code version."""
    return json.dumps({"settings": [str(a) for a in args_key], "weights_sha256": weights_sha256(run_dir),
                       "code": code}, sort_keys=True)


def _cached(args, key: str) -> str | None:
    cache_file = Path(args.runs_dir) / "eval_cache.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    folder = cache.get(key)
    return folder if folder and (Path(folder) / "result.json").is_file() else None


def _remember(args, key: str, folder: str) -> None:
    cache_file = Path(args.runs_dir) / "eval_cache.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}  # another invocation may have added
    cache[key] = str(folder)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, cache_file)  # atomic: a concurrent reader sees the old or the new file, never half of one


def _eval(fewshot: list, run_dir: Path, way: int, shot: int, episodes: int, extra: list, args, log: Path) -> str:
    """``fewshot eval`` of ``run_dir`` at ``way``/``shot`` on an ``episodes`` test bank; returns the scores folder.

    An evaluation already made by this script with the same arguments, of the same weights (``best.pt``'s
    sha256), by the same code (:func:`code_version`), is reused from ``<runs-dir>/eval_cache.json`` when its
    folder is still there: the scores are a pure function of those, so a rerun after a new step does not score
    the old ones again, and a new commit scores everything again."""
    args_key = ["--run-dir", str(run_dir), "--way", str(way), "--shot", str(shot), "--eval-episodes", str(episodes),
                *extra]
    key = cache_key(args_key, run_dir, args.code)
    hit = _cached(args, key)
    if hit:
        return hit
    track = _tracking(args)
    ev, _ = _run([*fewshot, "eval", *args_key, *track, "--threads", str(args.threads), "--no-progress", "--json"], log)
    _remember(args, key, ev["eval_dir"])
    return ev["eval_dir"]


def _shown(words: list) -> str:
    """A ``fewshot`` command line for the report, its paths relative to the repository (``_results.shown_arg``)."""
    return shlex.join(map(_results.shown_arg, words))


def run_step(step: dict, plan: dict, args, settings: list) -> dict:
    """Train (or resume) one step and score it on every setting; ``{setting: scores folder}`` + times.

    A step with ``eval_of: <step>`` trains nothing: it scores that step's weights with its own
    ``options`` (test-time changes such as the matcher or the node filter) through ``fewshot eval``."""
    options = {**plan.get("common", {}), **step.get("options", {})}
    if args.data_root:
        options["data_root"] = args.data_root
    if args.episodes:
        options["episodes"] = args.episodes
    if args.eval_episodes:
        options["eval_episodes"] = args.eval_episodes
    if args.smoke:
        options.update(SMOKE, pretrain_epochs=min(1, options.get("pretrain_epochs", 0)))
    episodes = options.get("eval_episodes", 2000)
    fewshot = [sys.executable, "-m", "fewshot"]
    log = Path(args.runs_dir) / f"{step['name']}.log"
    if step.get("eval_of"):  # ``settings:`` may narrow a costly scoring to some of the settings
        run_dir = Path(args.runs_dir) / step["eval_of"]
        extra = _flags(step.get("options", {}))
        mine = [x for x in settings if not step.get("settings") or f"{x[0]}w{x[1]}s" in step["settings"]]
        out = {"folders": {(w, s): _eval(fewshot, run_dir, w, s, episodes, extra, args, log) for w, s in mine},
               "train_wall_s": 0.0, "command": _shown(["eval", "--run-dir", str(run_dir), *extra])}
        print(f"{step['name']}: scored {step['eval_of']} with {' '.join(extra)}", file=sys.stderr)
        return out
    run_dir = Path(args.runs_dir) / step["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    track = _tracking(args)
    config = ["--config", step["config"]] if step.get("config") else []
    cmd = [*fewshot, "train", *config, *_flags(options), *track, "--threads", str(args.threads), "--no-progress",
           "--run-dir", str(run_dir), "--resume", "--json"]
    result, wall = _run(cmd, log)
    own = (result["test_way"], result["test_shot"])
    out = {"folders": {own: str(run_dir)}, "train_wall_s": wall, "command": _shown(cmd[3:])}
    for way, shot in settings:
        if (way, shot) != own:
            out["folders"][(way, shot)] = _eval(fewshot, run_dir, way, shot, episodes, [], args, log)
    if step["name"] in plan.get("final", []) and args.final_eval_episodes:  # the final pair: larger banks
        seed = ["--bank-seed", str(args.final_bank_seed)]
        out["final"] = {(w, s): _eval(fewshot, run_dir, w, s, args.final_eval_episodes, seed, args, log)
                        for w, s in settings}
    print(f"{step['name']}: trained/resumed in {wall:.0f} s", file=sys.stderr)
    return out


def _cell(scores) -> str:
    if scores is None:
        return "not scored"
    return f"{100 * scores.mean:.2f} +- {100 * scores.ci95:.2f}"


def _diff(a, b) -> str:
    """Paired difference ``a - b`` (:func:`_results.paired_cell`) of two scored runs, which must be scored on
    one bank (``ValueError`` naming both banks otherwise)."""
    if a is None or b is None:
        return "not scored"
    if a.bank_id != b.bank_id:
        raise ValueError(f"a paired difference needs one bank: {a.bank_id} ({a.accuracies.size} episodes) "
                         f"against {b.bank_id} ({b.accuracies.size} episodes)")
    return _results.paired_cell(a.accuracies, b.accuracies)


def report(plan: dict, done: dict, settings: list, argv: list, args) -> str:
    scores = {name: {s: load_run(folder) for s, folder in d["folders"].items()} for name, d in done.items()}
    final_scores = {name: {s: load_run(folder) for s, folder in d["final"].items()}
                    for name, d in done.items() if "final" in d}
    heads = [f"{w}w{s}s" for w, s in settings]
    commit = args.commit
    lines = [f"# omniglot-minimal accuracy ablation",
             "",
             f"Generated by `{_results.command(__file__, argv)}` at commit {commit} "
             f"on {datetime.date.today().isoformat()}, {os.cpu_count()} CPUs. Untouched output of that command.",
             ""]
    steps = [s for s in plan["steps"] if s["name"] in done]
    for w, s in settings:
        banks = {scores[st["name"]][(w, s)].bank_id for st in steps if (w, s) in scores[st["name"]]}
        episodes = {scores[st["name"]][(w, s)].accuracies.size for st in steps if (w, s) in scores[st["name"]]}
        lines.append(f"- {w}-way {s}-shot: bank {', '.join(sorted(banks))}, {', '.join(map(str, sorted(episodes)))} "
                     "episodes, mean accuracy +- 95% CI (%)")
    wall = "train call s (a finished run is only re-scored)"
    lines += ["", "## Every step", "", "| step | what it changes | " + " | ".join(heads) + f" | {wall} |",
              "|---|---|" + "---|" * len(heads) + "---|"]
    for st in steps:
        cells = [_cell(scores[st["name"]].get(x)) for x in settings]
        lines.append(f"| {st['name']} | {st.get('what', '')} | " + " | ".join(cells)
                     + f" | {done[st['name']]['train_wall_s']:.0f} |")
    lines += ["", "## Each lever against the step before it (paired, same episodes; points, t-test and Wilcoxon p)", "",
              "| step | vs | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for st in steps:
        if st.get("vs") in done:
            cells = [_diff(scores[st["name"]].get(x), scores[st["vs"]].get(x)) for x in settings]
            lines.append(f"| {st['name']} | {st['vs']} | " + " | ".join(cells) + " |")
    final = [n for n in plan.get("final", []) if n in done]
    if len(final) == 2:
        a, b = final
        table = final_scores if len(final_scores) == 2 else scores
        size = {table[a][x].accuracies.size for x in settings}
        seed = args.final_bank_seed if table is final_scores else 0
        lines += ["", f"## Final: {a} vs {b} ({', '.join(map(str, sorted(size)))}-episode banks, bank seed {seed})", "",
                  "| setting | bank | " + a + " | " + b + " | difference (a - b) |", "|---|---|---|---|---|"]
        for x, head in zip(settings, heads):
            lines.append(f"| {head} | {table[a][x].bank_id} | {_cell(table[a][x])} | {_cell(table[b][x])} | "
                         f"{_diff(table[a][x], table[b][x])} |")
    lines += ["", "## Commands (scoring steps add `--way/--shot/--eval-episodes` per setting)", ""] + \
        [f"- {n}: `fewshot {d['command']}`" for n, d in done.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--plan", required=True, type=Path, help="YAML plan of steps")
    p.add_argument("--runs-dir", default="runs/omniglot-minimal", help="one run folder per step inside it")
    p.add_argument("--out", required=True, type=Path, help="Markdown report to write")
    p.add_argument("--data-root", help="folder with the omniglot-minimal zips (overrides the plan)")
    p.add_argument("--settings", default="5w1s,5w5s,20w1s,20w5s", help="way/shot settings scored")
    p.add_argument("--steps", help="comma-separated subset of the plan's steps (default: all)")
    p.add_argument("--episodes", type=int, help="override every step's training episodes (screening)")
    p.add_argument("--eval-episodes", type=int, help="override the bank size")
    p.add_argument("--final-eval-episodes", type=int, help="score the plan's final pair on banks of this size "
                   "(every setting, by fewshot eval)")
    p.add_argument("--final-bank-seed", type=int, default=1, help="bank seed of the final pair's banks: other "
                   "episodes than the ablation's (seed 0), on which the recipes were chosen")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--experiment", default="omniglot-minimal")
    p.add_argument("--tracking-uri", help="MLflow store of the runs (default: fewshot's, ./mlruns)")
    p.add_argument("--no-track", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a few glyphs episodes per step: checks the machinery")
    args = p.parse_args(argv)
    plan = load_plan(args.plan)
    settings = [_setting(s) for s in args.settings.split(",") if s]
    wanted = args.steps.split(",") if args.steps else [s["name"] for s in plan["steps"]]
    unknown = set(wanted) - {s["name"] for s in plan["steps"]}
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; the plan has {[s['name'] for s in plan['steps']]}")
    args.commit = _results.commit([args.out])  # once, before anything is scored: the header names this commit
    args.code = code_version([args.out])
    done = {s["name"]: run_step(s, plan, args, settings) for s in plan["steps"] if s["name"] in wanted}
    text = report(plan, done, settings, argv, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
