"""The prompt interface and the registry of prompts.

A prompt adapts a *frozen* ViG backbone to an episode by acting on the patch graph of chosen
Grapher blocks, through the backbone's hooks (``models.vig.VisionGNN.forward_features``):

- ``block_hook(i, x, node_mask)`` runs before block i: it may append prompt nodes, change node
  features or delete nodes (mask them: a deleted node is never a k-NN neighbour and is left out
  of pooling);
- ``graph_hook(i, h, neighbours)`` runs inside block i's Grapher after the k-NN graph is built and
  before the graph convolution (VGP's edge prompt needs the neighbour indices).

A prompt is either *fixed* (its parameters are the same for every episode: VPT, GPF, VGP, ...)
or *support-conditioned* (``conditioned = True``: :meth:`Prompt.set_episode` sees the episode's
support set and a small generator produces the prompt from it in one forward pass). Evaluation of
a conditioned prompt must go episode by episode (``PromptedModel.episode_independent`` is False).

Glossary: B images, S = way*shot support images, N nodes in a block (patch nodes plus any prompt
nodes), N0 = h*w patch nodes, D feature dim, M prompt nodes per block, k neighbours.

Writing a prompt::

    @register_prompt("my-prompt")
    class MyPrompt(Prompt):
        def __init__(self, backbone, blocks="all", num_nodes=4):
            super().__init__(backbone, blocks)
            ...
        def block_hook(self, i, x, node_mask):       # x [B, N, D], node_mask [B, N] bool
            if i not in self.blocks:
                return x, node_mask
            ...

    prompt = prompts.create("my-prompt", backbone, blocks="0,2", num_nodes=4)
    nodes, mask = prompt.forward_nodes(backbone, images)   # [B, N0, D], [B, N0] bool or None
    pooled = backbone.forward_head(nodes, pre_logits=True, node_mask=mask)  # [B, D]
"""
from __future__ import annotations

from typing import Callable, ClassVar, Dict, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from registry import Option, Registry, class_options

__all__ = [
    "Prompt", "NoPrompt", "register_prompt", "get", "create", "list_prompts", "parse_blocks",
    "accepted_options", "options", "freeze",
]

BlocksSpec = Union[str, int, Sequence[int], None]

_REGISTRY: Registry = Registry("prompt")


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``module`` (the frozen backbone a prompt adapts);
    returned for chaining. Its BatchNorms are the caller's: ``.eval()`` keeps their running statistics."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def parse_blocks(spec: BlocksSpec, depth: int) -> Tuple[int, ...]:
    """Blocks to prompt: ``"all"`` / None -> every block, ``"0,4,8"`` or ``[0, 4, 8]`` -> those,
    sorted, each in ``0..depth-1``. Raises ``ValueError`` naming a bad entry."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return tuple(range(depth))
    if isinstance(spec, int) and not isinstance(spec, bool):
        items = [spec]
    elif isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"prompt blocks must be 'all' or comma-separated block indices, got {spec!r}")
        try:
            items = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"prompt blocks must be 'all' or comma-separated block indices, got {spec!r}") from None
    else:
        items = [int(b) for b in spec]
    bad = [b for b in items if not 0 <= b < depth]
    if bad:
        raise ValueError(f"prompt blocks {bad} out of range: the backbone has {depth} blocks (0..{depth - 1})")
    return tuple(sorted(set(items)))


class Prompt(nn.Module):
    """Base class of every prompt; on its own (``none``) it leaves the backbone unchanged.

    Args:
        backbone: the (frozen) ViG; read for ``embed_dim``, the number of blocks and the node grid.
            It is *not* stored as a submodule, so the prompt's ``parameters()`` are only its own.
        blocks: blocks to prompt, see :func:`parse_blocks`.

    Attributes:
        name: registry name (set by :func:`register_prompt`).
        conditioned: True when :meth:`set_episode` uses the support set (a generated prompt).
        dim: D. depth: number of blocks. num_patch_nodes: N0. blocks: the prompted block indices.
    """

    name: ClassVar[str] = "none"
    conditioned: ClassVar[bool] = False
    fit_images: ClassVar[int] = 0
    """How many training images :meth:`fit` wants before training (0: the prompt fits nothing)."""

    acts_on_graph: ClassVar[bool] = True
    """False for ``none``, which runs on any backbone (Conv-4 and the pyramid ViG included)."""

    def __init__(self, backbone: nn.Module, blocks: BlocksSpec = "all"):
        super().__init__()
        if not is_isotropic_vig(backbone):
            if self.acts_on_graph:
                raise ValueError(
                    f"prompts act on the graph of an isotropic ViG backbone; {type(backbone).__name__} has no "
                    "Grapher blocks of its own (use --backbone vig_small_28, vig_small_ln_28, vig_small_84 or "
                    "test_vig, or --prompt none)")
            self.dim, self.depth, self.num_patch_nodes, self.blocks = int(backbone.num_features), 0, 0, ()
            return
        self.dim = int(backbone.embed_dim)
        self.depth = len(backbone.blocks)
        self.num_patch_nodes = int(backbone.grid_size[0] * backbone.grid_size[1])
        self.blocks = parse_blocks(blocks, self.depth)

    # ----- per-episode conditioning --------------------------------------------------------
    def set_episode(self, support_nodes: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Condition on an episode's support set (no-op unless ``conditioned``).

        Args:
            support_nodes: the *unprompted* frozen backbone's output nodes for the support
                images, ``[S, N0, D]`` (after its final norm).
            support_labels: ``[S]`` long in ``0..way-1``.

        Conditioned prompts keep what they generate (tensors still attached to the generator's
        graph, so meta-training back-propagates into the generator) until the next call or
        :meth:`clear_episode`.
        """

    def clear_episode(self) -> None:
        """Forget the episode state set by :meth:`set_episode`."""

    def condition(self, backbone: nn.Module, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Show a conditioned prompt its episode: :meth:`set_episode` with the unprompted backbone's
        nodes ``[S, N0, D]`` of float ``support_images [S, C, H, W]`` (no gradient through the
        backbone); a no-op for a fixed prompt."""
        if self.conditioned:
            with torch.no_grad():
                nodes = self.support_features(backbone, support_images)
            self.set_episode(nodes, support_labels)

    def support_features(self, backbone: nn.Module, support_images: torch.Tensor):
        """What :meth:`set_episode` is given for float ``support_images [S, C, H, W]``: the unprompted
        backbone's output nodes ``[S, N0, D]`` (a prompt conditioned per block returns ``{block: [S, N0, D]}``,
        the nodes entering each of its blocks). Call it without gradient."""
        return backbone.forward_features(support_images)

    # ----- data-dependent state fitted before training ----------------------------------------
    def fit(self, backbone: nn.Module, images: torch.Tensor, seed: int = 0) -> None:
        """Fit what the prompt learns from data rather than by gradient (DAM-VP's centroids) on float
        training images ``[n, C, H, W]`` (``n`` up to :attr:`fit_images`); nothing by default."""

    # ----- hooks --------------------------------------------------------------------------
    def block_hook(self, i: int, x: torch.Tensor, node_mask: torch.Tensor
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Before block i: ``x [B, N, D]``, ``node_mask [B, N]`` bool -> ``(x' [B, N', D], mask' [B, N'])``.

        Appended nodes go *after* the existing ones (so the first N0 nodes stay the patch nodes).
        """
        return x, node_mask

    def graph_hook(self, i: int, h: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Inside block i's Grapher: projected node features ``h [B, N, D]`` and the k-NN graph
        ``neighbours [B, N, k]`` -> ``h' [B, N, D]`` fed to the graph convolution."""
        return h

    uses_graph_hook: ClassVar[bool] = False
    """True when :meth:`graph_hook` does something (the backbone is then given it)."""

    # ----- the prompted forward pass -------------------------------------------------------
    def forward_nodes(self, backbone: nn.Module, images: torch.Tensor,
                      node_mask: Optional[torch.Tensor] = None,
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run the backbone with this prompt.

        Args:
            backbone: the ViG this prompt was built for.
            images: float ``[B, C, H, W]`` (already scaled, see ``episodes.to_input``).
            node_mask: optional ``[B, N0]`` bool mask of patch nodes to delete from the start.

        Returns:
            ``(nodes [B, N0, D], mask [B, N0] bool or None)``: prompt nodes appended inside the
            blocks are removed (they never reach pooling or the head); ``mask`` marks the patch
            nodes still kept, to pass to ``backbone.forward_head(..., node_mask=mask)``.
        """
        kwargs = {"graph_hook": self.graph_hook} if self.uses_graph_hook else {}
        nodes, mask = backbone.forward_features(images, node_mask=node_mask, block_hook=self.block_hook,
                                                return_mask=True, **kwargs)
        n0 = self.num_patch_nodes if nodes.shape[1] >= self.num_patch_nodes else nodes.shape[1]
        nodes = nodes[:, :n0]
        if mask is not None:
            mask = mask[:, :n0]
            if bool(mask.all()):
                mask = None
        return nodes, mask

    def embed(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Pooled prompted embeddings ``[B, D]`` of float ``images [B, C, H, W]`` (half-precision
        outputs of an autocast forward are returned as float32; a conditioned prompt must have seen
        its episode through :meth:`condition`)."""
        nodes, mask = self.forward_nodes(backbone, images)
        pooled = backbone.forward_head(nodes, pre_logits=True, node_mask=mask)
        return pooled.float() if pooled.dtype in (torch.float16, torch.bfloat16) else pooled

    def regulariser(self) -> torch.Tensor:
        """Extra loss term of the last forward pass (e.g. a keep-ratio penalty); 0 by default."""
        return torch.zeros(())

    def extra_repr(self) -> str:
        return f"blocks={list(self.blocks)}"


def register_prompt(name: str) -> Callable[[Type[Prompt]], Type[Prompt]]:
    """Class decorator: make ``cls`` available as ``prompts.create(name, ...)`` and ``--prompt name``;
    its constructor's keyword arguments after ``backbone`` become ``--prompt-opt NAME=VALUE`` options
    (a name registered by another class is a ``ValueError``)."""
    return _REGISTRY.register(name, attribute="name")


def get(name: str) -> Type[Prompt]:
    """The prompt class registered as ``name``; ``ValueError`` listing the known names (and the closest) otherwise."""
    return _REGISTRY.get(name)


def options(name: str) -> Dict[str, Option]:
    """The options of prompt ``name`` (its constructor's keyword arguments besides ``backbone``)."""
    return class_options(get(name), skip=("backbone",))


def accepted_options(name: str) -> Tuple[str, ...]:
    """Keyword options the prompt ``name`` takes besides ``backbone``."""
    return tuple(options(name))


def create(name: str, backbone: nn.Module, **options) -> Prompt:
    """Build prompt ``name`` for ``backbone``; an option the prompt does not take is a ``ValueError``."""
    unknown = sorted(set(options) - set(accepted_options(name)))
    if unknown:
        raise ValueError(f"prompt {name!r} takes no option(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(accepted_options(name)) or 'none'}")
    return get(name)(backbone, **options)


def list_prompts() -> list:
    """Registered prompt names (``--prompt``), sorted."""
    return _REGISTRY.names()


def is_isotropic_vig(backbone: nn.Module) -> bool:
    """True when ``backbone`` has the graph prompts act on: ``embed_dim``, a node grid and Grapher ``blocks``."""
    return (hasattr(backbone, "embed_dim") and hasattr(backbone, "grid_size") and hasattr(backbone, "blocks")
            and all(hasattr(b, "grapher") for b in backbone.blocks))


@register_prompt("none")
class NoPrompt(Prompt):
    """No prompt: the frozen backbone as it is (the 'none' row of the comparison), any backbone."""

    acts_on_graph = False

    def forward_nodes(self, backbone: nn.Module, images: torch.Tensor,
                      node_mask: Optional[torch.Tensor] = None,
                      ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The backbone's own ``forward_features``: ``(nodes [B, N, D], node_mask)``."""
        if node_mask is None:
            return backbone.forward_features(images), None
        return super().forward_nodes(backbone, images, node_mask)
