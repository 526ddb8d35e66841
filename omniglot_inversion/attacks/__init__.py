"""Inversion attacks on an intercepted on-device stage, behind one interface (`InversionAttack`):
given the stage, the attacker's own images and the codes to invert, return reconstructions of
shape (n, 105, 105, 1) in [0, 1]. The attacker never sees a test image, only its code.

- ``decoder`` (`DecoderAttack`): the post's black-box inverse network, trained on the codes of the
  attacker's own images (``small1`` as in the post, or the ``background`` set: `surrogate`).
- ``whitebox`` (`WhiteboxAttack`): He et al.'s regularised maximum likelihood, using the
  intercepted weights: the image whose code matches, with a total-variation prior.
- ``hybrid`` (`HybridAttack`): the white-box search started from the decoder's reconstruction.
- ``prior`` (`PriorAttack`, GLASS-style): the search in the latent space of a generator trained on
  the attacker's own images (`generative.ImagePrior`), started from the encoding of the decoder's
  reconstruction.

Against the complete classifier, `class_inversion` reconstructs what a class looks like (MI-FACE,
GMI with LOMMA's logit loss): training-data inversion, the article's question.

Against a defended stage (`omniglot_inversion.defences`) the decoder trains on and inverts the
defended codes the device sends; the white-box search knows the defence from the intercepted file.
"""

from __future__ import annotations

from omniglot_inversion.attacks.base import (
    InversionAttack,
    clean_stage,
    code_shape,
    defence_of,
    input_shape,
    query,
    stage_function,
)
from omniglot_inversion.attacks.decoder import DecoderAttack
from omniglot_inversion.attacks.generative import ImagePrior
from omniglot_inversion.attacks.hybrid import HybridAttack
from omniglot_inversion.attacks.prior import PriorAttack
from omniglot_inversion.attacks.surrogate import SURROGATES, SurrogateSet, default_epochs, load_surrogate
from omniglot_inversion.attacks.whitebox import WhiteboxAttack, code_error
from omniglot_inversion.errors import UsageError

METHODS = ("decoder", "whitebox", "hybrid", "prior")

__all__ = ["METHODS", "SURROGATES", "DecoderAttack", "HybridAttack", "ImagePrior", "InversionAttack", "PriorAttack",
           "SurrogateSet", "WhiteboxAttack", "build_attack", "clean_stage", "code_error", "code_shape", "defence_of",
           "default_epochs", "input_shape", "load_surrogate", "query", "stage_function"]


def build_attack(method: str, *, decoder: DecoderAttack | None = None, **whitebox_options) -> InversionAttack:
    """The attack ``method``; ``decoder`` is the decoder attack itself or the hybrid's and the
    prior attack's start (a new one with the post's settings if None); ``whitebox_options`` go to
    the search (the prior attack takes its own learning rate and ignores tv_weight and start)."""
    if method not in METHODS:
        raise UsageError(f"Unknown attack method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "decoder":
        return decoder or DecoderAttack()
    if method == "whitebox":
        return WhiteboxAttack(**whitebox_options)
    if method == "prior":
        options = {key: value for key, value in whitebox_options.items() if key not in ("tv_weight", "start")}
        return PriorAttack(decoder or DecoderAttack(), **options)
    return HybridAttack(decoder or DecoderAttack(), **whitebox_options)
