"""``fewshot transfer``: the click command of :mod:`fewshot.transfer` (imports neither torch nor the engine
until it runs, so ``fewshot --help`` stays fast)."""
from __future__ import annotations

import json

import click

from .cli_options import parse_pairs

__all__ = ["transfer_cmd"]

_ADAPT = ("linear", "head", "full", "vpt", "vpt-shallow", "gpf", "gpf-plus", "vgp", "svgp", "provp", "provp-ref", "add", "modify", "delete", "soft-delete", "graph")
"""The same names as ``fewshot.transfer.ADAPT_MODES`` (a test keeps them equal)."""


def _pairs(ctx, param, values):
    """``("k=3",)`` -> ``{"k": "3"}`` (``{}`` when none given), parsed as ``--matcher-opt`` is."""
    return parse_pairs(ctx, param, values) or {}


@click.command("transfer")
@click.option("--dataset", default="glyphs", show_default=True,
              help="vtab (VTAB-1k file lists in --data-root), class-folders (--data-root/{train,val,test}/<class>/), "
                   "or an episodic dataset (names: fewshot data list), whose test classes are split per class.")
@click.option("--data-root", type=click.Path(), help="Folder (or file) the dataset is read from.")
@click.option("--img-size", type=int, help="Image side (default: the dataset's, or the backbone's for file sources).")
@click.option("--vtab-protocol", type=click.Choice(["final", "tune"]), default="final", show_default=True,
              help="final: train on train800val200.txt; tune: train on train800.txt, select on val200.txt. Both test on test.txt.")
@click.option("--train-per-class", type=int,
              help="Episodic dataset: training images per test class, the rest are test images [default: 10].")
@click.option("--val-per-class", type=int, default=0, show_default=True,
              help="Episodic dataset: validation images per class, for model selection (0: none).")
@click.option("--backbone", default="vig_small_28", show_default=True, help="Backbone name (fewshot backbones in timm).")
@click.option("--backbone-from", type=click.Path(dir_okay=False),
              help="Backbone weights: runs/<run>/best.pt of fewshot train, or the authors' ViG checkpoint.")
@click.option("--adapt", type=click.Choice(_ADAPT), default="linear", show_default=True,
              help="What trains besides the classifier: linear (nothing), head (last block + norm), full, or a prompt.")
@click.option("--prompt-opt", "prompt_opts", multiple=True, metavar="NAME=VALUE", callback=_pairs,
              help="Option of the prompt of --adapt (see fewshot prompts), repeatable.")
@click.option("--condition-per-class", type=int,
              help="Generated prompts (add, modify, graph, delete): training images per class they are generated "
                   "from [default: 4].")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="AdamW, or SGD with momentum 0.9.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (cosine decay to 0).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--warmup-epochs", type=int, default=0, show_default=True, help="Linear warm-up epochs before the cosine.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--augment", type=click.Choice(["none", "affine", "elastic"]), default="none", show_default=True,
              help="Training augmentation policy (episodes.augment), seeded per batch.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda (bf16 autocast on CUDA).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run folder (default runs/transfer-<...>).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its last.pt.")
@click.option("--track/--no-track", default=True, show_default=True, help="MLflow tracking (one run per method).")
@click.option("--tracking-uri", help="MLflow store (default: sqlite store in ./mlruns).")
@click.option("--experiment", default="transfer", show_default=True, help="MLflow experiment.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result object last on stdout.")
def transfer_cmd(resume, progress, as_json, **options):
    """Many-shot transfer (the VPT / VGP protocol): adapt a backbone on a labelled train split, score top-1 on test.

    \b
    Example:
        fewshot transfer --dataset glyphs --backbone vig_small_28 --adapt head --epochs 1
        fewshot transfer --dataset vtab --data-root vtab-1k/cifar --backbone vig_ti_224_gelu \\
            --backbone-from vig_ti_74.5.pth --adapt vpt --epochs 100
    """
    from .transfer import TransferConfig, transfer

    config = TransferConfig(**options)
    result = transfer(config, resume=resume, progress=progress)
    lines = [f"test top-1 accuracy {100 * result['test_acc']:.2f} +- {100 * result['test_acc_ci95']:.2f} % "
             f"({result['test_images']} images, {result['num_classes']} classes, --adapt {result['adapt']})",
             f"trainable parameters {result['trainable_params']:,}; wall time {result['wall_seconds']:.1f} s",
             f"run dir {result['run_dir']}" + (f", MLflow run {result['mlflow_run_id']}" if result["mlflow_run_id"] else "")]
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True, default=str))
