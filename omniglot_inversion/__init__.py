"""omniglot-inversion: model inversion attacks on a split network's code, and what protects it.

A TensorFlow 2 port of "Hacking deep learning: model inversion attack by example" (RStudio AI
Blog, 2020), grown into a suite: the post's decoder and He et al.'s white-box and hybrid attacks,
measured against baselines; DP-SGD with its epsilon and a membership-inference audit.

Public API: the models, interception, the attacks, the scores, the privacy accounting and audit.
Each name is imported from its room on first use (PEP 562), so that ``import omniglot_inversion``
(and the CLI's ``--help``) does not start TensorFlow until a name that needs it is used.
"""

from __future__ import annotations

import importlib

# public name -> (module, name in that module)
_API = {
    "AttackModel": ("omniglot_inversion.network.models", "AttackModel"),
    "DecoderAttack": ("omniglot_inversion.attacks", "DecoderAttack"),
    "HybridAttack": ("omniglot_inversion.attacks", "HybridAttack"),
    "InversionAttack": ("omniglot_inversion.attacks", "InversionAttack"),
    "TargetModel": ("omniglot_inversion.network.models", "TargetModel"),
    "TestSet": ("omniglot_inversion.measure.assessment", "TestSet"),
    "UsageError": ("omniglot_inversion.errors", "UsageError"),
    "WhiteboxAttack": ("omniglot_inversion.attacks", "WhiteboxAttack"),
    "assess": ("omniglot_inversion.measure.assessment", "assess"),
    "build_complete_model": ("omniglot_inversion.network.models", "build_complete_model"),
    "code_error": ("omniglot_inversion.attacks", "code_error"),
    "compute_dp_sgd_privacy": ("omniglot_inversion.dp.accounting", "compute_dp_sgd_privacy"),
    "epsilon_table": ("omniglot_inversion.dp.accounting", "epsilon_table"),
    "load_intercepted": ("omniglot_inversion.network.interception", "load_intercepted"),
    "load_surrogate": ("omniglot_inversion.attacks", "load_surrogate"),
    "load_test_set": ("omniglot_inversion.pipelines.attack_run", "load_test_set"),
    "membership_audit": ("omniglot_inversion.measure.membership", "audit"),
    "per_image_scores": ("omniglot_inversion.measure.evaluation", "per_image_scores"),
    "reidentification": ("omniglot_inversion.measure.evaluation", "reidentification"),
    "score": ("omniglot_inversion.measure.evaluation", "score"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'omniglot_inversion' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

