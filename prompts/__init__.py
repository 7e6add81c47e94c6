"""Graph prompts for ViG backbones.

A prompt acts on the patch graph of chosen Grapher blocks (add prompt nodes, modify node
features, delete nodes) through the backbone's hooks; see :mod:`prompts.base` for the interface
(``Prompt``), the registry (``create``, ``register_prompt``, ``list_prompts``) and shapes.
Families: ``add`` (support-generated prompt nodes), ``modify`` / ``gpf`` / ``gpf-plus`` (feature
prompts), ``delete`` (node deletion), ``soft-delete`` (learned soft keep
probabilities with a sparsity target), ``graph`` (all three), ``vpt`` / ``vpt-shallow`` (free
virtual nodes), ``vgp`` (Ai, Liu and Zhou, ICML 2025), ``svgp`` (VGP plus support-generated offsets, conditioned at each block), ``provp`` / ``provp-ref``
(progressive prompt nodes, with contrastive feature re-formation: :mod:`prompts.provp`) and ``damvp`` (one prompt per feature
cluster, :mod:`prompts.damvp`). Meta-learned initialisation (MAML, first-order MAML, Meta-SGD):
:mod:`prompts.meta`. Scoring an episode, the support-only loss and the one tuning loop every
adaptation path shares: :mod:`prompts.tuning`.
"""
from __future__ import annotations

from .base import Prompt, accepted_options, create, get, list_prompts, options, parse_blocks, register_prompt
from . import add_nodes, delete_nodes, graph, modify_nodes, soft_delete, vgp, vpt  # noqa: F401  (register the families)
from . import support_vgp  # noqa: F401,E402  (after vgp, which it extends)
from . import provp  # noqa: F401,E402  (ProVP / ProVP-Ref, Xu et al. 2023)
from . import damvp  # noqa: F401,E402  (after the families it wraps)
from .meta import META_INITS

__all__ = ["Prompt", "create", "get", "list_prompts", "register_prompt", "parse_blocks", "accepted_options", "options",
           "list_meta_inits"]


def list_meta_inits() -> list:
    """Names accepted by ``--meta-init`` (``none`` and the learn2learn algorithms of :mod:`prompts.meta`)."""
    return list(META_INITS)
