"""``graph``: the three support-conditioned graph prompts together.

Before each prompted block: delete (mask the lowest-scoring patch nodes, from the first prompted
block on), then modify (support-conditioned GPF-plus on the patch nodes), then add (append the
support-generated prompt nodes). Each part is the module of its own family with the same blocks.
"""
from __future__ import annotations

from .add_nodes import AddNodes
from .base import Prompt, register_prompt
from .delete_nodes import DeleteNodes
from .modify_nodes import SupportGPF

__all__ = ["GraphPrompt"]


@register_prompt("graph")
class GraphPrompt(Prompt):
    """Delete + modify + add.

    Args:
        backbone: the frozen ViG. blocks: blocks to prompt. num_nodes: M added nodes per block.
        keep: fraction of patch nodes kept by the deletion. basis_size: K of the modify prompt.
        scorer: deletion scorer (see :class:`~prompts.delete_nodes.DeleteNodes`).
    """

    conditioned = True

    def __init__(self, backbone, blocks="all", num_nodes: int = 4, keep: float = 0.75,
                 basis_size: int = 4, scorer: str = "both"):
        super().__init__(backbone, blocks)
        self.delete = DeleteNodes(backbone, blocks, keep=keep, scorer=scorer)
        self.modify = SupportGPF(backbone, blocks, basis_size=basis_size)
        self.add = AddNodes(backbone, blocks, num_nodes=num_nodes)

    def set_episode(self, support_nodes, support_labels):
        for part in (self.delete, self.modify, self.add):
            part.set_episode(support_nodes, support_labels)

    def clear_episode(self):
        for part in (self.delete, self.modify, self.add):
            part.clear_episode()

    def block_hook(self, i, x, node_mask):
        for part in (self.delete, self.modify, self.add):
            x, node_mask = part.block_hook(i, x, node_mask)
        return x, node_mask

    def forward_nodes(self, backbone, images, node_mask=None):
        self.delete.prepare(backbone, images, node_mask)
        try:
            return super().forward_nodes(backbone, images, node_mask)
        finally:
            self.delete.release()
