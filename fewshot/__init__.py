"""fewshot: few-shot episodic learning with Vision GNN backbones, graph prompts and plug-in matchers.

The engine lives here (config, training, evaluation, checkpoints, tracking, CLI); data in
:mod:`episodes`, backbones in :mod:`models`, prompts in :mod:`prompts`, matchers in :mod:`matchers`.
"""
from .config import Config, ConfigError

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "__version__"]
