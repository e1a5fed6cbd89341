"""One trial's configuration: every knob, its default, its validation and the trial's identity.

The same field names are the `bnsweep trial` options, the keys of a sweep file and the columns of the
`trials` table, so a value means one thing everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bnsweep import variants
from bnsweep.errors import BnsweepError
from bnsweep.rules import Choice, Device, Directory, Flag, Items, Nullable, Number, Rule, check, show

ARCHS = ("vgg11", "vgg13", "vgg16", "mlp", "dln", "linear", "resnet20", "resnet56")
# The variants, which networks each fits (NETWORKS) and their own options come from bnsweep/variants.py.
NORMS = variants.NAMES
RESNETS = ("resnet20", "resnet56")
RESIDUAL_NORMS = variants.applying_to(variants.RESIDUAL)
CONV_ARCHS = ("vgg11", "vgg13", "vgg16", *RESNETS)
CONV_NORMS = variants.applying_to(variants.CONVOLUTIONAL)
NETWORKS = {variants.ALL: ARCHS, variants.CONVOLUTIONAL: CONV_ARCHS, variants.RESIDUAL: RESNETS}
HOLD_FIXED = ("steps", "examples")
NF_ALPHA = variants.option_default("nf_alpha")  # nf's residual scale, where a model is built without a config
DATASETS = ("cifar10", "fashion-mnist", "gaussian-linear", "quadratic")
PROBES = ("landscape", "ics", "activations", "bn_identity", "layer_norms", "hessian", "random_direction", "sharpness",
          "scale_invariance", "spectrum")
DEFAULT_PROBES = ("landscape", "ics", "activations", "bn_identity", "layer_norms")

# Sizes that are fixed by the architecture or the data set, known before either is built (tests/test_hostile.py
# checks them against bnsweep.models and bnsweep.data): a batch larger than the training set, or a layer number
# the network lacks, is refused where it is written, not in a Ray worker.
TRAIN_EXAMPLES = {"cifar10": 50_000, "fashion-mnist": 60_000, "gaussian-linear": 1_000, "quadratic": 64}
# Weight layers per architecture (the MLP at its default depth).
NUM_LAYERS = {"vgg11": 11, "vgg13": 13, "vgg16": 16, "mlp": 4, "dln": 25, "linear": 1, "resnet20": 20,
              "resnet56": 56}
# The default ICS layers: VGG's #5 and #10 (the paper's figure), a middle and the last hidden layer of the MLP and
# DLN, the last convolution of the first and of the second stage of a ResNet.
DEFAULT_ICS_LAYERS = {"vgg11": (5, 10), "vgg13": (5, 10), "vgg16": (5, 10), "mlp": (2, 3), "dln": (9, 17),
                      "linear": (1,), "resnet20": (7, 13), "resnet56": (19, 37)}

# Upper bounds of counts and sizes: far above any sensible trial, far below what exhausts memory or overflows.
MAX_STEPS = 10_000_000
MAX_SEED = 2**63 - 1  # torch generators take seeds below 2**64; int64 columns hold up to 2**63 - 1
MAX_THREADS = 1024
MAX_WIDTH = 8.0  # VGG at width 8: 4096 channels per layer
MAX_LAYER = 1000
MAX_TRIALS = 10_000  # trials of one sweep (a search: cells x budget)
MAX_DEPTH = 200  # MLP weight layers: Yang et al.'s untrainable BatchNorm depths are ~50
LOSSES = ("cross_entropy", "mse")
PRECISIONS = ("fp32", "tf32", "bf16")  # the training step's; bnsweep/numerics.py says what each sets


def _f(default: Any, help: str, valid: Rule, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, "valid": valid, **kw})


def _n(kind: type, low: float, high: float, low_open: bool = False) -> Number:
    return Number(kind, low, high, low_open)


@dataclass
class TrialConfig:
    """Everything that defines one trial. `None` means "the paper's default for this architecture".

    Each field's `valid` rule is its valid range, checked wherever a value enters (check_field)."""

    # What is trained.
    arch: str = _f("vgg11", "network: " + ", ".join(ARCHS), Choice(ARCHS))
    width: float = _f(1.0, "channel/unit width multiplier (VGG, ResNet, MLP)", _n(float, 0, MAX_WIDTH, True))
    depth: int | None = _f(None, "mlp: number of weight layers (hidden layers + the output layer; default 4)",
                           Nullable(_n(int, 2, MAX_DEPTH)), omit_default=True)
    norm: str = _f("batch", "normalization variant: " + ", ".join(NORMS), Choice(NORMS))
    dataset: str | None = _f(None, "data set: " + ", ".join(DATASETS) + " (default: fashion-mnist; "
                             "gaussian-linear for dln, quadratic for linear)", Nullable(Choice(DATASETS)))
    curvature: float = _f(1.0, "quadratic: top eigenvalue of the loss's Hessian (full-batch GD diverges above "
                               "2/curvature)", _n(float, 0, 1e6, True), omit_default=True)
    # How it is trained (protocol.md §1: plain SGD, fixed LR, batch 128, no augmentation).
    lr: float = _f(0.1, "learning rate (fixed, no schedule)", _n(float, 0, 1e6, True))
    steps: int = _f(1000, "number of optimizer steps (with hold_fixed=examples: derived from examples and the "
                          "batch size)", _n(int, 1, MAX_STEPS))
    batch_size: int | None = _f(None, "minibatch size, at most the training set's size; 0 = full batch (default: "
                                      "128; full batch for dln and linear)", Nullable(_n(int, 0, 1_000_000)))
    train_subset: int | None = _f(None, "train on a fixed subset of this many training examples (drawn with "
                                        "--data-seed); with --batch-size 0, full-batch gradient descent on it",
                                  Nullable(_n(int, 1, 1_000_000)), omit_default=True)
    ghost_batch: int | None = _f(None, "split each batch into ghost batches of this size: normalization statistics per "
                                       "ghost batch, gradients summed over them (the full-batch gradient); must "
                                       "divide the batch size", Nullable(_n(int, 1, 1_000_000)), omit_default=True)
    loss: str = _f("cross_entropy", "classification loss: cross_entropy or mse (half the squared error against "
                                    "one-hot targets, summed over classes, mean over examples)",
                   Choice(LOSSES), omit_default=True)
    hold_fixed: str = _f("steps", "what stays fixed when the batch size changes: steps, or examples (the training "
                                  "examples seen; steps = ceil(examples / batch size))", Choice(HOLD_FIXED),
                         omit_default=True)
    examples: int | None = _f(None, "hold_fixed=examples: the budget of training examples (epochs x training set)",
                              Nullable(_n(int, 1, MAX_STEPS * 1000)), omit_default=True)
    momentum: float = _f(0.0, "SGD momentum (the paper used none)", _n(float, 0, 1))
    weight_decay: float = _f(0.0, "SGD weight decay (the paper used none)", _n(float, 0, 1))
    seed: int = _f(0, "initialization, batch-order and noise seed", _n(int, 0, MAX_SEED))
    data_seed: int = _f(0, "seed of generated data (gaussian-linear's A and x, quadratic's X and y), "
                           "separate from --seed", _n(int, 0, MAX_SEED))
    init: str = _f("glorot", "weight initialization: glorot (the paper's) or torch", Choice(("glorot", "torch")))
    augment: bool = _f(False, "random crop + flip on the device (the paper used none)", Flag())
    # Normalization constants (protocol.md §2 for the noise).
    bn_eps: float = _f(1e-5, "epsilon of every normalization", _n(float, 0, 1, True))
    bn_momentum: float = _f(0.1, "running-statistics momentum (torch convention)", _n(float, 0, 1))
    noise_mu: float = _f(0.5, "noisy_batch: per-unit shift mean ~ U(-noise_mu, noise_mu)", _n(float, 0, 100))
    noise_sigma: float = _f(1.25, "noisy_batch: per-unit scale mean ~ U(1, noise_sigma)", _n(float, 1, 100))
    noise_r_mu: float = _f(0.1, "noisy_batch: per-element shift ~ U(mu - r, mu + r)", _n(float, 0, 100))
    noise_r_sigma: float = _f(0.1, "noisy_batch: per-element scale ~ N(sigma, r) (r is a std)", _n(float, 0, 100))
    noise_placement: str = _f("after_affine", "noisy_batch: after_affine (default) or before_affine",
                              Choice(("after_affine", "before_affine")))
    noise_at_eval: str = _f("expected", "noisy_batch in eval mode: expected (noise replaced by its mean, as "
                            "dropout) or none", Choice(("expected", "none")))
    groups: int = _f(32, "group norm (group, ws_group): number of groups (largest divisor of C not above it)",
                     _n(int, 1, 4096))
    # Normalizer-free ResNets (Brock et al. 2021a, b): both only apply to norm nf, and are filled in for it.
    nf_alpha: float | None = _f(None, "nf: residual branch scale alpha, h + alpha f(h / beta) (default 0.2, the "
                                      "authors' code)", Nullable(_n(float, 0, 10, True)), omit_default=True)
    agc_clip: float | None = _f(None, "nf: adaptive gradient clipping threshold lambda, unit-wise |G|/max(|W|, "
                                      "1e-3) (default 0.01, the authors' code; 0 = no clipping)",
                                Nullable(_n(float, 0, 100)), omit_default=True)
    fixup_scalar_lr: float | None = _f(None, "fixup: learning rate of the scalar biases and multipliers and of the "
                                             "head's bias, as a multiple of lr (default 0.1, the authors' code)",
                                       Nullable(_n(float, 0, 10)), omit_default=True)
    # What is measured.
    eval_every: int = _f(250, "evaluate on a training subset and the test set every N steps (and at the end)",
                         _n(int, 1, MAX_STEPS))
    eval_subset: int = _f(10000, "size of the fixed training subset used for evaluation", _n(int, 1, 1_000_000))
    test_subset: int | None = _f(None, "size of a fixed subset of the test set used for evaluation "
                                       "(default: the whole test set)", Nullable(_n(int, 1, 1_000_000)),
                                 omit_default=True)
    # Outcome rules (recorded with every trial).
    diverge_factor: float = _f(10.0, "diverged: a non-finite minibatch loss or one above this multiple of "
                                    "the initial loss", _n(float, 0, 1e12, True))
    trained_acc: float = _f(0.5, "trained (classification): final training-subset accuracy at least this",
                            _n(float, 0, 1))
    trained_loss_fraction: float = _f(0.1, "trained (regression): final loss below this fraction of the "
                                           "initial loss", _n(float, 0, 1))
    # Probes (protocol.md §3, §4).
    probe_every: int = _f(100, "probe the landscape, ICS, activations every N steps; 0 switches probes off",
                          _n(int, 0, MAX_STEPS))
    probes: tuple[str, ...] = _f(DEFAULT_PROBES, "probes to run: " + ", ".join(PROBES), Items(Choice(PROBES)),
                                 sequence=True)
    etas: tuple[float, ...] | None = _f(None, "landscape step sizes as multiples of lr "
                                        "(default 0.5,1,2,4; dln 0.01,0.1,1,10,30)",
                                        Nullable(Items(_n(float, 0, 1e6, True))), sequence=True)
    ics_layers: tuple[int, ...] | str | None = _f(None, "layers for ICS: numbers or 'all' (default 5,10; "
                                                  "mlp 2,3; dln 9,17)",
                                                  Nullable(Items(_n(int, 1, MAX_LAYER), all_allowed=True)),
                                                  sequence=True)
    activation_layers: tuple[int, ...] | str | None = _f(None, "layers for activation statistics: numbers or "
                                                         "'all' (default: every layer)",
                                                         Nullable(Items(_n(int, 1, MAX_LAYER), all_allowed=True)),
                                                         sequence=True)
    noise_in_probes: str = _f("reuse", "noisy_batch probes: reuse the step's noise (reuse) or draw fresh (fresh)",
                              Choice(("reuse", "fresh")))
    bn_identity_tol: float = _f(1e-3, "relative tolerance of the BatchNorm gradient identity check",
                                _n(float, 0, 1, True))
    hessian_iters: int = _f(20, "power iterations for the top Hessian eigenvalue probe", _n(int, 1, 10_000))
    sharpness_iters: int = _f(20, "Lanczos iterations (Hessian-vector products) of the sharpness probe",
                              _n(int, 1, 1000), omit_default=True)
    batch_sharpness_batches: int = _f(4, "sharpness probe: minibatches of the step's size (the step's own first, then "
                                         "draws from the training examples) whose batch sharpness g'Hg/|g|^2 is "
                                         "averaged (full batch: the step's batch alone)", _n(int, 1, 1000),
                                      omit_default=True)
    full_batch_sharpness: bool = _f(False, "sharpness probe under SGD: also the top Hessian eigenvalue of the whole "
                                           "training subset's loss (column full_batch_sharpness, beside batch "
                                           "sharpness, as Andreyev & Beneventano 2024 measure it); needs "
                                           "--train-subset", Flag(), omit_default=True)
    # The spectrum probe (bnsweep/curvature.py). Its default cadence keeps it under 10% of training: at the
    # defaults it costs (1 + 11 layers) x (slq_runs x slq_iters + hutchinson_samples - slq_runs) = 276
    # Hessian-vector products on the cpu VGG-11 (width 0.25, batch 128), each at most ~6 training steps (double
    # backward: 0.43 s, timed once on a loaded 2-core machine, against 70 ms a step idle in bnsweep/bench/probes.py),
    # so ~1700 steps' worth: every 20000 steps is 8.3% (bench probes' 300-step trial never reaches it).
    spectrum_every: int = _f(20000, "spectrum probe: take the spectrum every N steps (from spectrum_start), "
                                    "on the trial's probe machinery (off with probe_every 0); default 20000 keeps "
                                    "it under 10% of training at the default sizes", _n(int, 1, MAX_STEPS),
                             omit_default=True)
    spectrum_start: int | None = _f(None, "spectrum probe: the first step probed (default: spectrum_every; 0 for "
                                          "the initial network)", Nullable(_n(int, 0, MAX_STEPS)),
                                    omit_default=True)
    spectrum_k: int = _f(5, "spectrum probe: how many top eigenvalues (at most slq_iters)", _n(int, 1, 1000),
                         omit_default=True)
    slq_runs: int = _f(1, "spectrum probe: stochastic Lanczos quadrature runs (Rademacher start vectors)",
                       _n(int, 1, 1000), omit_default=True)
    slq_iters: int = _f(20, "spectrum probe: Lanczos steps (Hessian-vector products) per SLQ run", _n(int, 1, 10_000),
                        omit_default=True)
    hutchinson_samples: int = _f(4, "spectrum probe: Rademacher samples of the trace (the SLQ runs' start vectors "
                                    "count; each further one is one Hessian-vector product)", _n(int, 1, 100_000),
                                 omit_default=True)
    spectrum_layers: tuple[int, ...] | str = _f("all", "spectrum probe: blocks: 0 (the whole network) and weight "
                                                       "layer numbers, or 'all' (the whole network and every layer)",
                                                Items(_n(int, 0, MAX_LAYER), all_allowed=True), sequence=True,
                                                omit_default=True)

    # The training step's numerics (bnsweep/numerics.py); probes and evaluations always measure in full fp32.
    precision: str = _f("fp32", "the training step's precision: fp32 (TF32 off: the paper's protocol), tf32 (TF32 "
                                "matmuls and convolutions on Ampere+ GPUs) or bf16 (autocast); probes and "
                                "evaluations run in full fp32 whatever it is", Choice(PRECISIONS), omit_default=True)

    # Not part of the trial's identity: where and how it runs.
    deterministic: bool = _f(False, "deterministic algorithms (torch.use_deterministic_algorithms, cudnn."
                                    "deterministic, CUBLAS_WORKSPACE_CONFIG=:4096:8): bit-identical reruns on one GPU, "
                                    "slower",
                             Flag(), identity=False)
    device: str = _f("auto", "cpu, cuda, cuda:N or auto", Device(), identity=False)
    threads: int = _f(0, "torch intra-op threads; 0 = torch's default", _n(int, 0, MAX_THREADS), identity=False)
    channels_last: bool | None = _f(None, "channels_last memory format for convolutional networks (default: on "
                                          "the CPU, where oneDNN runs it ~25% faster)", Nullable(Flag()),
                                    identity=False)
    data_root: str | None = _f(None, "data root, an existing directory (default: $BNSWEEP_DATA, then the usual "
                                     "places)", Nullable(Directory()), identity=False)

    def resolved(self, labels: Mapping[str, str] | None = None) -> TrialConfig:
        """Fill the per-architecture defaults and validate; returns a new config. `labels` name the keys in
        messages as the user wrote them (--batch-size, grids.vgg.batch_size)."""
        c = dataclasses.replace(self)
        dln, linear = c.arch == "dln", c.arch == "linear"
        if c.dataset is None:
            c.dataset = "gaussian-linear" if dln else "quadratic" if linear else "fashion-mnist"
        if c.batch_size is None:
            c.batch_size = 0 if dln or linear else 128
        if c.etas is None:
            c.etas = (0.01, 0.1, 1.0, 10.0, 30.0) if dln else (0.5, 1.0, 2.0, 4.0)
        if c.ics_layers is None:
            c.ics_layers = default_ics_layers(c.arch, c.depth)
        if c.activation_layers is None:
            c.activation_layers = "all"
        for key, (norm, default) in variants.OPTIONS.items():  # the variant's own options, at their defaults
            if c.norm == norm and getattr(c, key) is None:
                setattr(c, key, default)
        if c.hold_fixed == "examples" and c.examples is not None:
            derived = -(-c.examples // effective_batch(c))  # at least the budget: the last batch may overshoot
            if c.steps not in (FIELDS["steps"].default, derived):
                raise BnsweepError(f"{(labels or {}).get('steps', 'steps')}={c.steps}: with hold_fixed=examples the "
                                   f"steps follow from examples / batch size ({derived} here): leave steps out")
            c.steps = derived
        c.validate(labels)
        return c

    def validate(self, labels: Mapping[str, str] | None = None) -> None:
        """Every field in its valid range, then the rules between fields (arch and data set, batch and data set
        size, layers and architecture). BnsweepError names the first bad value."""
        labels = labels or {}
        for f in dataclasses.fields(self):
            check_field(f.name, getattr(self, f.name), labels.get(f.name))
        for problem in _cross_field_problems(self):
            key, text = problem
            raise BnsweepError(f"{labels.get(key, key)}={show(getattr(self, key))}: {text}")

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (not where it ran), JSON-ready. A field added later
        (`omit_default`) is left out while it has its default, so the ids of earlier trials do not change."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("identity", True)
                and not (f.metadata.get("omit_default") and getattr(self, f.name) == f.default)}

    def runtime(self) -> dict[str, Any]:
        """The fields that say where and how the trial runs, not what it is (device, threads, ...)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.metadata.get("identity", True)}

    @property
    def trial_id(self) -> str:
        """Readable prefix + hash of the identity: equal configs share an id, so resume can skip them."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.arch}-{self.norm}-lr{self.lr:g}-s{self.seed}-{digest}"


def stream_seed(seed: int, stream: str) -> int:
    """Independent seeds for the trial's random streams (init, batches, noise, augmentation)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{stream}".encode()).digest()[:8], "little") >> 1


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}


def check_field(key: str, raw: Any, label: str | None = None) -> Any:
    """The valid value of trial option `key` from a raw value (CLI text, YAML scalar or list, Python object).

    The one place a trial option is checked: `bnsweep trial`, sweep files, `--set` and bnsweep.run_sweep all
    come through here. BnsweepError: `<label>=<value>: <what is wrong>; <valid range>`."""
    if key not in FIELDS:
        raise BnsweepError(f"unknown option {show(key)}: choose one of {', '.join(FIELDS)}")
    return check(FIELDS[key].metadata["valid"], raw, label or key)


def parse_value(key: str, raw: Any) -> Any:
    """Coerce a raw value to the field's type and range (check_field without a label)."""
    return check_field(key, raw)


def _cross_field_problems(c: TrialConfig) -> list[tuple[str, str]]:
    """(key, what is wrong; how to fix) for each rule between fields that `c` breaks, in a fixed order."""
    out = []
    if ((c.arch == "dln") != (c.dataset == "gaussian-linear")
            or (c.arch == "linear") != (c.dataset == "quadratic")):
        out.append(("dataset", f"arch {c.arch!r} cannot train on it: dln goes with gaussian-linear, linear with "
                               "quadratic, the image networks with cifar10 or fashion-mnist"))
    if c.arch == "linear" and c.norm != "none":
        out.append(("norm", "arch 'linear' has no hidden layer to normalize: use norm none"))
    if norm_problem(c.arch, c.norm):
        out.append(("norm", norm_problem(c.arch, c.norm)))
    for key, (norm, _) in variants.OPTIONS.items():
        if c.norm != norm and getattr(c, key) is not None:
            out.append((key, f"{key} only applies to norm {norm}, not {c.norm!r}: leave it out"))
    if c.hold_fixed == "examples" and c.examples is None:
        out.append(("examples", "hold_fixed=examples needs the budget of training examples: set examples "
                                "(steps are then examples / batch size)"))
    if c.hold_fixed == "steps" and c.examples is not None:
        out.append(("examples", "examples only applies with hold_fixed=examples: set that, or leave examples out"))
    if c.dataset != "quadratic" and c.curvature != FIELDS["curvature"].default:
        out.append(("curvature", f"curvature only applies to dataset quadratic, not {c.dataset!r}: leave it at 1"))
    if c.depth is not None and c.arch != "mlp":
        out.append(("depth", f"depth only applies to arch mlp, not {c.arch!r}: leave it unset"))
    if c.loss != "cross_entropy" and c.dataset not in ("cifar10", "fashion-mnist"):
        out.append(("loss", f"loss applies to classification (cifar10, fashion-mnist); {c.dataset} is a regression "
                            "task with the summed squared error already: leave it at cross_entropy"))
    examples = TRAIN_EXAMPLES.get(c.dataset or "")
    if examples is not None and c.train_subset is not None and c.train_subset > examples:
        out.append(("train_subset", f"larger than the {examples} training examples of {c.dataset}; use 1 to "
                                    f"{examples}"))
    elif c.train_subset is not None:
        examples = c.train_subset
    if examples is not None and c.batch_size is not None and c.batch_size > examples:
        out.append(("batch_size", f"larger than the {examples} training examples of {c.dataset}"
                                  f"{' (its --train-subset)' if c.train_subset else ''}; use 1 to {examples}, or 0 "
                                  "for full batch"))
    batch = c.batch_size or examples
    if c.ghost_batch is not None and batch is not None and batch % c.ghost_batch:
        out.append(("ghost_batch", f"does not divide the batch of {batch} examples: pick a divisor of it, so every "
                                   "ghost batch has the same size"))
    for key in ("ics_layers", "activation_layers"):
        problem = layer_problem(c.arch, getattr(c, key), c.depth)
        if problem:
            out.append((key, problem))
    spectrum_layers = c.spectrum_layers if c.spectrum_layers == "all" else tuple(i for i in c.spectrum_layers if i)
    if spectrum_layers and layer_problem(c.arch, spectrum_layers, c.depth):
        out.append(("spectrum_layers", layer_problem(c.arch, spectrum_layers, c.depth) + " (0: the whole network)"))
    if c.full_batch_sharpness and c.train_subset is None:
        out.append(("full_batch_sharpness", "takes the Hessian of the whole training set at every probe: set "
                                            "--train-subset N (a few thousand examples)"))
    if c.full_batch_sharpness and c.norm == "noisy_batch":
        out.append(("full_batch_sharpness", "needs the step's noise on other examples, which noisy_batch does not "
                                            "have: leave it off"))
    if c.spectrum_k > c.slq_iters:
        out.append(("spectrum_k", f"more top eigenvalues than the {c.slq_iters} Lanczos steps (slq_iters) give: use "
                                  f"at most {c.slq_iters}, or raise slq_iters"))
    return out


def norm_problem(arch: str, norm: str) -> str | None:
    """Why variant `norm` does not apply to `arch` (and which networks it needs), or None when it does."""
    variant = variants.BY_NAME.get(norm)
    if variant is None or arch in NETWORKS[variant.applies_to]:
        return None
    archs = NETWORKS[variant.applies_to]
    if variant.applies_to == variants.RESIDUAL:
        return f"{norm} {variant.needs}: it needs a residual network ({' or '.join(archs)}), not {arch}"
    return f"{norm} {variant.needs}: it needs a {variant.applies_to} network ({', '.join(archs)}), not {arch}"


def effective_batch(c: TrialConfig) -> int:
    """Examples per step: the batch size, or the whole training set for full batch (0)."""
    return c.batch_size or TRAIN_EXAMPLES.get(c.dataset or "", 1)


def num_layers(arch: str, depth: int | None = None) -> int | None:
    """Weight layers of `arch` (the MLP's at `depth`), or None for an architecture this table does not know."""
    return depth if arch == "mlp" and depth is not None else NUM_LAYERS.get(arch)


def default_ics_layers(arch: str, depth: int | None = None) -> tuple[int, ...]:
    """VGG's #5 and #10, the DLN's #9 and #17; the MLP's middle and last hidden layer (2, 3 at depth 4)."""
    if arch == "mlp" and depth is not None:
        return tuple(sorted({max(1, depth // 2), max(1, depth - 1)}))
    return DEFAULT_ICS_LAYERS.get(arch, (1,))


def layer_problem(arch: str, layers: tuple[int, ...] | str | None, depth: int | None = None) -> str | None:
    """Why `layers` do not exist in `arch` (and how to fix it), or None when they do."""
    count = num_layers(arch, depth)
    if count is None or layers is None or layers == "all":
        return None
    missing = [i for i in layers if not 1 <= i <= count]
    if not missing:
        return None
    default = ",".join(map(str, default_ics_layers(arch, depth)))
    return (f"layer #{missing[0]} does not exist in {arch}: layers are numbered 1..{count}; pick layers in "
            f"1..{count} or 'all' (the default ICS layers of {arch} are {default})")


def make_config(values: dict[str, Any], labels: Mapping[str, str] | None = None) -> TrialConfig:
    """Build a resolved config from raw key/values (CLI, sweep file, --set); `labels` name the keys in messages."""
    labels = labels or {}
    parsed = {k: check_field(k, v, labels.get(k)) for k, v in values.items()}
    return TrialConfig(**parsed).resolved(labels)


# The valid ranges of a sweep's run options (its top level, scale blocks and --set), its `resources` and its
# `search` block: the same rules as the trial options, in the same one-line messages.
RUN_RULES: dict[str, Rule] = {
    "seeds": _n(int, 1, 10_000), "threads": _n(int, 0, MAX_THREADS), "checkpoint_every": _n(int, 0, MAX_STEPS),
    "report_every": _n(int, 1, MAX_STEPS), "max_failures": _n(int, 0, 100),
}
RESOURCE_RULES: dict[str, Rule] = {"cpu": _n(float, 0, 1024), "gpu": _n(float, 0, 64)}
SEARCH_RULES: dict[str, Rule] = {
    "ratio": _n(float, 1, 100, True), "budget": _n(int, 1, 1000), "points_per_round": _n(int, 1, 100),
    "extend": _n(float, 1, 1000, True),
}
RUN_ARG_RULES: dict[str, Rule] = {"num_cpus": _n(int, 1, 100_000)}

