"""The site table: where in a block an activation is read and written, one entry per site kind.

A *site kind* is a value of the effects table's ``hook`` column (``resid_post``, ``z``, ``blocks`` …). Its entry
says the TransformerLens hook name (a template with ``{layer}``), the activation's axes for one sequence, and the
two things the fast engine needs to know to run a patch there:

* ``enters_block``: the activation *is* the residual entering block ℓ + ``enters_block`` (``resid_pre``: 0,
  ``resid_post``: 1), so a patched run simply starts there from the patched residual; None: a hook inside block
  ℓ, written during a run that starts at ℓ from the target's ``resid_pre``;
* ``residual``: the activation is ``[pos, d_model]``, stackable with the residual, so prompt sharing applies;
  a site with other axes (heads, MLP neurons) runs full sequences.

================  ==================================  =====================  =============  ========
site              hook name                           axes                   enters_block   residual
================  ==================================  =====================  =============  ========
resid_pre         blocks.ℓ.hook_resid_pre             pos, d_model           0              yes
resid_mid         blocks.ℓ.hook_resid_mid             pos, d_model           –              yes
resid_post        blocks.ℓ.hook_resid_post            pos, d_model           1              yes
attn_out          blocks.ℓ.hook_attn_out              pos, d_model           –              yes
mlp_out           blocks.ℓ.hook_mlp_out               pos, d_model           –              yes
z                 blocks.ℓ.attn.hook_z                pos, n_heads, d_head   –              no
k, v              blocks.ℓ.attn.hook_k / hook_v       pos, n_kv_heads, d_head  –            no
                  (per key/value head, before TransformerLens repeats them to the query heads)
blocks            blocks.ℓ.hook_resid_pre (E8: the   pos, d_model           0              yes
                  blocks' *weights*, engine/hybrid)
================  ==================================  =====================  =============  ========

An experiment adds a site kind from its own module with :func:`register_site` (e.g. MLP neurons,
``blocks.{layer}.mlp.hook_post``, axes pos × d_mlp): the row key accepts its name, and every engine runs it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """One site kind: see the module docstring."""

    name: str
    template: str  # the hook name, ``{layer}`` filled in: e.g. "blocks.{layer}.hook_resid_post"
    axes: tuple[str, ...]  # of one sequence's activation, e.g. ("pos", "d_model")
    enters_block: int | None = None  # 0 / 1: the residual entering block ℓ / ℓ + 1; None: written inside block ℓ
    description: str = ""

    @property
    def residual(self) -> bool:
        """A ``[pos, d_model]`` activation: stacked with the start residual, and its prompt shareable."""
        return self.axes == ("pos", "d_model")

    def hook_name(self, layer: int) -> str:
        return self.template.format(layer=layer)


_SITES: dict[str, Site] = {}


def register_site(site: Site) -> Site:
    """Add a site kind (a module's top level; a re-import replaces its own entry). A name is one site's only:
    another template under a taken name is an error."""
    old = _SITES.get(site.name)
    if old is not None and (old.template, old.axes, old.enters_block) != (site.template, site.axes, site.enters_block):
        raise ValueError(
            f"site {site.name!r} is registered twice with different hook names or axes ({old.template} and "
            f"{site.template}); give the new site another name"
        )
    if "{layer}" not in site.template:
        raise ValueError(f"site {site.name!r}: its template {site.template!r} needs a {{layer}} field")
    _SITES[site.name] = site
    return site


def site(name: str) -> Site:
    """The site kind ``name``; a KeyError naming the registered ones otherwise."""
    try:
        return _SITES[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; registered: {', '.join(_SITES)}") from None


def names() -> tuple[str, ...]:
    """Every registered site kind, in registration order (the built-in ones first)."""
    return tuple(_SITES)


def hook_name(layer: int, name: str) -> str:
    """The TransformerLens hook name of site ``name`` at block ``layer``, e.g. ``blocks.8.hook_resid_post``."""
    return site(name).hook_name(layer)


_RESID = ("pos", "d_model")
for _site in (
    Site("resid_pre", "blocks.{layer}.hook_resid_pre", _RESID, 0, "the residual entering the block"),
    Site("resid_mid", "blocks.{layer}.hook_resid_mid", _RESID, None, "the residual between attention and MLP"),
    Site("resid_post", "blocks.{layer}.hook_resid_post", _RESID, 1, "the residual leaving the block"),
    Site("attn_out", "blocks.{layer}.hook_attn_out", _RESID, None, "the attention's output"),
    Site("mlp_out", "blocks.{layer}.hook_mlp_out", _RESID, None, "the MLP's output"),
    Site("z", "blocks.{layer}.attn.hook_z", ("pos", "n_heads", "d_head"), None, "per query head"),
    Site("k", "blocks.{layer}.attn.hook_k", ("pos", "n_key_value_heads", "d_head"), None, "per key head"),
    Site("v", "blocks.{layer}.attn.hook_v", ("pos", "n_key_value_heads", "d_head"), None, "per value head"),
    # E8's weight transplants: not an activation, the window's blocks; read and written at the residual entering it
    Site("blocks", "blocks.{layer}.hook_resid_pre", _RESID, 0, "the blocks' weights (a transplant)"),
):
    register_site(_site)
