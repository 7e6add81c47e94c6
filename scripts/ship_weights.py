"""Train the shipped recipes (or reuse their finished runs) and write their weights into models/weights/.

    python scripts/ship_weights.py --data-root ../shared/data/omniglot --runs-dir runs/shipped
    python scripts/ship_weights.py --only vig_small_c4_28.glyphs     # one of them

For each recipe (RECIPES below): ``fewshot train ... --run-dir <runs-dir>/<name> --resume`` unless the
run has finished (its result.json exists), then the backbone of the run's best.pt goes to
``models/weights/<name>.safetensors`` and ``<name>.json`` records the training command, the commit it ran
at, the sha256, the run's own test result and the accuracy on a 200-episode check bank
(``tests/models/test_shipped_weights.py`` reproduces it). Nothing else writes those files. A run folder may
hold ``COMMIT`` (the commit it was trained at) and ``COMMAND`` (the command that trained it, when another one
did, e.g. ``benchmarks/default_run.py`` for the glyphs default).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECK_EPISODES = 200
"""Episodes of the check bank (test split, bank seed 0, 15 queries per class) whose accuracy is recorded."""

RECIPES = {
    # name: (training options after `fewshot train`, needs --data-root)
    "vig_small_c4_28.glyphs": (["--way", "5", "--shot", "1"], False),
    "vig_small_c4_28.omniglot_minimal": (["--config", "benchmarks/configs/omniglot-minimal.yaml", "--dataset",
                                          "omniglot"], True),
    "conv4.omniglot_minimal": (["--config", "benchmarks/configs/omniglot-minimal-conv4.yaml", "--dataset",
                                "omniglot"], True),
}


def _git(*args) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def train_command(name: str, data_root: str, runs_dir: str, threads: int) -> list:
    options, needs_root = RECIPES[name]
    cmd = ["fewshot", "train", *options]
    if needs_root:
        cmd += ["--data-root", data_root]
    return cmd + ["--threads", str(threads), "--no-track", "--no-progress", "--run-dir", f"{runs_dir}/{name}"]


def check_accuracy(model, config) -> dict:
    """Accuracy of ``model`` on the check bank of ``config``'s dataset (test split)."""
    from episodes import EpisodeSampler, load_splits
    from fewshot.evaluation import evaluate

    test = load_splits(config.dataset, config.data_root, config.img_size)["test"]
    bank = EpisodeSampler(test, config.way, config.shot, 15, seed=0).bank(CHECK_EPISODES)
    res = evaluate(model, test, bank, "cpu", progress=False)
    return {"acc": round(100 * res.mean, 4), "ci95": round(100 * res.ci95, 4), "episodes": res.episodes,
            "way": config.way, "shot": config.shot, "query": 15, "bank_seed": 0, "bank_id": bank.bank_id,
            "split": "test"}


def export(name: str, run_dir: Path, command: list, commit: str, data_root: str) -> dict:
    """Write ``name``'s safetensors file and record from the finished run in ``run_dir``."""
    import yaml
    from safetensors.torch import save_file

    from fewshot.checkpoint import load_checkpoint
    from models.shipped import WEIGHTS_DIR, sha256_of

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    state = load_checkpoint(run_dir / "best.pt")["model"]
    backbone = {k[len("backbone."):]: v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    if len(backbone) != len(state):
        raise SystemExit(f"{run_dir}/best.pt holds weights outside the backbone: "
                         f"{sorted(set(state) - {'backbone.' + k for k in backbone})}")
    WEIGHTS_DIR.mkdir(exist_ok=True)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    save_file(backbone, str(path), metadata={"name": name, "commit": commit})
    path.chmod(0o644)  # safetensors writes 0600; the file is package data
    from episodes import dataset_info

    info = dataset_info(config["dataset"])
    record = {
        "name": name, "file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size,
        "architecture": name.split(".")[0], "dataset": config["dataset"],
        "img_size": int(config.get("img_size") or info.default_img_size), "in_chans": int(info.in_chans),
        "command": shlex.join(command), "commit": commit,
        "test": {k: result[k] for k in ("test_acc", "test_ci95", "test_episodes", "test_way", "test_shot",
                                       "test_query", "test_bank_id", "best_val_acc", "best_step")},
        "config": config,
    }
    (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    # the new file becomes a timm tag when models is imported: score it in a fresh process, as a user would load it
    subprocess.run([sys.executable, __file__, "--check", name, "--data-root", data_root], cwd=ROOT, check=True)
    return json.loads((WEIGHTS_DIR / f"{name}.json").read_text())


def record_check(name: str, data_root: str) -> None:
    """Score shipped ``name`` on its check bank and add the result to its record."""
    import torch

    from episodes import dataset_info
    from fewshot.pretrained import load_pretrained, pretrained_config
    from models.shipped import WEIGHTS_DIR, shipped_info

    torch.set_num_threads(1)
    record = shipped_info(name)
    cfg = pretrained_config(name, {"data_root": data_root if dataset_info(record["dataset"]).needs_root else None})
    _, model, _ = load_pretrained(name, cfg)
    record["check"] = check_accuracy(model, cfg)
    (WEIGHTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data/omniglot", help="Folder of the omniglot-minimal zips.")
    ap.add_argument("--runs-dir", default="runs/shipped", help="Where the training runs live (repository-relative).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", action="append", choices=sorted(RECIPES), help="Only these (repeatable).")
    ap.add_argument("--no-train", action="store_true", help="Only export runs that have finished.")
    ap.add_argument("--check", metavar="NAME", help=argparse.SUPPRESS)  # internal: score one exported file
    args = ap.parse_args(argv)
    if args.check:
        return record_check(args.check, args.data_root)
    commit = _git("rev-parse", "--short", "HEAD")
    for name in args.only or RECIPES:
        run_dir = ROOT / args.runs_dir / name
        command = train_command(name, args.data_root, args.runs_dir, args.threads)
        if not (run_dir / "result.json").exists():
            if args.no_train:
                print(f"{name}: {run_dir} has not finished; skipped", file=sys.stderr)
                continue
            exe = Path(sys.executable).parent / "fewshot"
            subprocess.run([str(exe), *command[1:], "--resume"], cwd=ROOT, check=True)
        # a run trained by another command (e.g. benchmarks/default_run.py) says so in COMMIT / COMMAND files
        trained_at = (run_dir / "COMMIT").read_text().strip() if (run_dir / "COMMIT").exists() else commit
        if (run_dir / "COMMAND").exists():
            command = shlex.split((run_dir / "COMMAND").read_text().strip())
        record = export(name, run_dir, command, trained_at, args.data_root)
        print(f"{name}: {record['bytes']} bytes, sha256 {record['sha256'][:16]}, test "
              f"{100 * record['test']['test_acc']:.2f} +- {100 * record['test']['test_ci95']:.2f} % "
              f"({record['test']['test_episodes']} episodes), check bank {record['check']['acc']:.2f} %")


if __name__ == "__main__":
    main()
