"""omniglot-inversion: a model inversion attack on a split network, and DP-SGD as a defence.

A TensorFlow 2 port of "Hacking deep learning: model inversion attack by example" (RStudio AI
Blog, 2020). Public API: the models, the data splits, the training loops and the run pipelines.
"""

from omniglot_inversion.errors import UsageError
from omniglot_inversion.models import AttackModel, TargetModel, build_complete_model

__all__ = ["AttackModel", "TargetModel", "UsageError", "build_complete_model"]
