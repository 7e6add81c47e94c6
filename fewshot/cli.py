"""``fewshot`` command line: train, eval, transfer, compare, plot, data, matchers, prompts, ui.

Commands are thin: they build a frozen :class:`~fewshot.config.Config` (defaults < ``--config``
YAML < options given on the command line) and call the engine. Bad input ends in one line on
stderr and exit code 2; ``FEWSHOT_DEBUG=1`` shows the traceback instead.

The options of ``fewshot train`` and ``fewshot eval`` are generated from ``Config``'s fields and
their :func:`~fewshot.config.setting` metadata (help, type, choices, train-only), so a new
setting is declared once. Importing this module imports neither torch nor a registry: choices
such as ``--matcher`` are looked up when the option is used, and ``--help`` points to
``fewshot matchers`` / ``fewshot prompts`` / ``fewshot data list`` for the names.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import sys
import typing
from pathlib import Path

import click

from .cli_options import parse_pairs

from .config import COMPONENTS, Config, ConfigError, load_yaml, merge

__all__ = ["main", "cli", "LazyChoice", "config_options", "build_config"]

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


class LazyChoice(click.ParamType):
    """A choice among names that a registry holds, looked up only when the option is used.

    Args:
        source: ``"module:attribute"``, the attribute a list of names or a function returning one
            (e.g. ``"matchers:list_matchers"``), or a sequence of names.
    """

    name = "choice"

    def __init__(self, source):
        self.source = source

    def choices(self) -> list:
        if not isinstance(self.source, str):
            return list(self.source)
        module, _, attr = self.source.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        return list(obj() if callable(obj) else obj)

    def get_metavar(self, param, ctx=None) -> str:
        return "NAME"

    def convert(self, value, param, ctx):
        choices = self.choices()
        if value in choices:
            return value
        folded = {str(c).lower(): c for c in choices}
        if str(value).lower() in folded:
            return folded[str(value).lower()]
        from registry import closest_hint

        self.fail(f"{value!r} is not one of {', '.join(map(str, choices))}.{closest_hint(value, choices)}", param, ctx)


def _choices(source) -> click.ParamType:
    """click's Choice for a fixed tuple, a :class:`LazyChoice` for a registry."""
    if isinstance(source, str):
        return LazyChoice(source)
    return click.Choice([str(c) for c in source], case_sensitive=False)


_LISTINGS = {"episodes:list_datasets": "fewshot data list", "matchers:list_matchers": "fewshot matchers",
             "prompts:list_prompts": "fewshot prompts"}


def _scalar_type(annotation):
    """``Optional[int]`` -> int, ``str`` -> str, ...; the Python type the field holds."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _config_option(f: dataclasses.Field, annotation):
    """The click option of one Config field (every default None: only given options override)."""
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    text = meta.get("help", f"Config field {f.name}.")
    kind = meta.get("options_of")
    if kind:
        return click.option(f"--{kind}-opt", f.name, multiple=True, metavar="NAME=VALUE", callback=parse_pairs, help=text)
    typ = _scalar_type(annotation)
    if typ is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None,
                            help=f"{text} [default: {'on' if f.default else 'off'}]")
    if f.default is not None and f.default != "" and "[default:" not in text:
        text += f" [default: {f.default}]"
    choices, path = meta.get("choices"), meta.get("path")
    if choices is not None:
        ptype = _choices(choices)
        listing = _LISTINGS.get(choices) if isinstance(choices, str) else None
        if listing and listing not in text:
            text += f" (names: {listing})"
    elif path:
        ptype = click.Path(dir_okay=path != "file", file_okay=path != "dir")
    else:
        ptype = typ if typ in (int, float) else str
    return click.option(flag, f.name, type=ptype, default=None, help=text)


def config_options(command: str):
    """Decorator adding one option per Config field to ``command`` ("train" or "eval"), in field
    order between ``--config`` and ``--json``; train-only fields (``setting(train_only=True)``) go to
    ``train`` only."""
    hints = typing.get_type_hints(Config)
    options = [click.option("--config", "config_file", type=click.Path(dir_okay=False),
                            help="YAML file of settings (safe-loaded; keys are the option names).")]
    for f in dataclasses.fields(Config):
        if f.metadata.get("train_only") and command != "train":
            continue
        options.append(_config_option(f, hints[f.name]))
    options.append(click.option("--json", "as_json", is_flag=True, help="Print one JSON result object last on stdout."))

    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return decorate


def _component_settings(kind: str) -> dict:
    """The default values of the ``kind`` component's settings: its option mapping and shorthand fields."""
    out = {f"{kind}_opts": {}}
    for f in dataclasses.fields(Config):
        if (f.metadata.get("shorthand") or ("",))[0] == kind:
            out[f.name] = f.default
    return out


def build_config(config_file, options: dict, base: Config | None = None) -> Config:
    """Config defaults (or ``base``, a trained run's config) < YAML file < options given on the command line.

    Option mappings (``backbone_opts``, ``matcher_opts``, ``prompt_opts``) merge key by key. When the YAML
    file or the command line names another backbone, matcher or prompt than ``base``, ``base``'s settings
    of the old one are dropped (they belong to it)."""
    changes = {str(k).replace("-", "_"): v for k, v in (load_yaml(config_file) if config_file else {}).items()}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(changes.get(name), dict):
            value = {**changes[name], **value}
        changes[name] = value
    if base is None:
        return merge(Config(), changes)
    settings = base.to_dict()
    if "backbone" in changes and changes["backbone"] != settings["backbone"]:
        settings["backbone_opts"] = {}  # they were the old backbone's arguments
    elif isinstance(changes.get("backbone_opts"), dict):
        changes["backbone_opts"] = {**settings["backbone_opts"], **changes["backbone_opts"]}
    for kind in COMPONENTS:
        opts = f"{kind}_opts"
        if kind in changes and changes[kind] != settings[kind]:
            settings.update(_component_settings(kind))
        elif isinstance(changes.get(opts), dict):
            changes[opts] = {**settings[opts], **changes[opts]}
    return merge(Config(), {**settings, **changes})


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
    from ._malloc import tune_malloc
    tune_malloc()  # steps reuse their activations' memory instead of page-faulting it in (fewshot/_malloc.py)
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import warnings
    logging.captureWarnings(True)
    warnings.filterwarnings("default", category=DeprecationWarning, module="fewshot")


@cli.command()
@config_options("train")
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
@config_options("eval")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of the run to evaluate.")
@click.option("--bank", "bank_file", type=click.Path(dir_okay=False), help="Score this saved EpisodeBank instead.")
@click.option("--weights", help="Score these shipped weights instead of a run (`fewshot weights` lists them); "
                                "results go to runs/pretrained/<name> unless --run-dir says otherwise.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bars on stderr.")
def eval_cmd(config_file, as_json, checkpoint, bank_file, weights, progress, run_dir, **options):
    """Evaluate a trained run, or shipped weights, on a dataset's test split (episode sizes and matcher may be changed).

    \b
    Example:
        fewshot eval --run-dir runs/glyphs-vig_small_c4_28-5w1s-seed0-1a2b3c4d --shot 5
        fewshot eval --weights vig_small_c4_28.omniglot_minimal --dataset omniglot --data-root ../shared/data/omniglot
    """
    from .evaluate_run import evaluate_run, load_run_config

    if weights:
        from .pretrained import pretrained_config

        config = build_config(config_file, {**options, "run_dir": run_dir}, base=pretrained_config(weights))
        run_dir = None
    elif not run_dir:
        raise click.UsageError("give --run-dir (the folder of a trained run) or --weights (shipped weights)")
    else:
        config = build_config(config_file, options, base=load_run_config(Path(run_dir)))
    from .distributed import is_main
    result = evaluate_run(run_dir and Path(run_dir), config, checkpoint=checkpoint, bank_file=bank_file,
                          progress=progress, weights=weights)
    if is_main():  # under torchrun only rank 0 prints
        _emit(result, as_json, [f"test accuracy {100 * result['test_acc']:.2f} +- {100 * result['test_ci95']:.2f} % "
                                f"({result['test_way']}-way {result['test_shot']}-shot, {result['test_episodes']} "
                                f"episodes, bank {result['test_bank_id']})"])


@cli.command("compare")
@click.argument("runs", nargs=-1, required=True)
@click.option("--tracking-uri", help="MLflow store for run ids (default: sqlite store in ./mlruns).")
@click.option("--json", "as_json", is_flag=True, help="Print the table and tests as one JSON object.")
def compare_cmd(runs, tracking_uri, as_json):
    """Accuracy table and paired tests (t-test, Wilcoxon) for runs scored on the same EpisodeBank;
    for `fewshot transfer` runs on one test set, McNemar's test on their per-image results.

    \b
    RUNS are run folders (runs/<name>, runs/<name>/eval-best-<bank>, runs/transfer-...) or MLflow run ids.
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
@click.argument("dataset", type=LazyChoice("episodes:list_datasets"))
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
        click.argument("dataset", type=LazyChoice("episodes:list_datasets")), _data_root, _img_size,
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


def _describe_components(kind: str, as_json: bool) -> None:
    """Print each registered ``kind`` ("matcher" / "prompt") with its options: name, type, default, help."""
    from registry import REQUIRED, class_options, first_doc_line

    package, skip = COMPONENTS[kind]
    module = importlib.import_module(package)
    names = getattr(module, f"list_{kind}s")()
    table = {}
    for name in names:
        cls = module.get(name)
        table[name] = {"doc": first_doc_line(cls), "options": [
            {"name": o.name, "type": o.type_name(), "default": None if o.default is REQUIRED else o.default,
             "help": " ".join(o.help.replace("``", "").split())}
            for o in class_options(cls, skip=skip).values()]}
    if as_json:
        click.echo(json.dumps(table, indent=2, default=str))
        return
    options = [o for entry in table.values() for o in entry["options"]]
    widths = [max([n] + [len(str(o[key])) for o in options]) for key, n in (("name", 15), ("type", 22), ("default", 10))]
    for name, entry in table.items():
        click.echo(f"{name}: {entry['doc']}")
        for o in entry["options"]:
            cells = (f"{str(o[key]):<{w}}" for key, w in zip(("name", "type", "default"), widths))
            click.echo(f"    {' '.join(cells)} {o['help']}".rstrip())
    click.echo(f"\nSet an option with --{kind}-opt NAME=VALUE (repeatable) or a {kind}_opts: mapping in --config.")


@cli.command("matchers")
@click.option("--json", "as_json", is_flag=True, help="Print the table as one JSON object.")
def matchers_cmd(as_json):
    """The registered matchers (--matcher) and their options (--matcher-opt NAME=VALUE)."""
    _describe_components("matcher", as_json)


@cli.command("weights")
@click.option("--json", "as_json", is_flag=True, help="Print the records as one JSON object.")
def weights_cmd(as_json):
    """The shipped weights (--weights NAME, timm.create_model(NAME, pretrained=True)) and what they reach."""
    from .pretrained import list_pretrained, pretrained_info

    records = {name: {k: v for k, v in pretrained_info(name).items() if k != "config"} for name in list_pretrained()}
    if as_json:
        click.echo(json.dumps(records, indent=2, sort_keys=True))
        return
    for name, r in records.items():
        t, c = r["test"], r["check"]
        click.echo(f"{name}: {r['dataset']} {r['img_size']}px, {t['test_way']}-way {t['test_shot']}-shot test "
                   f"{100 * t['test_acc']:.2f} +- {100 * t['test_ci95']:.2f} % ({t['test_episodes']} episodes); "
                   f"trained at {r['commit']} by: {r['command']}")


@cli.command("prompts")
@click.option("--json", "as_json", is_flag=True, help="Print the table as one JSON object.")
def prompts_cmd(as_json):
    """The registered prompts (--prompt) and their options (--prompt-opt NAME=VALUE)."""
    _describe_components("prompt", as_json)


@cli.command()
@click.option("--tracking-uri", help="MLflow store (default: sqlite store in ./mlruns).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; 0.0.0.0 exposes it to the network.")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--experiment", help="Land on this experiment's runs [default: the experiment of the latest run].")
@click.option("--open", "open_browser", is_flag=True, help="Open the printed address in a web browser once it answers.")
def ui(tracking_uri, host, port, experiment, open_browser):
    """Serve the MLflow UI for the local store and print the address of the runs table of the latest
    experiment: test accuracy, way, shot, backbone, matcher and test bank beside each run's name.

    Ctrl-C or SIGTERM stops the server with every process it started. MLflow's GenAI job runners are
    off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true says otherwise.
    """
    from .tracking import default_artifact_root, default_tracking_uri, runs_table_route
    from .ui_server import serve

    uri = tracking_uri or default_tracking_uri()
    try:
        route = runs_table_route(uri, experiment)
    except (ValueError, OSError):
        raise
    except Exception as e:  # the store cannot be read: one line, not MLflow's traceback
        raise OSError(f"cannot read the MLflow store {uri}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]
    root = default_artifact_root(uri)
    if root:
        cmd += ["--default-artifact-root", root]
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    click.echo(f"MLflow UI for {uri} at {base}/{route}  (Ctrl+C stops it)")
    if not route:
        click.echo("(no runs in this store yet)")
    sys.stdout.flush()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    raise SystemExit(serve(cmd, env, ready_url=f"{base}/health", open_url=f"{base}/{route}" if open_browser else None))


from .transfer_cli import transfer_cmd as _transfer_cmd  # noqa: E402  (click only: torch loads when it runs)

cli.add_command(_transfer_cmd)
from .tracking_cli import track_cmd as _track_cmd  # noqa: E402  (click only, as transfer)
cli.add_command(_track_cmd)
from .predict_cli import predict_cmd as _predict_cmd  # noqa: E402  (click only, as transfer)
cli.add_command(_predict_cmd)


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="fewshot")


if __name__ == "__main__":
    main()
