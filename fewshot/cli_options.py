"""Option parsers shared by the ``fewshot`` commands (click only: importing this loads no torch)."""
from __future__ import annotations

import click

__all__ = ["parse_pairs"]


def parse_pairs(ctx, param, values):
    """``("k=3", "solver=sinkhorn")`` -> ``{"k": "3", "solver": "sinkhorn"}``; None when none given."""
    out = {}
    for item in values or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", ctx=ctx, param=param)
        out[name.strip()] = value.strip()
    return out or None
