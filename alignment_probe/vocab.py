"""The closed vocabularies: one definition of every name a spec, a row key or an option may use.

Each vocabulary is a ``Literal`` type (for annotations and the type checker) and a tuple of its
values (for validation and help texts), the tuple derived from the type so the two cannot drift:

================  ==========================================================  =====================
type              values                                                      used by
================  ==========================================================  =====================
``Hook``          resid_pre, resid_mid, resid_post, attn_out, mlp_out          RowKey.hook, E2 features
``HeadHook``      z (per query head), k, v (per key/value head)                RowKey.hook (E7, E10)
``BlockHook``     blocks (the weights of a window of blocks)                   RowKey.hook (E8)
``Scope``         all, prompt, completion, last_prompt, all_but_bos,           RowKey.scope, scope_mask
                  predicting, and parametrised ``first_completion:K`` (K ≥ 1)
``Side``          chosen, rejected                                             one sequence of a pair
``Sides``         both, chosen, rejected                                       RowKey.sides (patched)
``Role``          base, tuned                                                  RowKey.target/.source
``LowRankMode``   reconstruct, difference                                      Project.mode (E6)
``VectorKind``    chosen, rejected, contrast                                   AddVector.kind (E5)
================  ==========================================================  =====================

``check(value, allowed, what)`` rejects a value outside its vocabulary at construction time with a
message naming the bad value and the allowed ones; ``check_scope`` also parses parametrised scopes.
"""

from __future__ import annotations

from typing import Any, Collection, Literal, TypeVar, get_args

from alignment_probe import sites
from alignment_probe.errors import ConfigError

Hook = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
HOOKS: tuple[Hook, ...] = get_args(Hook)
# Hook points inside attention, one row per head (E7): ``z`` [pos, n_heads, d_head] per query head; ``k``, ``v``
# [pos, n_key_value_heads, d_head] per key/value head, before TransformerLens repeats them to the query heads.
HeadHook = Literal["z", "k", "v"]
HEAD_HOOKS: tuple[HeadHook, ...] = get_args(HeadHook)
# Not an activation but the blocks' *weights* (E8 transplants): a row with hook ``blocks``, layer a and
# ``param`` w ran blocks a … a+w−1 of the source model inside the target (engine/hybrid.py).
BlockHook = Literal["blocks"]
BLOCK_HOOKS: tuple[BlockHook, ...] = get_args(BlockHook)
# Any value of a row's hook column: an activation, a head's, or the blocks' weights.
AnyHook = Hook | HeadHook | BlockHook

# Plain (unparametrised) position scopes. Parametrised ones are written ``name:K``. ``predicting``: the positions
# whose next-token distributions score the completion, the last prompt token through the second-to-last
# completion token (E11's steering positions).
Scope = Literal["all", "prompt", "completion", "last_prompt", "all_but_bos", "predicting"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ParamScope = Literal["first_completion"]  # ``first_completion:K``: the first K completion positions
PARAM_SCOPES: tuple[str, ...] = get_args(ParamScope)

Side = Literal["chosen", "rejected"]
SIDES: tuple[Side, ...] = get_args(Side)

Sides = Literal["both", "chosen", "rejected"]
PATCHED_SIDES: tuple[Sides, ...] = get_args(Sides)

Role = Literal["base", "tuned"]
ROLES: tuple[Role, ...] = get_args(Role)

LowRankMode = Literal["reconstruct", "difference"]
LOWRANK_MODE_NAMES: tuple[LowRankMode, ...] = get_args(LowRankMode)
# E6's experiment names → the mode each one patches with.
LOWRANK_MODES: dict[str, LowRankMode] = {f"lowrank_{m}": m for m in LOWRANK_MODE_NAMES}

VectorKind = Literal["chosen", "rejected", "contrast"]
VECTOR_KINDS: tuple[VectorKind, ...] = get_args(VectorKind)

# Every vocabulary type above (the test suite's runtime checker leaves their membership to check()).
VOCABULARIES = (Hook, HeadHook, BlockHook, Scope, ParamScope, Side, Sides, Role, LowRankMode, VectorKind)


class VocabularyError(ConfigError, ValueError):
    """A name outside its closed vocabulary (a ConfigError for the CLI, a ValueError for callers).

    Raised when a hook point, scope, side, role, low-rank mode or vector kind is not one of its allowed values,
    at the moment a row key, spec or intervention is built; the message names the bad value and the allowed
    ones (and a likely misspelling).

    What to do: use one of the values the message lists (``alignment_probe.vocab`` defines them all).
    """


T = TypeVar("T")


def check(value: T, allowed: Collection[Any], what: str) -> T:
    """``value`` if it is one of ``allowed``; otherwise a VocabularyError naming both."""
    if value not in allowed:
        raise VocabularyError(f"unknown {what} {value!r}; use one of {', '.join(map(str, allowed))}")
    return value


def parse_scope(scope: str) -> tuple[str, int | None]:
    """``"completion"`` → ``("completion", None)``; ``"first_completion:4"`` → ``("first_completion", 4)``.

    Raises VocabularyError for anything else, naming the allowed scopes.
    """
    allowed = ", ".join([*SCOPES, *(f"{p}:K" for p in PARAM_SCOPES)])
    if not isinstance(scope, str):
        raise VocabularyError(f"unknown position scope {scope!r}; use one of {allowed}")
    if scope in SCOPES:
        return scope, None
    name, sep, arg = scope.partition(":")
    if sep and name in PARAM_SCOPES:
        if arg.isdigit() and int(arg) >= 1:
            return name, int(arg)
        raise VocabularyError(f"bad position scope {scope!r}: {name}:K needs a whole number K ≥ 1, e.g. {name}:4")
    raise VocabularyError(f"unknown position scope {scope!r}; use one of {allowed}")


def check_scope(scope: str) -> str:
    """``scope`` if it is a plain scope or a well-formed parametrised one (see parse_scope)."""
    parse_scope(scope)
    return scope


def check_hook(hook: str) -> str:
    """``hook`` if it is a registered site kind (sites.py: the ones above, and any an experiment registers)."""
    return check(hook, sites.names(), "hook point")


def check_side(side: str) -> str:
    return check(side, SIDES, "side")


def check_sides(sides: str) -> str:
    return check(sides, PATCHED_SIDES, "patched sides")


def check_role(role: str, what: str = "model role") -> str:
    return check(role, ROLES, what)


def parse_layers(text: str | None, option: str) -> tuple[int, ...] | None:
    """``4,8,12`` or ``0:30:3`` (Python's range: start, stop, step) or a mix of both; ``option`` names the flag
    in the error (the CLI's ``--layers`` and the findings driver's)."""
    if text is None:
        return None
    out: list[int] = []
    for item in (x.strip() for x in text.split(",")):
        try:
            out += list(range(*(int(v) for v in item.split(":")))) if ":" in item else [int(item)] if item else []
        except (TypeError, ValueError):
            raise ConfigError(
                f"{option} {text!r}: expected a comma-separated list of ints or start:stop:step "
                "ranges, e.g. 4,8,12 or 0:30:3."
            ) from None
    return tuple(sorted(set(out)))
