"""One trial's configuration: every knob, its default, its validation and the trial's identity.

The same field names are the `bnsweep trial` options, the keys of a sweep file and the columns of the
`trials` table, so a value means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bnsweep.errors import BnsweepError

ARCHS = ("vgg11", "vgg13", "vgg16", "mlp", "dln", "linear")
NORMS = ("none", "batch", "noisy_batch", "l1_batch", "l2_batch", "linf_batch", "layer", "group")
DATASETS = ("cifar10", "fashion-mnist", "gaussian-linear", "quadratic")
PROBES = ("landscape", "ics", "activations", "bn_identity", "layer_norms", "hessian", "random_direction")
DEFAULT_PROBES = ("landscape", "ics", "activations", "bn_identity", "layer_norms")


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrialConfig:
    """Everything that defines one trial. `None` means "the paper's default for this architecture"."""

    # What is trained.
    arch: str = _f("vgg11", "network: " + ", ".join(ARCHS))
    width: float = _f(1.0, "channel/unit width multiplier (VGG, MLP)")
    norm: str = _f("batch", "normalization variant: " + ", ".join(NORMS))
    dataset: str | None = _f(None, "data set: " + ", ".join(DATASETS) + " (default: fashion-mnist; "
                             "gaussian-linear for dln, quadratic for linear)")
    curvature: float = _f(1.0, "quadratic: top eigenvalue of the loss's Hessian (full-batch GD diverges above "
                               "2/curvature)", omit_default=True)
    # How it is trained (protocol.md §1: plain SGD, fixed LR, batch 128, no augmentation).
    lr: float = _f(0.1, "learning rate (fixed, no schedule)")
    steps: int = _f(1000, "number of optimizer steps")
    batch_size: int | None = _f(None, "minibatch size; 0 = full batch (default: 128; full batch for dln "
                                               "and linear)")
    momentum: float = _f(0.0, "SGD momentum (the paper used none)")
    weight_decay: float = _f(0.0, "SGD weight decay (the paper used none)")
    seed: int = _f(0, "initialization, batch-order and noise seed")
    data_seed: int = _f(0, "seed of generated data (gaussian-linear's A and x, quadratic's X and y), "
                           "separate from --seed")
    init: str = _f("glorot", "weight initialization: glorot (the paper's) or torch")
    augment: bool = _f(False, "random crop + flip on the device (the paper used none)")
    # Normalization constants (protocol.md §2 for the noise).
    bn_eps: float = _f(1e-5, "epsilon of every normalization")
    bn_momentum: float = _f(0.1, "running-statistics momentum (torch convention)")
    noise_mu: float = _f(0.5, "noisy_batch: per-unit shift mean ~ U(-noise_mu, noise_mu)")
    noise_sigma: float = _f(1.25, "noisy_batch: per-unit scale mean ~ U(1, noise_sigma)")
    noise_r_mu: float = _f(0.1, "noisy_batch: per-element shift ~ U(mu - r, mu + r)")
    noise_r_sigma: float = _f(0.1, "noisy_batch: per-element scale ~ N(sigma, r) (r is a std)")
    noise_placement: str = _f("after_affine", "noisy_batch: after_affine (default) or before_affine")
    noise_at_eval: str = _f("expected", "noisy_batch in eval mode: expected (noise replaced by its mean, as "
                            "dropout) or none")
    groups: int = _f(32, "group norm: number of groups (largest divisor of C not above it)")
    # What is measured.
    eval_every: int = _f(250, "evaluate on a training subset and the test set every N steps (and at the end)")
    eval_subset: int = _f(10000, "size of the fixed training subset used for evaluation")
    test_subset: int | None = _f(None, "size of a fixed subset of the test set used for evaluation "
                                       "(default: the whole test set)", omit_default=True)
    # Outcome rules (recorded with every trial).
    diverge_factor: float = _f(10.0, "diverged: a non-finite minibatch loss or one above this multiple of "
                                    "the initial loss")
    trained_acc: float = _f(0.5, "trained (classification): final training-subset accuracy at least this")
    trained_loss_fraction: float = _f(0.1, "trained (regression): final loss below this fraction of the "
                                           "initial loss")
    # Probes (protocol.md §3, §4).
    probe_every: int = _f(100, "probe the landscape, ICS, activations every N steps; 0 switches probes off")
    probes: tuple[str, ...] = _f(DEFAULT_PROBES, "probes to run: " + ", ".join(PROBES), sequence=True)
    etas: tuple[float, ...] | None = _f(None, "landscape step sizes as multiples of lr "
                                        "(default 0.5,1,2,4; dln 0.01,0.1,1,10,30)", sequence=True)
    ics_layers: tuple[int, ...] | str | None = _f(None, "layers for ICS: numbers or 'all' (default 5,10; "
                                                  "dln 9,17)", sequence=True)
    activation_layers: tuple[int, ...] | str | None = _f(None, "layers for activation statistics: numbers or "
                                                         "'all' (default: every layer)", sequence=True)
    noise_in_probes: str = _f("reuse", "noisy_batch probes: reuse the step's noise (reuse) or draw fresh (fresh)")
    bn_identity_tol: float = _f(1e-3, "relative tolerance of the BatchNorm gradient identity check")
    hessian_iters: int = _f(20, "power iterations for the top Hessian eigenvalue probe")

    # Not part of the trial's identity: where and how it runs.
    device: str = _f("auto", "cpu, cuda, cuda:N or auto", identity=False)
    threads: int = _f(0, "torch intra-op threads; 0 = torch's default", identity=False)
    channels_last: bool | None = _f(None, "channels_last memory format for convolutional networks (default: on "
                                          "the CPU, where oneDNN runs it ~25% faster)", identity=False)
    data_root: str | None = _f(None, "data root (default: $BNSWEEP_DATA, then the usual places)", identity=False)

    def resolved(self) -> TrialConfig:
        """Fill the per-architecture defaults and validate; returns a new config."""
        c = dataclasses.replace(self)
        dln, linear = c.arch == "dln", c.arch == "linear"
        if c.dataset is None:
            c.dataset = "gaussian-linear" if dln else "quadratic" if linear else "fashion-mnist"
        if c.batch_size is None:
            c.batch_size = 0 if dln or linear else 128
        if c.etas is None:
            c.etas = (0.01, 0.1, 1.0, 10.0, 30.0) if dln else (0.5, 1.0, 2.0, 4.0)
        if c.ics_layers is None:
            c.ics_layers = (9, 17) if dln else (1,) if linear else (5, 10)
        if c.activation_layers is None:
            c.activation_layers = "all"
        c.validate()
        return c

    def validate(self) -> None:
        def choose(key: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise BnsweepError(f"unknown {key} {value!r}: choose one of {', '.join(map(str, allowed))}")

        choose("arch", self.arch, ARCHS)
        choose("norm", self.norm, NORMS)
        choose("dataset", self.dataset, DATASETS)
        choose("init", self.init, ("glorot", "torch"))
        choose("noise_placement", self.noise_placement, ("after_affine", "before_affine"))
        choose("noise_at_eval", self.noise_at_eval, ("expected", "none"))
        choose("noise_in_probes", self.noise_in_probes, ("reuse", "fresh"))
        for p in self.probes:
            choose("probe", p, PROBES)
        if ((self.arch == "dln") != (self.dataset == "gaussian-linear")
                or (self.arch == "linear") != (self.dataset == "quadratic")):
            raise BnsweepError(f"arch {self.arch!r} cannot train on dataset {self.dataset!r}: dln goes with "
                               "gaussian-linear, linear with quadratic, the image networks with cifar10 or "
                               "fashion-mnist")
        if self.arch == "linear" and self.norm != "none":
            raise BnsweepError(f"arch 'linear' has no hidden layer to normalize: use norm none, not {self.norm!r}")
        if self.dataset != "quadratic" and self.curvature != FIELDS["curvature"].default:
            raise BnsweepError(f"curvature only applies to dataset quadratic, not {self.dataset!r}: leave it at 1")
        positive = {"lr": self.lr, "width": self.width, "steps": self.steps, "eval_every": self.eval_every,
                    "eval_subset": self.eval_subset, "diverge_factor": self.diverge_factor,
                    "bn_eps": self.bn_eps, "groups": self.groups, "curvature": self.curvature}
        for key, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise BnsweepError(f"{key} must be a positive number, got {value!r}")
        non_negative = {"momentum": self.momentum, "weight_decay": self.weight_decay,
                        "batch_size": self.batch_size, "probe_every": self.probe_every,
                        "threads": self.threads, "seed": self.seed, "data_seed": self.data_seed}
        for key, value in non_negative.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise BnsweepError(f"{key} must be a number >= 0, got {value!r}")
        if self.test_subset is not None and not (isinstance(self.test_subset, int) and self.test_subset > 0):
            raise BnsweepError(f"test_subset must be a positive number of test examples, got {self.test_subset!r}")
        if any(not (isinstance(e, int | float) and e > 0) for e in self.etas or ()):
            raise BnsweepError(f"etas must be positive multiples of lr, got {self.etas!r}")
        for key in ("ics_layers", "activation_layers"):
            value = getattr(self, key)
            if isinstance(value, str) and value != "all":
                raise BnsweepError(f"{key} must be layer numbers or 'all', got {value!r}")
            if not isinstance(value, str) and any(not isinstance(i, int) or i < 1 for i in value or ()):
                raise BnsweepError(f"{key} must be layer numbers 1..k or 'all', got {value!r}")

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (not where it ran), JSON-ready. A field added later
        (`omit_default`) is left out while it has its default, so the ids of earlier trials do not change."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("identity", True)
                and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}

    @property
    def trial_id(self) -> str:
        """Readable prefix + hash of the identity: equal configs share an id, so resume can skip them."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.arch}-{self.norm}-lr{self.lr:g}-s{self.seed}-{digest}"


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}


def parse_value(key: str, raw: Any) -> Any:
    """Coerce a raw value (CLI string, YAML scalar or list) to the field's type; BnsweepError if impossible.

    YAML reads `1e-3` as a string, so numbers are parsed from strings too.
    """
    if key not in FIELDS:
        raise BnsweepError(f"unknown option {key!r}: choose one of {', '.join(FIELDS)}")
    f = FIELDS[key]
    hint = str(f.type)
    if raw is None or (isinstance(raw, str) and raw.lower() in ("null", "")):  # "none" is a norm variant
        if "None" in hint:
            return None
        raise BnsweepError(f"{key} needs a value")
    if f.metadata.get("sequence"):
        if isinstance(raw, str) and raw == "all" and "str" in hint:
            return "all"
        items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
        elem = float if "float" in hint else int if "int" in hint else str
        return tuple(_scalar(key, elem, item) for item in items if str(item).strip() != "")
    if hint.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).lower() in ("0", "false", "no", "off"):
            return False
        raise BnsweepError(f"{key} must be true or false, got {raw!r}")
    if hint.startswith("int"):
        return _scalar(key, int, raw)
    if hint.startswith("float"):
        return _scalar(key, float, raw)
    return str(raw)


def _scalar(key: str, kind: type, raw: Any) -> Any:
    if isinstance(raw, bool):
        raise BnsweepError(f"{key} must be a number, got {raw!r}")
    try:
        value = float(str(raw).strip())
    except ValueError:
        if kind is str:
            return str(raw).strip()
        raise BnsweepError(f"{key} must be a number, got {raw!r}") from None
    if kind is int:
        if not value.is_integer():
            raise BnsweepError(f"{key} must be a whole number, got {raw!r}")
        return int(value)
    return value if kind is float else str(raw).strip()


def make_config(values: dict[str, Any]) -> TrialConfig:
    """Build a resolved config from raw key/values (CLI, sweep file, --set)."""
    return TrialConfig(**{k: parse_value(k, v) for k, v in values.items()}).resolved()
