"""omniglot-inversion: model inversion attacks on a split network's code, and what protects it.

A TensorFlow 2 port of "Hacking deep learning: model inversion attack by example" (RStudio AI
Blog, 2020), grown into a suite: the post's decoder and He et al.'s white-box and hybrid attacks,
measured against baselines; DP-SGD with its epsilon and a membership-inference audit.

Public API: the models, interception, the attacks, the scores, the privacy accounting and audit.
"""

from omniglot_inversion.accounting import compute_dp_sgd_privacy, epsilon_table
from omniglot_inversion.assessment import TestSet, assess
from omniglot_inversion.attack_run import load_test_set
from omniglot_inversion.attacks import (
    DecoderAttack,
    HybridAttack,
    InversionAttack,
    WhiteboxAttack,
    code_error,
    load_surrogate,
)
from omniglot_inversion.errors import UsageError
from omniglot_inversion.evaluation import per_image_scores, reidentification, score
from omniglot_inversion.interception import load_intercepted
from omniglot_inversion.membership import audit as membership_audit
from omniglot_inversion.models import AttackModel, TargetModel, build_complete_model

__all__ = [
    "AttackModel", "DecoderAttack", "HybridAttack", "InversionAttack", "TargetModel", "TestSet", "UsageError",
    "WhiteboxAttack",
    "assess", "build_complete_model", "code_error", "compute_dp_sgd_privacy", "epsilon_table", "load_intercepted",
    "load_surrogate", "load_test_set", "membership_audit", "per_image_scores", "reidentification", "score",
]
