"""``fewshot`` command line: train, eval, data, ui.

Commands are thin: they build a frozen :class:`~fewshot.config.Config` (defaults < ``--config``
YAML < options given on the command line) and call the engine. Bad input ends in one line on
stderr and exit code 2; ``FEWSHOT_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from .config import Config, ConfigError, load_yaml, merge

__all__ = ["main", "cli"]

_USER_ERRORS = (ValueError, OSError, TypeError)


class _Group(click.Group):
    """Turns user errors raised inside a command into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except _USER_ERRORS as e:
            if os.environ.get("FEWSHOT_DEBUG"):
                raise
            msg = str(e) or e.__class__.__name__
            if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
                msg = f"{e.filename}: {msg}"
            raise click.ClickException(msg) from None


click.ClickException.exit_code = 2  # usage and input errors alike: non-zero, distinct from crashes (1)


def _default(name: str) -> str:
    v = getattr(Config, name)
    return f" [default: {v}]" if v is not None else ""


def _choices(fn):
    return click.Choice(fn(), case_sensitive=False)


def _list_datasets():
    from episodes import list_datasets
    return list_datasets()


def _list_matchers():
    import matchers
    return matchers.list_matchers()


def _list_prompts():
    import prompts
    return prompts.list_prompts()


def _list_meta_inits():
    import prompts
    return prompts.list_meta_inits()


# Options shared by train and eval, defined once. Defaults are None so that only the options a
# user gives override the YAML file and the Config defaults.
RUN_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of settings (safe-loaded)."),
    click.option("--dataset", type=_choices(_list_datasets), help="Dataset." + _default("dataset")),
    click.option("--data-root", type=click.Path(), help="File or folder the dataset is read from."),
    click.option("--img-size", type=int, help="Resize images to this size (default: the dataset's)."),
    click.option("--cache/--no-cache", default=None, help="Keep decoded images next to the data."),
    click.option("--way", type=int, help="Classes per episode." + _default("way")),
    click.option("--shot", type=int, help="Support images per class." + _default("shot")),
    click.option("--query", type=int, help="Query images per class." + _default("query")),
    click.option("--backbone", help="timm name of the backbone, e.g. vig_small_28, conv4 [default: conv4]."),
    click.option("--matcher", type=_choices(_list_matchers), help="How queries are scored." + _default("matcher")),
    click.option("--metric", type=click.Choice(["euclidean", "cosine"]), help="Distance of the prototype matcher." + _default("metric")),
    click.option("--temperature", type=float, help="Logits are divided by it. [default: the matcher's own: 1 for prototype, 0.1 for patch-voting and hungarian]"),
    click.option("--prompt", type=_choices(_list_prompts), help="Graph prompt." + _default("prompt")),
    click.option("--meta-init", type=_choices(_list_meta_inits), help="Meta-learn the prompt's initialisation with learn2learn "
                 "(MAML, first-order MAML, Meta-SGD); test episodes adapt it on the support set (needs --adapt tune)." + _default("meta_init")),
    click.option("--inner-steps", type=int, help="Meta-training: adaptation steps per task." + _default("inner_steps")),
    click.option("--inner-lr", type=float, help="Inner-loop SGD learning rate (also at test time)." + _default("inner_lr")),
    click.option("--meta-batch", type=int, help="Tasks per meta (outer) step." + _default("meta_batch")),
    click.option("--clusters", type=int, help="DAM-VP (--prompt damvp): prompts, one per k-means feature cluster." + _default("clusters")),
    click.option("--cluster-prompt", type=_choices(_list_prompts), help="DAM-VP: the fixed prompt copied per cluster." + _default("cluster_prompt")),
    click.option("--prompt-blocks", help="Blocks to prompt: 'all' or indices such as 0,2." + _default("prompt_blocks")),
    click.option("--prompt-nodes", type=int, help="Prompt nodes per prompted block (add, vpt, vgp, graph)." + _default("prompt_nodes")),
    click.option("--prompt-rank", type=int, help="Rank r of VGP's low-rank prompts." + _default("prompt_rank")),
    click.option("--prompt-keep", type=float, help="Fraction of patch nodes kept by delete / graph." + _default("prompt_keep")),
    click.option("--adapt", type=click.Choice(["amortised", "tune", "head", "full", "linear"]),
                 help="Per-episode adaptation: amortised (prompt as is / generated), tune (T Adam steps on the prompt), "
                      "head, full (tune last block+norm / all backbone), linear (logistic-regression probe)." + _default("adapt")),
    click.option("--adapt-steps", type=int, help="Tuning steps per test episode (0: none)." + _default("adapt_steps")),
    click.option("--adapt-lr", type=float, help="Learning rate of the tuning steps." + _default("adapt_lr")),
    click.option("--backbone-from", type=click.Path(dir_okay=False), help="Checkpoint (runs/<run>/best.pt) whose backbone is loaded and frozen."),
    click.option("--eval-episodes", type=int, help="Episodes in the test bank." + _default("eval_episodes")),
    click.option("--bank-seed", type=int, help="Seed of the test/val banks (keep it fixed to compare runs)." + _default("bank_seed")),
    click.option("--seed", type=int, help="Training seed." + _default("seed")),
    click.option("--device", help="auto, cpu, cuda or cuda:N." + _default("device")),
    click.option("--threads", type=int, help="torch CPU threads (default: torch's choice)."),
    click.option("--experiment", help="MLflow experiment." + _default("experiment")),
    click.option("--tracking-uri", help="MLflow store (default: sqlite store in ./mlruns)."),
    click.option("--track/--no-track", default=None, help="Log to MLflow (default: on)."),
    click.option("--run-dir", type=click.Path(file_okay=False), help="Folder for checkpoints and results (default: runs/<name>)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON result object last on stdout."),
]


def run_options(fn):
    for opt in reversed(RUN_OPTIONS):
        fn = opt(fn)
    return fn


def build_config(config_file, options: dict, base: Config | None = None) -> Config:
    """Config defaults (or ``base``) < YAML file < options given on the command line."""
    cfg = base or Config()
    if config_file:
        cfg = merge(cfg, load_yaml(config_file))
    return merge(cfg, {k: v for k, v in options.items() if v is not None})


def _emit(result: dict, as_json: bool, lines: list):
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fewshot")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """Few-shot episodic learning with Vision GNN backbones, graph prompts and plug-in matchers."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import warnings
    logging.captureWarnings(True)
    warnings.filterwarnings("default", category=DeprecationWarning, module="fewshot")


@cli.command()
@run_options
@click.option("--train-way", type=int, help="Classes per training episode (default: --way).")
@click.option("--train-shot", type=int, help="Support images per class in training (default: --shot).")
@click.option("--train-query", type=int, help="Query images per class in training (default: --query).")
@click.option("--episodes", type=int, help="Training episodes." + _default("episodes"))
@click.option("--lr", type=float, help="Adam learning rate (cosine schedule)." + _default("lr"))
@click.option("--weight-decay", type=float, help="Adam weight decay." + _default("weight_decay"))
@click.option("--grad-clip", type=float, help="Gradient norm clip (0: off)." + _default("grad_clip"))
@click.option("--val-episodes", type=int, help="Validation episodes for model selection (0: off)." + _default("val_episodes"))
@click.option("--val-every", type=int, help="Validate every this many episodes." + _default("val_every"))
@click.option("--checkpoint-every", type=int, help="Checkpoint every this many episodes." + _default("checkpoint_every"))
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir (or the default run dir) from its last checkpoint.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bars on stderr.")
def train(config_file, as_json, resume, progress, **options):
    """Meta-train a backbone episodically, select on validation, evaluate on a fixed test bank.

    \b
    Example:
        fewshot train --way 5 --shot 1
        fewshot train --dataset omniglot --data-root ../shared/data/omniglot --way 20 --shot 1
    """
    from .training import train as run_training

    from .distributed import is_main

    config = build_config(config_file, options)
    result = run_training(config, resume=resume, progress=progress)
    if not is_main():  # under torchrun only rank 0 prints
        return
    _emit(result, as_json, [
        f"test accuracy {100 * result['test_acc']:.2f} +- {100 * result['test_ci95']:.2f} % "
        f"({result['test_way']}-way {result['test_shot']}-shot, {result['test_episodes']} episodes, "
        f"bank {result['test_bank_id']})",
        f"run dir {result['run_dir']}" + (f", MLflow run {result['mlflow_run_id']}" if result["mlflow_run_id"] else ""),
    ])


@cli.command("eval")
@run_options
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of the run to evaluate.")
@click.option("--bank", "bank_file", type=click.Path(dir_okay=False), help="Score this saved EpisodeBank instead.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bars on stderr.")
def eval_cmd(config_file, as_json, checkpoint, bank_file, progress, run_dir, **options):
    """Evaluate a trained run on its dataset's test split (episode sizes and matcher may be changed).

    \b
    Example:
        fewshot eval --run-dir runs/glyphs-conv4-5w1s-seed0-1a2b3c4d --shot 5
    """
    from .evaluate_run import evaluate_run, load_run_config

    if not run_dir:
        raise click.UsageError("--run-dir is required: the folder of a trained run")
    config = build_config(config_file, options, base=load_run_config(Path(run_dir)))
    from .distributed import is_main
    result = evaluate_run(Path(run_dir), config, checkpoint=checkpoint, bank_file=bank_file, progress=progress)
    if is_main():  # under torchrun only rank 0 prints
        _emit(result, as_json, [f"test accuracy {100 * result['test_acc']:.2f} +- {100 * result['test_ci95']:.2f} % "
                                f"({result['test_way']}-way {result['test_shot']}-shot, {result['test_episodes']} "
                                f"episodes, bank {result['test_bank_id']})"])


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--tracking-uri", help="MLflow store for run ids (default: sqlite store in ./mlruns).")
@click.option("--json", "as_json", is_flag=True, help="Print the table and tests as one JSON object.")
def compare_cmd(runs, tracking_uri, as_json):
    """Accuracy table and paired tests (t-test, Wilcoxon) for runs scored on the same EpisodeBank.

    \b
    RUNS are run folders (runs/<name>, runs/<name>/eval-best-<bank>) or MLflow run ids.
    Example:
        fewshot compare runs/glyphs-conv4-a runs/glyphs-vig-b
    """
    from .compare import compare, format_table, load_run

    report = compare([load_run(r, tracking_uri) for r in runs])
    _emit(report, as_json, [] if as_json else format_table(report))


@cli.group(cls=_Group)
def plot():
    """Figures of trained runs (PNG, also logged to MLflow)."""


@plot.command("shots")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Folder of a trained run.")
@click.option("--shots", default="1,2,5,10", show_default=True, help="Comma-separated shots to evaluate.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--eval-episodes", type=int, help="Episodes per shot (default: the run's).")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write (default: RUN_DIR/accuracy_vs_shot.png).")
@click.option("--track/--no-track", default=None, help="Track the evaluations and the figure (default: as the run).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as one JSON object.")
def plot_shots(run_dir, shots, checkpoint, eval_episodes, out, track, as_json):
    """Evaluate a trained run at several shots on its test split and plot accuracy against shot.

    \b
    Example:
        fewshot plot shots --run-dir runs/glyphs-conv4-5w1s-seed0-1a2b3c4d --shots 1,2,5,10
    """
    from .evaluate_run import evaluate_run, load_run_config
    from .plots import accuracy_vs_shot
    from .tracking import make_tracker

    try:
        shot_list = sorted({int(s) for s in shots.split(",") if s.strip()})
    except ValueError:
        raise click.BadParameter(f"{shots!r} is not a comma-separated list of integers", param_hint="--shots")
    if not shot_list or min(shot_list) < 1:
        raise click.BadParameter("shots must be positive integers", param_hint="--shots")
    base = load_run_config(Path(run_dir))
    changes = {k: v for k, v in {"track": track, "eval_episodes": eval_episodes}.items() if v is not None}
    rows = []
    for shot in shot_list:
        res = evaluate_run(Path(run_dir), merge(base, {**changes, "shot": shot}), checkpoint=checkpoint, progress=False)
        rows.append({"shot": shot, "acc": res["test_acc"], "ci95": res["test_ci95"], "way": res["test_way"],
                     "episodes": res["test_episodes"], "bank_id": res["test_bank_id"], "eval_dir": res["eval_dir"]})
        click.echo(f"{shot:>3}-shot: {100 * res['test_acc']:.2f} +- {100 * res['test_ci95']:.2f} %", err=as_json)
    out = Path(out or Path(run_dir) / "accuracy_vs_shot.png")
    accuracy_vs_shot(rows, out, title=f"{Path(run_dir).name} ({rows[0]['way']}-way, {rows[0]['episodes']} episodes)")
    cfg = merge(base, changes)
    tracker = make_tracker(cfg.track, cfg.tracking_uri, cfg.experiment)
    tracker.start(f"shots-{Path(run_dir).name}", {"run_dir": str(run_dir), "shots": shots, "checkpoint": checkpoint},
                  tags={"command": "plot shots"})
    tracker.log_artifact(out)
    tracker.log_dict({"rows": rows}, "accuracy_vs_shot.json")
    tracker.end("FINISHED")
    _emit({"rows": rows, "png": str(out), "mlflow_run_id": tracker.run_id}, as_json, [f"wrote {out}"])


@cli.group(cls=_Group)
def data():
    """List datasets, describe one, draw an episode, save an episode bank."""


_data_root = click.option("--data-root", type=click.Path(), help="File or folder the dataset is read from.")
_img_size = click.option("--img-size", type=int, help="Resize images to this size (default: the dataset's).")


@data.command("list")
def data_list():
    """The registered datasets."""
    from episodes import dataset_info, list_datasets

    for name in list_datasets():
        info = dataset_info(name)
        where = "needs --data-root" if info.needs_root else "built in"
        click.echo(f"{name:14s} {info.default_img_size:3d}px x{info.in_chans}  {where:17s} {info.description}")


@data.command("describe")
@click.argument("dataset", type=_choices(_list_datasets))
@_data_root
@_img_size
def data_describe(dataset, data_root, img_size):
    """Class and image counts of each split, and the data fingerprints."""
    from episodes import load_splits

    splits = load_splits(dataset, data_root, img_size)
    click.echo(splits.describe())
    for s in ("train", "val", "test"):
        click.echo(f"{s:5s} fingerprint {splits[s].fingerprint}")


def _episode_source(out_help: str, query: int):
    """Options shared by the commands that draw episodes of one split: dataset, where it is, the
    output file, split, way, shot, query and seed."""
    options = [
        click.argument("dataset", type=_choices(_list_datasets)), _data_root, _img_size,
        click.option("--out", required=True, type=click.Path(dir_okay=False), help=out_help),
        click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True),
        click.option("--way", type=int, default=5, show_default=True),
        click.option("--shot", type=int, default=1, show_default=True),
        click.option("--query", type=int, default=query, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@data.command("grid")
@_episode_source("PNG file to write.", query=5)
@click.option("--episode", type=int, default=0, show_default=True, help="Index of the episode to draw.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Frame queries green/red by this trained run's predictions.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of --run-dir predict.")
def data_grid(dataset, data_root, img_size, out, split, way, shot, query, seed, episode, run_dir, checkpoint):
    """Write a PNG of one episode: a row per class, support images first, then queries.

    With --run-dir, each query is framed green (predicted right) or red (wrong, with "->k", the
    predicted row k, written on it).
    """
    from episodes import EpisodeSampler, load_splits
    from .plots import episode_grid

    images = load_splits(dataset, data_root, img_size)[split]
    ep = EpisodeSampler(images, way, shot, query, seed=seed)[episode]
    pred, note = None, ""
    if run_dir:
        from .evaluate_run import load_run_config, load_trained_model
        import torch
        model, _ = load_trained_model(Path(run_dir), load_run_config(Path(run_dir)), images, checkpoint)
        model.eval()
        with torch.inference_mode():
            pred = model(images.images[ep.support], ep.support_labels, images.images[ep.query]).argmax(-1)
        note = f"; {int((pred == ep.query_labels).sum())}/{pred.numel()} queries right"
    episode_grid(images, ep, out, predictions=pred)
    click.echo(f"wrote {out}: {way} classes x ({shot} support + {query} query), episode {episode} of seed {seed}{note}")


@data.command("bank")
@_episode_source("File to write the bank to (.pt).", query=15)
@click.option("--episodes", type=int, default=2000, show_default=True)
def data_bank(dataset, data_root, img_size, out, split, way, shot, query, seed, episodes):
    """Save a fixed EpisodeBank (indices + data fingerprint) to score every method on the same episodes."""
    from episodes import EpisodeSampler, load_splits

    images = load_splits(dataset, data_root, img_size)[split]
    bank = EpisodeSampler(images, way, shot, query, seed=seed).bank(episodes)
    bank.save(out)
    click.echo(f"wrote {out}: " + json.dumps(bank.describe()))


@cli.command()
@click.option("--tracking-uri", help="MLflow store (default: sqlite store in ./mlruns).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", type=int, default=5000, show_default=True)
def ui(tracking_uri, host, port):
    """Serve the MLflow UI for the local store (bound to 127.0.0.1 unless --host says otherwise)."""
    import subprocess
    from .tracking import default_artifact_root, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = default_artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    click.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl+C stops it)", err=False)
    sys.stdout.flush()
    raise SystemExit(subprocess.call(cmd))


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="fewshot")


if __name__ == "__main__":
    main()
