"""Defences at the cut: what the device does to its code before sending it, and what the target's
training adds to its loss. One module per defence; `build` makes one from its name and strength,
`from_config` from the data an intercepted file carries (never from code)."""

from __future__ import annotations

from omniglot_inversion.defences.base import Defence
from omniglot_inversion.defences.dropout import CodeDropout
from omniglot_inversion.defences.noise import CodeNoise, LaplaceNoise
from omniglot_inversion.defences.nopeek import NoPeek, NoPeekLaplace, distance_correlation
from omniglot_inversion.errors import UsageError

DEFENCES: dict[str, type[Defence]] = {
    kind.name: kind for kind in (Defence, CodeNoise, LaplaceNoise, CodeDropout, NoPeek, NoPeekLaplace)}
NO_DEFENCE = Defence()


def build(name: str, strength: float | None = None, **parameters) -> Defence:
    """The defence ``name`` (one of `DEFENCES`) at ``strength``; ``none`` takes no strength."""
    if name not in DEFENCES:
        raise UsageError(f"Unknown defence {name!r}; choose one of {', '.join(DEFENCES)}.")
    if name == "none":
        if strength is not None:
            raise UsageError("--strength needs a defence (--defence gaussian|laplace|dropout|nopeek|nopeek+laplace).")
        return NO_DEFENCE
    if strength is None:
        raise UsageError(f"Defence {name!r} needs --strength: {DEFENCES[name].strength_meaning()}.")
    return DEFENCES[name](strength=float(strength), **parameters)


def from_config(config: dict | None) -> Defence:
    """The defence recorded as ``config`` (what `Defence.config` wrote); None means no defence."""
    if not config:
        return NO_DEFENCE
    values = dict(config)
    name = values.pop("name", None)
    if name not in DEFENCES:
        raise UsageError(f"The file records an unknown defence {name!r}; this version knows {', '.join(DEFENCES)}.")
    kind = DEFENCES[name]
    fields = {field for field in kind.__dataclass_fields__}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise UsageError(f"The recorded defence {name!r} has unknown parameters {unknown}.")
    try:
        return kind(**values)
    except TypeError as err:  # a parameter of the wrong type
        raise UsageError(f"The recorded defence {name!r} has parameters of the wrong type: {err}.") from err


__all__ = ["DEFENCES", "NO_DEFENCE", "Defence", "build", "distance_correlation", "from_config"]
