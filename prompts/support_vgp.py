"""``svgp``: VGP with support-generated offsets, conditioned on the support set at each prompted block.

VGP's prompts are the same for every episode. ``svgp`` keeps all of VGP (virtual nodes, low-rank node
and edge prompts) and adds, per prompted block i, a :class:`~prompts.generator.SupportGenerator` that
reads the episode's class prototypes and emits M + 1 vectors ``[M + 1, D]``: M offsets added to
VGP's virtual nodes and one shift added to every patch node.

- ``condition_on="blocks"`` (default): block i's generator reads the support nodes *entering block i*
  (the unprompted backbone's block-i input, ``[S, N0, D]``), so each block is conditioned on features
  of its own depth; ``"output"`` reads the backbone's output nodes for every block, as ``add`` and
  ``modify`` do.
- The generators' output layers start at zero, so a fresh ``svgp`` is exactly VGP, and the state dict
  of a trained VGP (same blocks, ``num_nodes`` and ``rank``) loads into it with
  :meth:`SupportVGP.warm_start`: meta-training then starts from that VGP instead of from no prompt.
"""
from __future__ import annotations

from typing import Dict, Union

import torch
from torch import nn

from .base import register_prompt
from .generator import PerBlockGenerated, SupportGenerator
from .vgp import VGP

__all__ = ["SupportVGP"]

CONDITION_ON = ("blocks", "output")


@register_prompt("svgp")
class SupportVGP(PerBlockGenerated, VGP):
    """VGP + support-generated virtual-node offsets and patch-node shift per prompted block.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. num_nodes: M virtual nodes per block.
        rank: r of VGP's low-rank prompts. hidden: generator width.
        condition_on: ``blocks`` (each block's generator reads the support nodes entering that block)
            or ``output`` (every generator reads the backbone's output nodes).
    """

    conditioned = True

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, rank: int = 8, hidden: int = 64,
                 condition_on: str = "blocks"):
        super().__init__(backbone, blocks, num_nodes, rank)
        if condition_on not in CONDITION_ON:
            raise ValueError(f"svgp: condition_on must be one of {', '.join(CONDITION_ON)}, got {condition_on!r}")
        self.condition_on = condition_on
        self.generators = nn.ModuleDict({str(i): SupportGenerator(self.dim, num_nodes + 1, hidden=hidden)
                                         for i in self.blocks})

    def support_features(self, backbone, support_images):
        """``{block: [S, N0, D]}`` support nodes entering each prompted block (``condition_on="blocks"``),
        else the backbone's output nodes ``[S, N0, D]``."""
        if self.condition_on == "output":
            return super().support_features(backbone, support_images)
        seen, n0 = {}, self.num_patch_nodes

        def capture(i, x, node_mask):
            if i in self.blocks:
                seen[i] = x[:, :n0]
            return x, node_mask

        backbone.forward_features(support_images, block_hook=capture)
        return seen

    def set_episode(self, support_nodes: Union[torch.Tensor, Dict[int, torch.Tensor]], support_labels):
        """support_nodes: :meth:`support_features`' output (``{block: [S, N0, D]}`` or ``[S, N0, D]``)."""
        if self.condition_on == "blocks" and not isinstance(support_nodes, dict):
            raise ValueError("svgp(condition_on='blocks') needs the support nodes entering each block: pass "
                             "support_features(backbone, images) (a dict), not the backbone's output nodes")
        super().set_episode(support_nodes, support_labels)

    def warm_start(self, vgp_state: Dict[str, torch.Tensor]) -> None:
        """Start from a trained VGP: load its state dict (every VGP tensor must match; the generators
        keep their zero output layers, so the prompt is then exactly that VGP)."""
        try:
            missing, unexpected = self.load_state_dict(vgp_state, strict=False)
        except RuntimeError as e:  # a tensor of another shape (rank, num_nodes)
            raise ValueError(f"svgp.warm_start: not a VGP state of the same shape: {e}") from None
        not_generator = [k for k in missing if not k.startswith("generators.")]
        if unexpected or not_generator:
            raise ValueError(f"svgp.warm_start: not a VGP state of the same shape (missing {not_generator}, "
                             f"unexpected {list(unexpected)})")

    def block_hook(self, i, x, node_mask):
        if i not in self.blocks:
            return x, node_mask
        gen = self.generated(i)  # [M + 1, D]
        return self.prompt_block(self.blocks.index(i), x, node_mask, shift=gen[-1], offsets=gen[:-1])

    def extra_repr(self):
        return super().extra_repr() + f", condition_on={self.condition_on}"
