"""The normalization variants, one row each: what config, schedule, the probes and analysis/ know of a variant.

Config's lists and checks (which networks a variant needs, its own options and their defaults), schedule's step
costs, dynamics' scale-invariance flags and analysis/'s order, colours and families all read this table. It is
torch-free and imports nothing from bnsweep, so analysis/ reads it without the training code.

A variant's layers are built in bnsweep/norms.py (a per-layer variant: its class and its `NORM_LAYERS` entry;
tests/test_variants.py checks the two agree) and, where it changes the architecture (fixup, skipinit, nf), in
bnsweep/models.py. A new per-layer variant is its row here and its layer there; nothing else names it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Which networks a variant applies to (config maps each to its architectures).
ALL, CONVOLUTIONAL, RESIDUAL = "all", "convolutional", "residual"
APPLIES_TO = (ALL, CONVOLUTIONAL, RESIDUAL)
# How bnsweep/dynamics.py's eps_term derives the eps term of a scale-invariant variant's layer: "variance"
# (kappa = eps / (v + eps) over a channel's batch, or over a sample's group of channels), "lp"
# (kappa = eps / (N_p + eps)); None where it is not derived.
EPS_TERMS = ("variance", "lp")
# The families analysis/ groups variants by: the lp variants (Fig. 5), the normalizer-free residual variants (C7)
# and the GroupNorm variants, which normalize within one example (C9).
LP, NORMALIZER_FREE, GROUP_NORM = "lp", "normalizer_free", "group_norm"
FAMILIES = (LP, NORMALIZER_FREE, GROUP_NORM)


@dataclass(frozen=True)
class Variant:
    """One normalization variant.

    applies_to: ALL, CONVOLUTIONAL or RESIDUAL; `needs` says why, in the message that refuses another network.
    scale_invariant: its layers' output does not change when the weights (and bias) before them are scaled.
    step_cost: time per step against `none`'s (schedule's FLOP model misses normalization's elementwise work).
    color, and the row's place in VARIANTS: how every figure draws and lists it.
    options: its own trial options and their defaults, filled in for it and refused for every other variant."""

    name: str
    applies_to: str
    scale_invariant: bool
    eps_term: str | None
    step_cost: float
    color: str
    families: tuple[str, ...] = ()
    options: tuple[tuple[str, float], ...] = ()
    needs: str = ""


# In figure order: the baseline, BatchNorm, its noisy and lp variants, the other normalizations, then the
# normalizer-free residual variants.
#
# Step costs: measured on this project's 2-core CPU machine with VGG-11 at width 0.125 (600-step trials with
# probes: none 21 s, batch 27 s, noisy_batch 39 s, l1_batch 34 s, l2_batch 35 s, linf_batch 41 s): normalization's
# elementwise work, which a FLOP count misses. layer and group were not measured and are taken as batch's.
# ws_group, fixup, skipinit and nf: measured on resnet20 at width 0.25 against its none (47 ms a step of 128):
# ws_group 1.08x group, fixup 1.05, skipinit 1.0, nf 1.25 (scaled WS and AGC).
VARIANTS = (
    Variant("none", ALL, False, None, 1.0, "#3b3b3b"),
    Variant("batch", ALL, True, "variance", 1.3, "#1f77b4"),
    Variant("noisy_batch", ALL, True, "variance", 1.9, "#ff7f0e"),
    Variant("l1_batch", ALL, True, "lp", 1.6, "#2ca02c", (LP,)),
    Variant("l2_batch", ALL, True, "lp", 1.7, "#17becf", (LP,)),
    Variant("linf_batch", ALL, True, "lp", 2.0, "#9467bd", (LP,)),
    Variant("layer", ALL, True, "variance", 1.3, "#8c564b"),
    Variant("group", ALL, True, "variance", 1.3, "#e377c2", (GROUP_NORM,)),
    # Weight standardization is scale invariant by its own construction, besides the GroupNorm after it.
    Variant("ws_group", CONVOLUTIONAL, True, "variance", 1.4, "#ad494a", (GROUP_NORM,),
            needs="standardizes convolution weights"),
    # Fixup's scalar biases and multipliers (and the head's bias) train at base_lr / 10 in the authors' code
    # (hongyi-zhang/Fixup, cifar/cifar_train.py and imagenet/imagenet_train.py: the parameter groups whose names
    # hold 'bias' or 'scale'); the paper's text does not state it.
    Variant("fixup", RESIDUAL, False, None, 1.05, "#d62728", (NORMALIZER_FREE,), (("fixup_scalar_lr", 0.1),),
            needs="rescales residual branches"),
    Variant("skipinit", RESIDUAL, False, None, 1.0, "#bcbd22", (NORMALIZER_FREE,),
            needs="rescales residual branches"),
    # nf's defaults, the NF authors' (deepmind-research nfnets: nf_resnet.py alpha=0.2; optim.py SGD_AGC
    # clipping=0.01)
    Variant("nf", RESIDUAL, False, None, 1.25, "#393b79", (NORMALIZER_FREE,), (("nf_alpha", 0.2), ("agc_clip", 0.01)),
            needs="rescales residual branches"),
)
BY_NAME = {v.name: v for v in VARIANTS}
NAMES = tuple(BY_NAME)
# Each variant's own option -> (the variant it belongs to, its default).
OPTIONS = {key: (v.name, default) for v in VARIANTS for key, default in v.options}


def applying_to(kind: str) -> tuple[str, ...]:
    """The variants that apply to `kind` of network only (ALL, CONVOLUTIONAL or RESIDUAL), in figure order."""
    if kind not in APPLIES_TO:
        raise KeyError(f"unknown kind of network {kind!r}: choose one of {', '.join(APPLIES_TO)}")
    return tuple(v.name for v in VARIANTS if v.applies_to == kind)


def family(tag: str) -> tuple[str, ...]:
    """The variants of one family (LP, NORMALIZER_FREE, GROUP_NORM), in figure order."""
    if tag not in FAMILIES:
        raise KeyError(f"unknown family {tag!r}: choose one of {', '.join(FAMILIES)}")
    return tuple(v.name for v in VARIANTS if tag in v.families)


def option_default(key: str) -> float:
    """The default of a variant's own option (nf_alpha, agc_clip, fixup_scalar_lr)."""
    return OPTIONS[key][1]
