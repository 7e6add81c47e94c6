"""Graph prompts for ViG backbones.

A prompt acts on the patch graph of chosen Grapher blocks (add prompt nodes, modify node
features, delete nodes) through the backbone's ``block_hook``. Only ``none`` (no prompt) is
available so far; the support-generated prompts, the VPT / GPF / GPF-plus / VGP baselines and the
meta-learned initialisations register themselves here as they land.
"""
from __future__ import annotations

__all__ = ["list_prompts", "list_meta_inits"]

_PROMPTS = ("none",)
_META_INITS = ("none",)


def list_prompts() -> list:
    """Names accepted by ``--prompt``."""
    return list(_PROMPTS)


def list_meta_inits() -> list:
    """Names accepted by ``--meta-init``."""
    return list(_META_INITS)
