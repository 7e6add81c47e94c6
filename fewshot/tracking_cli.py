"""``fewshot track``: the MLflow store and the records runs kept while it failed (docs/tracking.md)."""
from __future__ import annotations

import click

__all__ = ["track_cmd"]


@click.group("track")
def track_cmd():
    """The MLflow store: bring it up to date with what runs kept in their folders while it failed."""


@track_cmd.command("sync")
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--tracking-uri", help="Write into this store instead of the one each run was tracking to.")
def sync_cmd(folders, tracking_uri):
    """Write the MLflow records that runs kept in FOLDERS (mlflow_pending.jsonl, when the store failed
    during the run) into the store, and remove them once written.

    \b
    FOLDERS are run folders (their evaluation folders included), folders of runs, or pending files.
    Example:
        fewshot track sync runs/glyphs-conv4-5w1s-seed0-1a2b3c4d
    """
    from .tracking import pending_files, sync_pending

    files = list({p.resolve(): p for folder in folders for p in pending_files(folder)}.values())  # each once
    if not files:
        click.echo(f"nothing pending in {', '.join(folders)}")
        return
    failed = 0
    for path in files:
        try:
            run_id = sync_pending(path, tracking_uri)
        except Exception as e:  # one line per file; the others still go
            failed += 1
            click.echo(f"{path}: kept ({(str(e).splitlines() or [type(e).__name__])[0]})", err=True)
        else:
            click.echo(f"{path.parent}: MLflow run {run_id} is up to date")
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} pending record files could not be written; they are kept")
