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

Selection on validation only (``--select-on val``, or ``select_on: val`` in the plan): every step
is scored on *validation* banks of every setting (the val split: held-out characters of the
training alphabets; bank seed ``--val-bank-seed``, other episodes than the ones ``fewshot train``
picked its checkpoint on), and the report's step and lever tables, on which recipes are chosen,
show only those. The *test* banks (bank seed ``--final-bank-seed``, ``--final-eval-episodes``) are
scored once, for the plan's ``final`` steps only: the first against each of the others. The
report says which banks chose and which judged; ``--no-final`` trains and scores the validation
banks only, no test bank read (screening, while the final recipe is still being chosen).
(``fewshot train`` still scores its own test bank at the end of every run; this mode never reads
that score.)

Training seeds (``--seeds 0,1,2``): every step is trained once per seed, in
``--runs-dir/<name>/seed<k>``; a cell is the mean +- sd over seeds of the per-seed mean accuracy,
and every comparison pairs the runs of the same seed: the per-seed differences, how many seeds
agree in sign, and a paired t-test on the per-seed means (:func:`fewshot.compare.paired_test`
over seeds, not episodes). Without ``--seeds`` (and in ``--select-on test`` mode) each step is one
run in ``--runs-dir/<name>``, as before.

Every evaluation is kept in ``--runs-dir/eval_cache.json`` under a key of its settings, the
sha256 of the weights it scored and the code version that scored it (``_results.code_version``: a
hash of the content of the package that scores, ``fewshot eval``, and its pins, committed or not;
tests, docs, results and this script's own reporting do not count): a rerun reuses a cell only when
all three are the same, so a reused cell under a later commit was computed by the package that commit
holds.

Usage:
    python benchmarks/omniglot_minimal.py --plan benchmarks/configs/omniglot-minimal-ablation.yaml \\
        --data-root ../shared/data/omniglot --runs-dir runs/omniglot-minimal \\
        --out benchmarks/results/omniglot_minimal.md
    python benchmarks/omniglot_minimal.py --plan benchmarks/configs/omniglot-minimal-validation.yaml \\
        --data-root ../shared/data/omniglot --runs-dir runs/omniglot-minimal-val --seeds 0,1,2 \\
        --final-eval-episodes 2000 --out benchmarks/results/omniglot_minimal_validation.md
    python benchmarks/omniglot_minimal.py --plan ... --smoke --out runs/smoke/report.md   # seconds, glyphs
"""
from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))  # after the repository: benchmarks/matchers.py is a script

import _results  # noqa: E402
from fewshot.compare import load_run, paired_test  # noqa: E402

SMOKE = {"dataset": "glyphs", "data_root": None, "episodes": 2, "eval_episodes": 4, "val_episodes": 2,
         "train_way": 5, "train_shot": 1, "train_query": 2, "val_per_alphabet": None, "episode_groups": "none"}
"""What ``--smoke`` overrides (and pretraining cut to one epoch): the same machinery and report on a few
glyphs episodes (glyphs has no alphabets: the Omniglot-only options are dropped)."""


def _setting(text: str) -> tuple:
    way, shot = text.lower().rstrip("s").split("w")
    return int(way), int(shot)


def _flags(options: dict) -> list:
    """A plan's options (Config's names) as ``fewshot train`` flags: ``True`` / ``False`` -> ``--x`` / ``--no-x``,
    a component's mapping ``matcher_opts: {k: 5, learn_temperature: true}`` -> ``--matcher-opt k=5
    --matcher-opt learn_temperature=true``, ``None`` left out."""
    out = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict) and name.endswith("_opts"):
            text = {True: "true", False: "false"}
            out += [part for key, v in value.items()
                    for part in (flag[:-1], f"{key}={text[v] if isinstance(v, bool) else v}")]
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
    for table in final_tables(plan):
        for name in table:
            if name not in names:
                raise SystemExit(f"{path}: final names unknown step {name!r}")
    if plan.get("select_on", "test") not in SELECT_ON:
        raise SystemExit(f"{path}: select_on must be one of {', '.join(SELECT_ON)}, got {plan['select_on']!r}")
    return plan


def final_tables(plan: dict) -> list:
    """The plan's ``final``: one list of step names (one table: the first against each other), or a list of such
    lists (one table each)."""
    final = plan.get("final") or []
    if not all(isinstance(x, list) for x in final):
        final = [final]
    for table in final:
        if len(table) < 2 or not all(isinstance(x, str) for x in table):
            raise SystemExit(f"a final table names at least two steps, got {table!r}")
    return final


def _final_present(plan: dict, present: dict) -> list:
    """The plan's final tables cut to the steps in ``present``, those still with two or more: ``[ours, *others]``."""
    tables = [[n for n in table if n in present] for table in final_tables(plan)]
    return [table for table in tables if len(table) >= 2]


def _in_final(plan: dict, name: str) -> bool:
    return any(name in table for table in final_tables(plan))


SELECT_ON = ("test", "val")
"""``--select-on``: the banks the step tables show and recipes are chosen on."""


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


code_version = _results.code_version


def weights_sha256(run_dir: Path) -> str | None:
    """sha256 of ``run_dir/best.pt``; None when there is none."""
    return _results.file_sha256(Path(run_dir) / "best.pt")


def cache_key(args_key: list, run_dir: Path, code: str) -> str:
    """The eval cache's key (:class:`_results.ResultCache`): the scoring settings, ``best.pt``'s sha256 and the
    code version."""
    return _results.ResultCache.key(args_key, Path(run_dir) / "best.pt", code)


def _cache(args) -> "_results.ResultCache":
    return _results.ResultCache(Path(args.runs_dir) / "eval_cache.json")


def _cached(args, key: str) -> str | None:
    return _cache(args).get(key)


def _remember(args, key: str, folder: str) -> None:
    _cache(args).put(key, folder)


def _eval(fewshot: list, run_dir: Path, way: int, shot: int, episodes: int, extra: list, args, log: Path) -> str:
    """``fewshot eval`` of ``run_dir`` at ``way``/``shot`` on an ``episodes`` test bank; returns the scores folder.

    An evaluation already made by this script with the same arguments, of the same weights (``best.pt``'s
    sha256), by the same code (:func:`code_version`), is reused from ``<runs-dir>/eval_cache.json`` when its
    folder is still there: the scores are a pure function of those, so a rerun after a new step does not score
    the old ones again, and a change to the package scores everything again (one to docs, tests or this script's
    report does not)."""
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


@functools.lru_cache(maxsize=4)
def _splits(dataset: str, data_root, img_size, val_per_alphabet):
    from episodes import load_splits

    return load_splits(dataset, data_root, img_size, val_per_alphabet=val_per_alphabet)


def _score_val(run_dir: Path, way: int, shot: int, episodes: int, options: dict, args) -> str:
    """Score ``run_dir/best.pt`` (with ``options`` changed, e.g. the matcher) on a validation bank of the run's
    val split at ``way``/``shot`` (bank seed ``--val-bank-seed``, the run's queries per class and episode groups),
    in this process; returns the folder ``run_dir/val-best-<bank_id>[-<options hash>]`` with ``result.json`` and
    the per-episode accuracies, as ``fewshot compare`` reads them (``test_*`` keys, ``"split": "val"``). Cached
    as :func:`_eval` is."""
    args_key = ["val", "--run-dir", str(run_dir), "--way", str(way), "--shot", str(shot), "--eval-episodes",
                str(episodes), "--bank-seed", str(args.val_bank_seed), *_flags(options)]
    key = cache_key(args_key, run_dir, args.code)
    hit = _cached(args, key)
    if hit:
        return hit
    import torch

    from episodes import EpisodeSampler
    from episodes.sampler import class_groups
    from fewshot.compare import write_scores
    from fewshot.evaluate_run import load_run_config, load_trained_model
    from fewshot.evaluation import evaluate
    from fewshot.model import episode_img_size
    from fewshot.training import resolve_device

    torch.set_num_threads(args.threads)
    config = load_run_config(run_dir).replace(way=way, shot=shot, eval_episodes=episodes, track=False,
                                              threads=args.threads, **options)
    val = _splits(config.dataset, config.data_root, episode_img_size(config), config.val_per_alphabet).val
    if way > val.num_classes:
        raise SystemExit(f"{run_dir}: its val split has {val.num_classes} classes, too few for {way}-way validation "
                         "banks; hold out more (val_per_alphabet in the plan's common options, e.g. 6: 30 classes)")
    bank = EpisodeSampler(val, way, shot, config.query, seed=args.val_bank_seed,
                          groups=class_groups(val, config.episode_groups, config.dataset)).bank(episodes)
    model, path = load_trained_model(run_dir, config, val)
    t0 = time.perf_counter()
    res = evaluate(model, val, bank, resolve_device(config.device))
    name = f"val-best-{bank.bank_id}"
    if options:
        name += "-" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(run_dir) / name
    write_scores(folder, res.accuracies.tolist(), {
        **res.as_dict("test"), "split": "val", "bank_seed": args.val_bank_seed, "checkpoint": str(path),
        "weights_sha256": weights_sha256(run_dir), "code": args.code, "options": options,
        "eval_seconds": round(time.perf_counter() - t0, 3)})
    _remember(args, key, str(folder))
    return str(folder)


def _shown(words: list) -> str:
    """A ``fewshot`` command line for the report, its paths relative to the repository (``_results.shown_arg``)."""
    return shlex.join(map(_results.shown_arg, words))


def run_step(step: dict, plan: dict, args, settings: list, seed=None) -> dict:
    """Train (or resume) one step and score it on every setting; ``{setting: scores folder}`` + times.

    A step with ``eval_of: <step>`` trains nothing: it scores that step's weights with its own
    ``options`` (test-time changes such as the matcher or the node filter). ``seed``: the training seed
    (``--seed``) of a run in ``<runs-dir>/<name>/seed<seed>``; None: the plan's, in ``<runs-dir>/<name>``.
    Scores are on the selection banks (``--select-on``: the run's test bank and ``fewshot eval``, or
    validation banks by :func:`_score_val`); the plan's ``final`` steps also get ``"final"``: test banks of
    bank seed ``--final-bank-seed`` (in ``--select-on val`` mode always, the only test scores read)."""
    options = {**plan.get("common", {}), **step.get("options", {})}
    if args.data_root:
        options["data_root"] = args.data_root
    if args.episodes:
        options["episodes"] = args.episodes
    if args.eval_episodes:
        options["eval_episodes"] = args.eval_episodes
    if args.smoke:
        options.update(SMOKE, pretrain_epochs=min(1, options.get("pretrain_epochs", 0)))
    if seed is not None:
        options["seed"] = seed
    episodes = options.get("eval_episodes", 2000)
    fewshot = [sys.executable, "-m", "fewshot"]
    tag = "" if seed is None else f"seed{seed}"
    log = Path(args.runs_dir) / f"{step['name']}{'-' + tag if tag else ''}.log"
    val = args.select_on == "val"
    final_episodes = None if args.no_final else args.final_eval_episodes or (episodes if val else None)
    step_options = dict(step.get("options", {}))

    def score(run_dir: Path, way: int, shot: int, changes: dict) -> str:
        if val:
            return _score_val(run_dir, way, shot, episodes, changes, args)
        return _eval(fewshot, run_dir, way, shot, episodes, _flags(changes), args, log)

    def judge(run_dir: Path, changes: dict) -> dict:
        bank = ["--bank-seed", str(args.final_bank_seed)]
        return {(w, s): _eval(fewshot, run_dir, w, s, final_episodes, [*_flags(changes), *bank], args, log)
                for w, s in settings}

    if step.get("eval_of"):  # ``settings:`` may narrow a costly scoring to some of the settings
        run_dir = Path(args.runs_dir) / step["eval_of"] / tag
        mine = [x for x in settings if not step.get("settings") or f"{x[0]}w{x[1]}s" in step["settings"]]
        out = {"folders": {(w, s): score(run_dir, w, s, step_options) for w, s in mine},
               "train_wall_s": 0.0, "command": _shown(["eval", "--run-dir", str(run_dir), *_flags(step_options)])}
        if _in_final(plan, step["name"]) and final_episodes:
            out["final"] = judge(run_dir, step_options)
        print(f"{step['name']}: scored {step['eval_of']} {tag} with {' '.join(_flags(step_options))}", file=sys.stderr)
        return out
    run_dir = Path(args.runs_dir) / step["name"] / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    track = _tracking(args)
    config = ["--config", step["config"]] if step.get("config") else []
    cmd = [*fewshot, "train", *config, *_flags(options), *track, "--threads", str(args.threads), "--no-progress",
           "--run-dir", str(run_dir), "--resume", "--json"]
    result, wall = _run(cmd, log)
    own = (result["test_way"], result["test_shot"])
    out = {"folders": {} if val else {own: str(run_dir)}, "train_wall_s": wall, "command": _shown(cmd[3:])}
    for way, shot in settings:
        if (way, shot) not in out["folders"]:
            out["folders"][(way, shot)] = score(run_dir, way, shot, {})
    if _in_final(plan, step["name"]) and final_episodes:  # the final steps: larger banks, other episodes
        out["final"] = judge(run_dir, {})
    print(f"{step['name']}: trained/resumed {tag} in {wall:.0f} s", file=sys.stderr)
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
    tables = final_tables(plan)
    final = [n for n in (tables[0] if len(tables) == 1 else []) if n in done]
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


def _seed_cell(runs: dict) -> str:
    """``{seed: RunScores}`` -> mean +- sd over seeds of the per-seed means (%), or +- the 95% CI over episodes
    when there is one seed."""
    if not runs:
        return "not scored"
    if len(runs) == 1:
        return _cell(next(iter(runs.values())))
    means = [100 * r.mean for r in runs.values()]
    return f"{statistics.mean(means):.2f} +- {statistics.stdev(means):.2f}"


def _seed_diff(a: dict, b: dict) -> str:
    """``{seed: RunScores}`` of two steps -> the paired comparison over the seeds both have: mean difference of
    the per-seed means (points) +- sd, each seed's difference, how many seeds agree in sign, and the paired
    t-test on the per-seed means; one seed: the paired test over episodes (:func:`_diff`)."""
    seeds = [k for k in a if k in b]
    if not seeds:
        return "not scored"
    if len(seeds) == 1:
        return _diff(a[seeds[0]], b[seeds[0]])
    for k in seeds:
        if a[k].bank_id != b[k].bank_id:
            raise ValueError(f"a paired difference needs one bank: seed {k} was scored on {a[k].bank_id} and "
                             f"{b[k].bank_id}")
    d = [100 * (a[k].mean - b[k].mean) for k in seeds]
    ups, downs = sum(x > 0 for x in d), sum(x < 0 for x in d)
    agree = f"{ups}/{len(d)} seeds +" if ups >= downs else f"{downs}/{len(d)} seeds -"
    p = paired_test(np.array([a[k].mean for k in seeds]), np.array([b[k].mean for k in seeds]))
    return (f"{statistics.mean(d):+.2f} +- {statistics.stdev(d):.2f} [{', '.join(f'{x:+.2f}' for x in d)}] "
            f"{agree}, seed-paired t p={p['t_p']:.2g}")


def _banks(table: dict, setting) -> str:
    ids = sorted({r.bank_id for runs in table.values() for r in runs.get(setting, {}).values()})
    sizes = sorted({r.accuracies.size for runs in table.values() for r in runs.get(setting, {}).values()})
    return f"bank {', '.join(ids) or 'none'} ({', '.join(map(str, sizes)) or 0} episodes)"


def report_seeds(plan: dict, done: dict, settings: list, argv: list, args) -> str:
    """The report of a ``--select-on val`` or ``--seeds`` invocation: ``done[step][seed]`` as :func:`run_step`
    returns it. Step and lever tables on the selection banks, the final table on the test banks."""
    def table(part: str) -> dict:  # {step: {setting: {seed: RunScores}}}
        out = {}
        for name, by_seed in done.items():
            for seed, d in by_seed.items():
                for x, folder in d.get(part, {}).items():
                    out.setdefault(name, {}).setdefault(x, {})[seed] = load_run(folder)
        return out

    chosen, judged = table("folders"), table("final")
    heads = [f"{w}w{s}s" for w, s in settings]
    seeds = sorted({seed for by_seed in done.values() for seed in by_seed}, key=lambda k: -1 if k is None else k)
    val = args.select_on == "val"
    shown_seeds = ", ".join("the plan's" if k is None else str(k) for k in seeds)
    lines = ["# omniglot-minimal accuracy ablation" + (": chosen on validation, judged on test" if val else ""),
             "",
             f"Generated by `{_results.command(__file__, argv)}` at commit {args.commit} "
             f"on {datetime.date.today().isoformat()}, {os.cpu_count()} CPUs. Untouched output of that command.",
             ""]
    if val:
        lines += [f"- **Chose**: validation banks (bank seed {args.val_bank_seed}) of the val split, characters of the "
                  "training alphabets held out from training (`val_per_alphabet` in the commands); every step and "
                  "lever table below is on these banks, and nothing else chose a recipe.",
                  f"- **Judged**: test banks (bank seed {args.final_bank_seed}) of the test alphabets, scored once, for "
                  "the final tables only" + (" (`--no-final`: none scored by this command, which only screens)"
                                             if args.no_final else "") +
                  ". (`fewshot train` also scores its own test bank at the end of every run; "
                  "this script never reads that score.)"]
    else:
        lines += ["- **Chose and judged**: test banks (the run's own bank seed 0 for the step tables, "
                  f"bank seed {args.final_bank_seed} for the final table)."]
    lines += [f"- Training seeds: {shown_seeds}. A cell is the mean +- sd over seeds of each seed's mean accuracy "
              "(%); with one seed, the mean +- 95% CI over episodes. Differences pair the runs of the same seed: "
              "mean +- sd of the per-seed differences (points) [each seed's], how many seeds agree in sign, and a "
              "paired t-test on the per-seed means (seed-paired t p); one seed: the paired test over episodes "
              "(t-test and Wilcoxon p).", ""]
    for (w, s), head in zip(settings, heads):
        lines.append(f"- {w}-way {s}-shot: {'validation' if val else 'selection'} {_banks(chosen, (w, s))}"
                     + (f"; test {_banks(judged, (w, s))}" if judged else ""))
    steps = [st for st in plan["steps"] if st["name"] in done]
    where = "validation banks" if val else "test banks (bank seed 0)"
    wall = "train call s (sum over seeds; a finished run is only re-scored)"
    lines += ["", f"## Every step ({where})", "", "| step | what it changes | " + " | ".join(heads) + f" | seeds | {wall} |",
              "|---|---|" + "---|" * len(heads) + "---|---|"]
    for st in steps:
        name = st["name"]
        cells = [_seed_cell(chosen.get(name, {}).get(x, {})) for x in settings]
        lines.append(f"| {name} | {st.get('what', '')} | " + " | ".join(cells) + f" | {len(done[name])} | "
                     f"{sum(d['train_wall_s'] for d in done[name].values()):.0f} |")
    lines += ["", f"## Each lever against the step before it ({where}, paired by seed)", "",
              "| step | vs | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for st in steps:
        if st.get("vs") in done:
            a, b = chosen.get(st["name"], {}), chosen.get(st["vs"], {})
            cells = [_seed_diff(a.get(x, {}), b.get(x, {})) for x in settings]
            lines.append(f"| {st['name']} | {st['vs']} | " + " | ".join(cells) + " |")
    if val:  # the final's pairs as they stand on validation: the screen the final recipe is chosen by
        for ours, *others in _final_present(plan, chosen):
            lines += ["", f"## Screen: {ours} against each final opponent (validation banks, paired by seed)", "",
                      "| opponent | " + " | ".join(f"{h} ({ours} - opponent)" for h in heads) + " |",
                      "|---|" + "---|" * len(heads)]
            for other in others:
                cells = [_seed_diff(chosen[ours].get(x, {}), chosen[other].get(x, {})) for x in settings]
                lines.append(f"| {other} | " + " | ".join(cells) + " |")
    for ours, *others in _final_present(plan, judged):
        lines += ["", f"## Final: {ours} against each opponent (test banks, bank seed {args.final_bank_seed}, "
                      "scored once)", "",
                  f"| setting | opponent | {ours} | opponent | difference ({ours} - opponent) |", "|---|---|---|---|---|"]
        for x, head in zip(settings, heads):
            for other in others:
                a, b = judged[ours].get(x, {}), judged[other].get(x, {})
                lines.append(f"| {head} | {other} | {_seed_cell(a)} | {_seed_cell(b)} | {_seed_diff(a, b)} |")
    lines += ["", "## Commands (scoring adds `--way/--shot/--eval-episodes` per setting; seeds add `--seed`)", ""] + \
        [f"- {n} (seed {k}): `fewshot {d['command']}`" for n, by_seed in done.items() for k, d in by_seed.items()]
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
    p.add_argument("--select-on", choices=SELECT_ON, help="banks the steps are scored and chosen on: test (the "
                   "run's test bank and fewshot eval) or val (validation banks; test banks only for the final "
                   "table) [default: the plan's select_on, else test]")
    p.add_argument("--val-bank-seed", type=int, default=2, help="bank seed of the validation banks (fewshot train "
                   "picks its checkpoint on bank seed + 1 = 1)")
    p.add_argument("--no-final", action="store_true", help="train and score the selection banks only, the test "
                   "banks of the final tables untouched (screening runs while recipes are still being chosen)")
    p.add_argument("--seeds", help="comma-separated training seeds: every step is trained once per seed "
                   "(<runs-dir>/<step>/seed<k>)")
    args = p.parse_args(argv)
    plan = load_plan(args.plan)
    args.select_on = args.select_on or plan.get("select_on", "test")
    try:
        seeds = [int(k) for k in args.seeds.split(",") if k.strip()] if args.seeds else None
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers such as 0,1,2, got {args.seeds!r}") from None
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise SystemExit(f"--seeds takes distinct integers such as 0,1,2, got {args.seeds!r}")
    if seeds is None and args.select_on == "val":
        seeds = [0]
    settings = [_setting(s) for s in args.settings.split(",") if s]
    wanted = args.steps.split(",") if args.steps else [s["name"] for s in plan["steps"]]
    unknown = set(wanted) - {s["name"] for s in plan["steps"]}
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; the plan has {[s['name'] for s in plan['steps']]}")
    args.commit = _results.commit([args.out])  # once, before anything is scored: the header names this commit
    args.code = code_version([args.out])
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    if seeds is None:
        done = {s["name"]: run_step(s, plan, args, settings) for s in plan["steps"] if s["name"] in wanted}
        text = report(plan, done, settings, argv, args)
    else:
        done = {s["name"]: {k: run_step(s, plan, args, settings, k) for k in seeds}
                for s in plan["steps"] if s["name"] in wanted}
        text = report_seeds(plan, done, settings, argv, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
