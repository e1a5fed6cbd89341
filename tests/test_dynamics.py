"""The dynamics probes against closed forms: Lanczos on a quadratic of known spectrum, the scale-invariance
identities of a small float64 network (exact for eps = 0, up to the derived eps terms for eps > 0), full-batch
gradient descent over ghost batches, the squared loss, and the growth-factor fit."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.dynamics import growth_factor
from bnsweep import dynamics, ghost
from bnsweep import probes as P
from bnsweep.config import make_config
from bnsweep.data import Dataset
from bnsweep.errors import BnsweepError
from bnsweep.losses import squared_loss
from bnsweep.models import build_model
from bnsweep.norms import NormOptions
from bnsweep.trial import Trial

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- sharpness


def test_lanczos_top_eigenvalue_of_a_quadratic():
    """L = x'Hx/2 with H of known spectrum (indefinite, a close second eigenvalue): the top and bottom Ritz
    values are the spectrum's extremes; after dim steps Lanczos is exact."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=_gen(1), dtype=torch.float64))
    eig = torch.tensor([10.0, 9.0, 3.0, 1.0, 0.5, 0.1, -0.7, -2.0], dtype=torch.float64)
    h = q @ torch.diag(eig) @ q.T
    spec = dynamics.hessian_spectrum(lambda p: 0.5 * p["x"] @ h @ p["x"], {"x": torch.ones(8, dtype=torch.float64)},
                                     8, _gen(2))
    assert spec.top == pytest.approx(10.0, rel=1e-12) and spec.bottom == pytest.approx(-2.0, rel=1e-12)
    assert spec.residual < 1e-10
    few = dynamics.hessian_spectrum(lambda p: 0.5 * p["x"] @ h @ p["x"], {"x": torch.ones(8, dtype=torch.float64)},
                                    3, _gen(2))
    assert few.top <= 10.0 + 1e-12 and few.steps == 3  # a Ritz value never exceeds the top eigenvalue


def test_sharpness_probe_matches_the_dense_hessian():
    """The probe on a tiny float64 BatchNorm MLP, full batch over two ghost batches: its top and bottom
    eigenvalues are those of the dense Hessian of the same loss (Lanczos run to the parameter count)."""
    model = build_model("mlp", width=1 / 128, depth=3, norm="batch", in_shape=(3,), num_outputs=2,
                        generator=_gen(3)).double()
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    config = make_config({"arch": "mlp", "depth": 3, "norm": "batch", "lr": 0.1, "probe_every": 1,
                          "probes": "sharpness", "sharpness_iters": sum(sizes), "ghost_batch": 6,
                          "batch_size": 12})
    trial = _fake_trial(model, config)
    probes = _probes(trial)
    g = _gen(4)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(2, (12,), generator=g)
    probes.begin(0)
    loss = sum(F.cross_entropy(model(x[i:i + 6]), y[i:i + 6]) * 0.5 for i in (0, 6))
    trial.optimizer.zero_grad()
    loss.backward()
    probes.before_update(0, x, y, loss)
    row = probes.tables()["sharpness"].to_pylist()[0]
    from torch.func import functional_call

    buffers = dict(model.named_buffers())

    def flat_loss(theta):
        params = dict(zip(names, [t.view_as(p) for t, p in zip(theta.split(sizes), model.parameters(),
                                                                   strict=True)], strict=True))
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return sum(F.cross_entropy(functional_call(model, state, (x[i:i + 6],)), y[i:i + 6]) * 0.5 for i in (0, 6))

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, theta))
    assert row["sharpness"] == pytest.approx(float(eig[-1]), rel=1e-8)
    assert row["min_eigenvalue"] == pytest.approx(float(eig[0]), rel=1e-6, abs=1e-8)
    assert row["examples"] == 12 and row["ghost_batch"] == 6 and row["two_over_lr"] == pytest.approx(20.0)


def test_eos_threshold():
    assert dynamics.eos_threshold(0.01) == pytest.approx(200.0)
    assert dynamics.eos_threshold(0.01, momentum=0.9) == pytest.approx(380.0)


# ---------------------------------------------------------------- scale invariance


def _fake_trial(model, config, momentum=0.0, weight_decay=0.0):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=momentum, weight_decay=weight_decay)
    return SimpleNamespace(config=config, model=model, optimizer=opt, params=params, loss_fn=F.cross_entropy,
                           device=torch.device("cpu"), task="classification")


def _probes(trial):
    """The probes of a fake trial, built as Trial._make_probes builds them."""
    return P.Probes(trial.config, trial.model, trial.loss_fn, trial.optimizer, trial.device, trial.task)


# torch's batch_norm refuses eps = 0 in training; in float64, v + 1e-300 == v for any variance here, so every
# normalization computes exactly what it would with eps = 0.
ZERO = 1e-300


def _run(norm, eps, momentum=0.0, weight_decay=0.0, steps=1, lr=0.2):
    """A float64 4-layer MLP with random gammas, `steps` probed SGD steps; the scale_invariance rows."""
    model = build_model("mlp", width=1 / 64, norm=norm, in_shape=(6,), num_outputs=3,
                        norm_options=NormOptions(eps=1e-3, groups=2), generator=_gen(6)).double()
    with torch.no_grad():
        for blk in model.blocks:
            blk.norm.eps = eps  # eps = 0 is outside the options' range but every norm module computes with it
            if getattr(blk.norm, "weight", None) is not None:
                blk.norm.weight.uniform_(0.5, 2.0, generator=_gen(7))
            if blk.layer.bias is not None:
                blk.layer.bias.uniform_(-0.5, 0.5, generator=_gen(8))  # a bias that LayerNorm does not cancel
    config = make_config({"arch": "mlp", "norm": norm, "lr": lr, "momentum": momentum,
                          "weight_decay": weight_decay, "probe_every": 1, "probes": "scale_invariance"})
    trial = _fake_trial(model, config, momentum, weight_decay)
    probes = _probes(trial)
    g = _gen(9)
    x, y = torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(3, (16,), generator=g)
    hand = []
    for t in range(steps):
        probes.begin(t)
        loss = F.cross_entropy(model(x), y)
        trial.optimizer.zero_grad()
        loss.backward()
        w = [torch.cat([b.layer.weight.detach().flatten(), b.layer.bias.detach()]) for b in model.blocks]
        gr = [torch.cat([b.layer.weight.grad.flatten(), b.layer.bias.grad]) for b in model.blocks]
        hand.append((w, gr))
        probes.before_update(t, x, y, loss)
        trial.optimizer.step()
        probes.after_update(t, x, y)
    return probes.tables()["scale_invariance"].to_pandas(), hand, model


@pytest.mark.parametrize("norm", ["batch", "noisy_batch", "layer", "group", "l2_batch", "linf_batch"])
def test_scale_invariance_exact_with_eps_zero(norm):
    """eps = 0, plain SGD: <w, g> = 0 and |w_{t+1}|^2 = |w_t|^2 + lr^2 |g|^2 to float64 precision on every
    layer that feeds a normalization; the output layer (the control) breaks both."""
    rows, hand, _ = _run(norm, ZERO)
    inv, control = rows[rows.scale_invariant], rows[~rows.scale_invariant]
    assert list(inv.layer) == [1, 2, 3] and list(control.layer) == [4] and set(inv.feeds) == {norm}
    assert (inv.inner_pred.abs() < 1e-250).all()
    assert (inv.inner_rel_err < 1e-10).all() and (inv.cos_wg.abs() < 1e-10).all(), inv
    assert (inv.norm_change_rel_err < 1e-10).all() and (inv.norm_sq_rel_err < 1e-12).all(), inv
    w, g = hand[0]
    for i in (1, 2, 3):  # the prediction is the closed form itself
        expected = float(w[i - 1] @ w[i - 1] + 0.2**2 * g[i - 1] @ g[i - 1])
        assert inv[inv.layer == i].norm_sq_next_pred.item() == pytest.approx(expected, rel=1e-14)
    assert (control.inner_rel_err > 1e-3).all() and (control.norm_change_rel_err > 1e-3).all()


@pytest.mark.parametrize("norm", ["batch", "noisy_batch", "layer", "group", "l1_batch", "linf_batch"])
def test_scale_invariance_eps_terms(norm):
    """eps > 0 (large, so it shows): <w, g> is not 0 but equals the derived eps term; the norm change matches
    the prediction that uses it."""
    rows, _, _ = _run(norm, 0.3)
    inv = rows[rows.scale_invariant]
    assert (inv.inner_rel_err < 1e-10).all(), inv
    assert (inv.cos_wg.abs() > 1e-6).any()  # the eps term is not negligible here: 0 would be the wrong prediction
    assert (inv.norm_change_rel_err < 1e-10).all(), inv


@pytest.mark.parametrize("eps", [ZERO, 0.3])
def test_scale_invariance_with_momentum_and_weight_decay(eps):
    """With momentum and weight decay the predicted change uses the momentum buffer and lambda |w|^2; exact over
    three steps (the buffer is not just the gradient after the first)."""
    rows, _, _ = _run("batch", eps, momentum=0.9, weight_decay=0.05, steps=3)
    inv = rows[rows.scale_invariant]
    assert len(inv) == 9 and (inv.norm_change_rel_err < 1e-10).all(), inv
    assert inv.angle_equilibrium.iloc[0] == pytest.approx(math.sqrt(2 * 0.2 * 0.05 / 1.9))


def test_angle():
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert dynamics.angle(w, torch.tensor([-1.0, 1.0], dtype=torch.float64)) == pytest.approx(math.pi / 2)
    assert dynamics.angle(w, torch.tensor([1e-9, 1e-12], dtype=torch.float64)) == pytest.approx(1e-12, rel=1e-6)
    assert math.isnan(dynamics.equilibrium_angle(0.1, 0.9, 0.0))
    assert dynamics.equilibrium_angle(0.1, 0.9, 5e-4) == pytest.approx(7.25e-3, rel=1e-3)  # beyond-2018.md's example


# ---------------------------------------------------------------- full batch, ghost batches, squared loss


def _images(n=64, seed=0):
    g = _gen(seed)
    return Dataset(name="random", task="classification", train_x=torch.randn(n, 1, 8, 8, generator=g),
                   train_y=torch.randint(10, (n,), generator=g), test_x=torch.randn(16, 1, 8, 8, generator=g),
                   test_y=torch.randint(10, (16,), generator=g), num_outputs=10, checksum="random", source="random")


def test_full_batch_over_ghost_batches_is_the_sum_of_their_gradients():
    """--train-subset 32 --batch-size 0 --ghost-batch 8: one step's gradient is the mean loss's over the
    subset with BatchNorm statistics per ghost batch, and the step updates with it."""
    data = _images()
    config = make_config({"arch": "mlp", "width": 1 / 32, "norm": "batch", "lr": 0.1, "steps": 1, "batch_size": 0,
                          "train_subset": 32, "ghost_batch": 8, "eval_every": 1, "eval_subset": 16,
                          "probe_every": 0, "device": "cpu", "loss": "mse"})
    trial = Trial(config, data)
    assert trial.sampler.batch_size == 32 and trial.train_index.shape == (32,)
    assert set(trial.eval_index.tolist()) <= set(trial.train_index.tolist())  # evaluations read the subset
    model = build_model("mlp", width=1 / 32, norm="batch", in_shape=(1, 8, 8), num_outputs=10, generator=None)
    model.load_state_dict(trial.model.state_dict())
    x, y = data.train_x[trial.train_index], data.train_y[trial.train_index]
    loss = sum(squared_loss(model(x[i:i + 8]), y[i:i + 8]) * 0.25 for i in range(0, 32, 8))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    trial.run()
    for p, p_new, gr in zip(model.parameters(), trial.model.parameters(), grads, strict=True):
        torch.testing.assert_close(p_new.detach(), p.detach() - 0.1 * gr, rtol=1e-5, atol=1e-7)
    assert float(trial.history[0, 0]) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_chunked_loss_without_ghost_batches_is_the_plain_loss():
    x, y = torch.randn(6, 3, generator=_gen(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    assert ghost.chunks(6, None) == [slice(0, 6)] and ghost.chunks(6, 4) == [slice(0, 4), slice(4, 6)]
    assert torch.equal(ghost.chunked_loss(lambda v: v, F.cross_entropy, x, y, None, False), F.cross_entropy(x, y))
    assert ghost.chunked_loss(lambda v: v, F.cross_entropy, x, y, 3, False).item() == pytest.approx(
        F.cross_entropy(x, y).item(), rel=1e-6)


def test_squared_loss():
    out = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    assert squared_loss(out, y).item() == pytest.approx((0.125 + 0.5) / 2)
    assert squared_loss(out, y, reduction="sum").item() == pytest.approx(0.625)


@pytest.mark.parametrize("values, word", [
    ({"batch_size": 0, "train_subset": 1000, "ghost_batch": 300}, "ghost_batch"),
    ({"batch_size": 128, "ghost_batch": 48}, "ghost_batch"),
    ({"train_subset": 100, "batch_size": 128}, "batch_size"),
    ({"arch": "vgg11", "depth": 8}, "depth"),
    ({"arch": "dln", "loss": "mse"}, "loss"),
    ({"depth": 6, "ics_layers": "7"}, "ics_layers"),
])
def test_config_rules(values, word):
    with pytest.raises(BnsweepError, match=word):
        make_config({"arch": "mlp", **values})


def test_mlp_depth():
    config = make_config({"arch": "mlp", "depth": 50})
    assert config.ics_layers == (25, 49)
    model = build_model("mlp", width=1 / 64, norm="batch", in_shape=(4,), num_outputs=2, depth=50)
    assert model.num_layers == 50
    assert make_config({"arch": "mlp"}).trial_id == make_config({"arch": "mlp", "depth": None}).trial_id


# ---------------------------------------------------------------- growth factor at initialization


def test_growth_factor_of_a_geometric_sequence():
    """|dL/dW_l| = c r^(L - l): the fitted factor per layer towards the input is r, exactly."""
    layers = np.arange(1, 21)
    for r in (1.21, 1.0, 0.8):
        fit = growth_factor(layers, 3.0 * r ** (20 - layers))
        assert fit["factor"] == pytest.approx(r, rel=1e-12) and fit["layers"] == 20
        assert r == 1.0 or fit["r2"] == pytest.approx(1.0)
    noisy = 2.0 * 1.3 ** (20 - layers) * np.exp(np.random.default_rng(0).normal(0, 0.05, 20))
    assert growth_factor(layers, noisy)["factor"] == pytest.approx(1.3, rel=0.02)
    assert math.isnan(growth_factor([1], [1.0])["factor"])


# ---------------------------------------------------------------- analysis: C10..C12 and the figures


def test_eos_course():
    """Progressive sharpening to the limit then a hover; a catapult start is judged from its first probe below."""
    from analysis.dynamics import eos_course

    steps = [0, 50, 100, 150, 200, 250, 300]
    rising = eos_course(steps, [8, 19, 30, 39.5, 40.5, 39, 41], limit=40.0)
    assert not rising["starts_above"] and rising["reached_step"] == 150 and rising["sharpening"] == 1.0
    assert rising["median_ratio"] == pytest.approx(1.0)  # median of 39.5, 40.5, 39, 41 over 40
    catapult = eos_course(steps, [300, 30, 35, 38, 40, 41, 40], limit=40.0)
    assert catapult["starts_above"] and catapult["start_step"] == 50 and catapult["reached_step"] == 150
    never = eos_course(steps, [8, 10, 12, 14, 15, 16, 17], limit=40.0)
    assert math.isnan(never["reached_step"]) and never["sharpening"] == 1.0
    at_once = eos_course(steps, [120, 100, 99, 101, 100, 98, 100], limit=100.0)
    assert at_once["reached_step"] == 0 and math.isnan(at_once["sharpening"])


def _eos_trial(root, norm: str, sharpness: list[float], train_acc: dict[int, float], loss: str = "cross_entropy",
               lr: float = 0.05, residual: float | list[float] = 1e-3, batch_size: int = 0) -> str:
    """A finished full-batch trial in the real layout: a sharpness probe every 50 steps (2/lr = 40 at lr 0.05) and
    the training accuracy at the given evaluation steps."""
    import pyarrow as pa

    from bnsweep import records
    from bnsweep.records import trials_table
    from bnsweep.schema import CURVES_SCHEMA, PROBE_SCHEMAS

    config = make_config({"arch": "mlp", "norm": norm, "lr": lr, "loss": loss, "batch_size": batch_size,
                          "train_subset": 64, "steps": 50 * (len(sharpness) - 1), "probes": "sharpness",
                          "probe_every": 50})
    residuals = residual if isinstance(residual, list) else [residual] * len(sharpness)
    rows = [{**dict.fromkeys(PROBE_SCHEMAS["sharpness"].names), "trial_id": config.trial_id, "step": 50 * i,
             "sharpness": s, "residual": r, "iters": 20, "two_over_lr": 2 / lr, "eos_threshold": 2 / lr}
            for i, (s, r) in enumerate(zip(sharpness, residuals, strict=True))]
    curves = [{**dict.fromkeys(CURVES_SCHEMA.names), "trial_id": config.trial_id, "step": step, "loss": 1.0,
               "train_acc": acc} for step, acc in train_acc.items()]
    outcome = {"trial_id": config.trial_id, "status": "completed", "trained": True, "steps_done": config.steps,
               "task": "classification", "initial_loss": 2.3, "final_loss": 0.01, "final_train_acc": 1.0,
               "attempt": 1, "schema_version": records.SCHEMA_VERSION}
    records.write_trial(root, config.trial_id, {
        records.TRIALS: trials_table(config, outcome),
        "sharpness": pa.Table.from_pylist(rows, schema=PROBE_SCHEMAS["sharpness"]),
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA)})
    return config.trial_id


# Progressive sharpening to 2/lr = 40, a hover at it until training accuracy passes 0.99 at step 300, then (under
# cross-entropy) the curvature vanishing with the loss: the old rule took the median over the whole run (0.25 x).
HOVER_THEN_VANISH = [10, 20, 30, 39, 41, 40, 39, 10, 8, 6, 5, 4, 3, 2, 2]
ACC = {0: 0.1, 100: 0.6, 200: 0.9, 300: 0.995, 400: 1.0, 500: 1.0, 600: 1.0, 700: 1.0}


def _c10(root, **thresholds):
    import analysis

    (c10,) = [c for c in analysis.check_claims(analysis.load(root), analysis.Thresholds(**thresholds))
              if c.key == "C10"]
    return c10


def test_c10_is_judged_until_training_accuracy_passes_the_goal(tmp_path, capsys):
    """Cohen et al.'s window: under cross-entropy the probes up to the first evaluation with train_acc > 0.99."""
    _eos_trial(tmp_path, "batch", HOVER_THEN_VANISH, ACC)
    c10 = _c10(tmp_path)
    (case,) = c10.cases
    assert c10.verdict == "supported", c10.summary
    assert case["window_end_step"] == 300 and case["probes_in_window"] == 7
    assert case["median_ratio"] == pytest.approx(1.0, abs=0.03) and "train acc > 0.99" in case["why"]
    # `bnsweep check` prints the goal with the thresholds and records it in claims.json.
    from analysis.commands import check

    check(str(tmp_path))
    assert "eos_acc_goal = 0.99" in capsys.readouterr().out
    assert json.loads((tmp_path / "claims.json").read_text())["thresholds"]["eos_acc_goal"] == 0.99
    # Under the squared loss the window is the whole run: the same course is judged to its end.
    mse = tmp_path / "mse"
    _eos_trial(mse, "batch", HOVER_THEN_VANISH, ACC, loss="mse")
    (case,) = _c10(mse).cases
    assert case["verdict"] == "contradicted" and math.isinf(case["window_end_step"])
    assert case["median_ratio"] < 0.5


def test_fig_edge_of_stability_shades_the_judged_window(tmp_path):
    import analysis
    from analysis.commands import build_all

    _eos_trial(tmp_path, "batch", HOVER_THEN_VANISH, ACC)
    _eos_trial(tmp_path, "batch", HOVER_THEN_VANISH, ACC, loss="mse")
    drawn = {d.figure.name: d for d in build_all(analysis.load(tmp_path), validate=True)}["fig_edge_of_stability"]
    rows = [r for data in drawn.spec["datasets"].values() for r in data if r.get("kind") == "judged window"]
    # Cross-entropy up to the evaluation that passed 0.99 (step 300), the squared loss to its last probe (700).
    assert sorted(r["step_end"] for r in rows) == [300, 700] and all(r["step"] == 0 for r in rows)
    assert '"mark": {"type": "rect"' in json.dumps(drawn.spec).replace("\n", "")


def test_c10_is_contradicted_where_the_sharpness_does_not_hover_at_the_limit(tmp_path):
    """The paper's effect absent: inside the window the sharpness passes 2/lr and keeps rising to 3 x."""
    _eos_trial(tmp_path, "batch", [10, 20, 30, 45, 80, 110, 120, 10, 5], ACC)
    c10 = _c10(tmp_path)
    assert c10.verdict == "contradicted" and c10.cases[0]["median_ratio"] > 2


def test_c10_judges_full_batch_gradient_descent_only(tmp_path):
    """Under minibatch SGD the sharpness probe measures the step's minibatch, and the claim there is C14's: a
    results folder of SGD trials (sgd_eos) holds no C10 case, however the sharpness moves."""
    _eos_trial(tmp_path, "batch", [10, 20, 30, 45, 80, 110, 120, 10, 5], ACC, batch_size=16)
    c10 = _c10(tmp_path)
    assert c10.verdict == "not enough data" and not c10.cases and "C14" in c10.summary
    import analysis
    from analysis.commands import build_all

    assert "fig_edge_of_stability" not in {d.figure.name for d in build_all(analysis.load(tmp_path))}
    _eos_trial(tmp_path, "batch", HOVER_THEN_VANISH, ACC, lr=0.05 * 1.0001)  # a full-batch trial beside it
    c10 = _c10(tmp_path)
    assert c10.verdict == "supported" and len(c10.cases) == 1
    drawn = {d.figure.name: d for d in build_all(analysis.load(tmp_path))}["fig_edge_of_stability"]
    rows = [r for data in drawn.spec["datasets"].values() for r in data if "trial_id" in r]
    assert {r["trial_id"] for r in rows} == {c10.cases[0]["trial_id"]}


def test_c10_needs_probes_with_a_small_residual_inside_the_window(tmp_path):
    # Training accuracy passes 0.99 at step 50: two probes in the window, not enough.
    early = tmp_path / "early"
    _eos_trial(early, "batch", HOVER_THEN_VANISH, {0: 0.1, 50: 0.999})
    c10 = _c10(early)
    assert c10.verdict == "not enough data" and "needs 3" in c10.cases[0]["why"]
    # Unconverged Lanczos probes are not judged, and the line says what to raise.
    loose = tmp_path / "loose"
    _eos_trial(loose, "batch", HOVER_THEN_VANISH, ACC, residual=[1e-3, 1e-3, 0.3, 0.3, 0.3, 0.3, 0.3] + [1e-3] * 8)
    c10 = _c10(loose)
    assert c10.verdict == "not enough data" and "raise sharpness_iters" in c10.cases[0]["why"]
    assert c10.cases[0]["probes_judged"] == 2
    assert _c10(loose, eos_residual_max=0.5).verdict == "supported"


def _tiny_results(root):
    """A few real trials of each dynamics sweep on random images (seconds), written as Parquet."""
    from bnsweep.trial import run_trial

    data = _images(n=96)
    common = {"arch": "mlp", "width": 1 / 32, "device": "cpu", "eval_subset": 32, "lr": 0.1}
    for norm in ("none", "batch"):
        run_trial(make_config({**common, "norm": norm, "steps": 30, "batch_size": 0, "train_subset": 64,
                               "ghost_batch": 32, "loss": "mse", "probes": "sharpness", "probe_every": 5,
                               "sharpness_iters": 5, "eval_every": 30}), root, data=data)
        run_trial(make_config({**common, "norm": norm, "steps": 30, "batch_size": 16, "momentum": 0.9,
                               "weight_decay": 0.01, "probes": "scale_invariance", "probe_every": 5,
                               "eval_every": 30}), root, data=data)
        for depth in (5, 12):
            run_trial(make_config({**common, "norm": norm, "depth": depth, "steps": 2, "batch_size": 16,
                                   "probes": "layer_norms", "probe_every": 2, "eval_every": 2}), root, data=data)


def test_dynamics_claims_and_figures(tmp_path):
    import analysis
    from analysis.commands import build_all

    _tiny_results(tmp_path)
    results = analysis.load(tmp_path)
    claims = {c.key: c for c in analysis.check_claims(results)}
    assert {"C10", "C11", "C12"} <= set(claims)
    c11 = claims["C11"]
    inv = [c for c in c11.cases if c["norm"] == "batch"]
    assert inv and inv[0]["max_inner_rel_err"] < 1e-4  # float32, yet the identity holds to ~1e-7
    c12 = [c for c in claims["C12"].cases if c["norm"] == "batch" and c.get("depth") == 12]
    assert c12 and c12[0]["factor"] > 1.05  # BatchNorm's gradients grow towards the input at initialization
    drawn = {d.figure.name: d for d in build_all(results, validate=True)}
    for name in ("fig_edge_of_stability", "fig_scale_invariance", "fig_gradient_explosion"):
        assert drawn[name].spec is not None, name
    # The legend tells the dashed 2/lr from the sharpness by line pieces, not by the points both lines carry.
    assert '"symbolType": "stroke"' in json.dumps(drawn["fig_edge_of_stability"].spec)
    text = analysis.claims.claims_table(list(claims.values()), analysis.Thresholds())
    assert "eos_band_low" in text and "C12" in text


# ---------------------------------------------------------------- the spectrum (bnsweep/curvature.py)


def _dense_operator(n=12, seed=5):
    """A symmetric matrix with two outliers above a bulk, and its products."""
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.tensor([50.0, 20.0], dtype=torch.float64), torch.rand(n - 2, generator=g,
                                                                               dtype=torch.float64) * 2 - 0.5])
    return q @ torch.diag(eig) @ q.T


def test_lanczos_quadrature_is_gauss_quadrature():
    """m Lanczos steps from q give nodes and weights whose moments are q'H^p q for every p <= 2m - 1: the
    density is a Gauss quadrature rule, exact on every polynomial of that degree."""
    from bnsweep import curvature

    h = _dense_operator()
    start = curvature.rademacher(12, _gen(7), torch.float64, torch.device("cpu"))
    q = start / start.norm()
    m = 4
    quad = curvature.lanczos_quadrature(lambda v: h @ v, start, m)
    assert len(quad.nodes) == m and sum(quad.weights) == pytest.approx(1.0, abs=1e-12)
    assert quad.first == pytest.approx(float(q @ h @ q), rel=1e-12)
    for p in range(2 * m):
        exact = float(q @ torch.linalg.matrix_power(h, p) @ q)
        got = sum(w * x ** p for x, w in zip(quad.nodes, quad.weights, strict=True))
        assert got == pytest.approx(exact, rel=1e-9), p


def test_block_spectrum_of_a_dense_operator():
    """Top-k, bottom, trace and its standard error, the density's moments against tr(H^p)/n, and the outlier
    rule: two outliers above a bulk of ten, seen when the bulk's nodes stand for enough eigenvalues."""
    from bnsweep import curvature

    h = _dense_operator()
    eig = torch.linalg.eigvalsh(h)
    runs = 200
    spec = curvature.block_spectrum(lambda v: h @ v, 12, 3, runs, 12, 400, _gen(9), torch.float64,
                                    torch.device("cpu"))
    assert spec.params == 12
    assert spec.top_eigenvalues == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-9)
    assert spec.bottom == pytest.approx(float(eig[0]), rel=1e-9)
    assert len(spec.slq_nodes) == len(spec.slq_weights) and sum(spec.slq_weights) == pytest.approx(1.0, abs=1e-9)
    for p in (1, 2, 3):  # E[q'H^p q] = tr(H^p)/n; Rademacher z: Var[z'Az] = 2 (|A|_F^2 - sum A_ii^2)
        a = torch.linalg.matrix_power(h, p)
        se = math.sqrt(2 * (float((a ** 2).sum()) - float((a.diagonal() ** 2).sum())) / runs) / 12
        moment = sum(w * x ** p for x, w in zip(spec.slq_nodes, spec.slq_weights, strict=True))
        assert abs(moment - float(a.trace()) / 12) < 4 * se, p
    se = math.sqrt(2 * (float((h ** 2).sum()) - float((h.diagonal() ** 2).sum())) / 400)
    assert abs(spec.trace - float(h.trace())) < 4 * se and spec.trace_se == pytest.approx(se, rel=0.3)
    # Twelve eigenvalues: every node stands for about one, none for ten: no bulk to speak of.
    assert math.isnan(spec.bulk_edge) and spec.outliers is None
    # A bulk of 20000 eigenvalues below the same two outliers: 20 Lanczos steps resolve them, the bulk's nodes
    # (its top one too, whose Gauss weight is the smallest) stand for many eigenvalues each.
    big = torch.cat([torch.tensor([50.0, 20.0], dtype=torch.float64),
                     torch.rand(20000, generator=_gen(3), dtype=torch.float64) * 2 - 0.5])
    spec = curvature.block_spectrum(lambda v: big * v, big.numel(), 4, 2, 20, 2, _gen(4), torch.float64,
                                    torch.device("cpu"))
    assert spec.top_eigenvalues[:2] == pytest.approx([50.0, 20.0], rel=1e-8)
    assert 1.0 < spec.bulk_edge <= 1.5 and spec.outliers == 2
    # Rademacher z: z'Dz = tr(D) for a diagonal D, so every Hutchinson sample is exact.
    assert spec.trace == pytest.approx(float(big.sum()), rel=1e-9) and spec.trace_se == pytest.approx(0.0, abs=1e-6)


def _tiny_bn_mlp():
    return build_model("mlp", width=1 / 128, depth=3, norm="batch", in_shape=(3,), num_outputs=2,
                       generator=_gen(3)).double()


def _dense_hessian(model, x, y, ghost_size):
    """The dense Hessian of the ghost-batched training loss at the model's parameters, and its gradient."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())
    chunks = range(0, x.shape[0], ghost_size)

    def flat_loss(theta):
        params = dict(zip(names, [t.view_as(p) for t, p in zip(theta.split(sizes), model.parameters(),
                                                                   strict=True)], strict=True))
        state = {**params, **{n: b.clone() for n, b in buffers.items()}}
        return sum(F.cross_entropy(functional_call(model, state, (x[i:i + ghost_size],)), y[i:i + ghost_size])
                   * (ghost_size / x.shape[0]) for i in chunks)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return (torch.autograd.functional.hessian(flat_loss, theta),
            torch.autograd.functional.jacobian(flat_loss, theta), names, sizes)


def _probe_step(model, config, x, y, draw_batch=None):
    trial = _fake_trial(model, config)
    probes = P.Probes(trial.config, trial.model, trial.loss_fn, trial.optimizer, trial.device, trial.task,
                      draw_batch=draw_batch)
    assert probes.begin(0)
    loss = sum(F.cross_entropy(model(x[i:i + 6]), y[i:i + 6]) * 0.5 for i in (0, 6))
    trial.optimizer.zero_grad()
    loss.backward()
    probes.before_update(0, x, y, loss)
    return probes.tables()


def test_spectrum_probe_matches_the_dense_hessian():
    """The probe on a tiny float64 BatchNorm MLP, over two ghost batches: per block (the whole network, each
    layer's weight and bias) the top-k and bottom eigenvalues of the dense Hessian restricted to the block, its
    trace within Hutchinson's error, and a density whose first moments match tr(H^p)/n within theirs."""
    model = _tiny_bn_mlp()
    g = _gen(4)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(2, (12,), generator=g)
    hess, _, names, sizes = _dense_hessian(model, x, y, 6)
    n_all = sum(sizes)
    runs, samples = 64, 256
    config = make_config({"arch": "mlp", "depth": 3, "norm": "batch", "lr": 0.1, "probe_every": 1,
                          "probes": "spectrum", "spectrum_every": 1, "spectrum_start": 0, "spectrum_k": 3,
                          "slq_runs": runs, "slq_iters": n_all, "hutchinson_samples": samples,
                          "ghost_batch": 6, "batch_size": 12})
    rows = _probe_step(model, config, x, y)["spectrum"].to_pylist()
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    offsets = dict(zip(names, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
    for r in rows:
        if r["layer"] == 0:
            index = torch.arange(n_all)
            assert r["block"] == "all"
        else:
            block = [n for n in names if n.startswith(r["block"] + ".")]
            assert block and all(n.rsplit(".", 1)[1] in ("weight", "bias") for n in block)
            index = torch.cat([torch.arange(offsets[n], offsets[n] + sizes[names.index(n)]) for n in block])
        h = hess[index][:, index]
        n = index.numel()
        eig = torch.linalg.eigvalsh(h)
        assert r["params"] == n and r["top"] == r["top_eigenvalues"][0]
        assert r["top_eigenvalues"] == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-7, abs=1e-9)
        assert r["bottom"] == pytest.approx(float(eig[0]), rel=1e-7, abs=1e-9)
        se = math.sqrt(2 * (float((h ** 2).sum()) - float((h.diagonal() ** 2).sum())) / samples)
        assert abs(r["trace"] - float(h.trace())) < 4 * se + 1e-12 and r["trace_se"] > 0
        assert sum(r["slq_weights"]) == pytest.approx(1.0, abs=1e-9)
        for p in (1, 2):
            a = torch.linalg.matrix_power(h, p)
            se_p = math.sqrt(2 * (float((a ** 2).sum()) - float((a.diagonal() ** 2).sum())) / runs) / n
            moment = sum(w * v ** p for v, w in zip(r["slq_nodes"], r["slq_weights"], strict=True))
            assert abs(moment - float(a.trace()) / n) < 4 * se_p + 1e-12, (r["layer"], p)
        assert r["two_over_lr"] == pytest.approx(20.0) and r["outlier_rule"].startswith("> bulk_edge")


def test_batch_sharpness_matches_the_dense_hessian():
    """g'Hg/|g|^2 on the step's batch, and with a second minibatch drawn for the probe, the mean of the two
    minibatches' own values with its standard error."""
    model = _tiny_bn_mlp()
    g = _gen(4)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(2, (12,), generator=g)
    x2, y2 = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(2, (12,), generator=g)
    values = []
    for xb, yb in ((x, y), (x2, y2)):
        hess, grad, _, _ = _dense_hessian(model, xb, yb, 6)
        values.append(float(grad @ hess @ grad / (grad @ grad)))
    config = make_config({"arch": "mlp", "depth": 3, "norm": "batch", "lr": 0.1, "probe_every": 1,
                          "probes": "sharpness", "sharpness_iters": 3, "ghost_batch": 6, "batch_size": 12,
                          "batch_sharpness_batches": 2})
    alone = _probe_step(model, config, x, y)["sharpness"].to_pylist()[0]  # no way to draw: the step's batch alone
    assert alone["batch_sharpness"] == pytest.approx(values[0], rel=1e-9)
    assert alone["batch_sharpness_batches"] == 1 and math.isnan(alone["batch_sharpness_se"])
    drawn = []
    row = _probe_step(model, config, x, y, draw_batch=lambda gen: drawn.append(gen) or (x2, y2))
    row = row["sharpness"].to_pylist()[0]
    assert len(drawn) == 1 and drawn[0] is not None
    assert row["batch_sharpness"] == pytest.approx(sum(values) / 2, rel=1e-9)
    assert row["batch_sharpness_batches"] == 2
    assert row["batch_sharpness_se"] == pytest.approx(abs(values[0] - values[1]) / 2, rel=1e-9)


def test_spectrum_options_are_checked():
    with pytest.raises(BnsweepError, match="spectrum_k=30: more top eigenvalues than the 20 Lanczos steps"):
        make_config({"probes": "spectrum", "spectrum_k": 30})
    with pytest.raises(BnsweepError, match=r"spectrum_layers=.*layer #12 does not exist in vgg11"):
        make_config({"probes": "spectrum", "spectrum_layers": "0,12"})
    assert make_config({"spectrum_layers": "0,3"}).spectrum_layers == (0, 3)


def _depth_results(root, largest: dict[str, int], factor: float = 1.2, depths=(5, 8, 12, 20)):
    """Synthetic depth sweep in the real schemas: MLP trials of `largest`'s variants at each depth, trained up to
    its entry, each with step-0 layer norms whose gradients grow by `factor` (batch) or stay flat towards the
    input."""
    import pyarrow as pa

    from bnsweep import records
    from bnsweep.records import trials_table
    from bnsweep.schema import PROBE_SCHEMAS

    for norm, top in largest.items():
        for depth in depths:
            config = make_config({"arch": "mlp", "norm": norm, "depth": depth, "lr": 0.1, "steps": 100})
            trained = depth <= top
            outcome = {"trial_id": config.trial_id, "status": "completed", "trained": trained,
                       "trained_rule": "final_train_acc >= 0.5", "steps_done": 100, "task": "classification",
                       "initial_loss": 2.3, "final_loss": 0.5 if trained else 2.3,
                       "final_train_acc": 0.9 if trained else 0.1, "final_test_acc": 0.85 if trained else 0.1,
                       "attempt": 1, "schema_version": records.SCHEMA_VERSION}
            grow = factor if norm == "batch" else 1.0
            rows = [{"trial_id": config.trial_id, "step": 0, "layer": layer, "weight_norm": 1.0,
                     "grad_norm": grow ** (depth - layer), "position": "fc"} for layer in range(1, depth + 1)]
            schema = PROBE_SCHEMAS["layer_norms"]
            ln = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
            records.write_trial(root, config.trial_id, {records.TRIALS: trials_table(config, outcome),
                                                        "layer_norms": ln})
    return root


def _c12(root):
    import analysis

    (c12,) = [c for c in analysis.check_claims(analysis.load(root)) if c.key == "C12"]
    return c12


def test_c12_prints_yang_et_al_theory_factor(tmp_path):
    from analysis.claims_dynamics import YANG_FACTOR

    assert YANG_FACTOR == pytest.approx(1.211, abs=5e-4)  # sqrt(pi / (pi - 1))
    c12 = _c12(_depth_results(tmp_path, {"none": 20, "batch": 8}, factor=1.3))
    fits = [c for c in c12.cases if c["norm"] == "batch" and "factor" in c]
    assert fits and all(c["factor_over_theory"] == pytest.approx(1.3 / YANG_FACTOR) for c in fits)
    assert "theory 1.211" in c12.summary and "ratio 1.07" in c12.summary
    assert c12.verdict == "supported"  # batch explodes and stops training at 8 while none trains at 20


def test_c12_trainability_against_none_not_the_deepest(tmp_path):
    # none fails beyond depth 8 as well: batch's limit is no sign of BatchNorm's explosion. The old rule (batch's
    # largest below the deepest tried) called this supported.
    c12 = _c12(_depth_results(tmp_path, {"none": 8, "batch": 8}))
    (case,) = [c for c in c12.cases if c["setting"] == "trainability"]
    assert case["verdict"] == "contradicted" and case["none_largest"] == 8
    assert "none up to 8" in case["why"]


def test_c12_trainability_needs_none(tmp_path):
    c12 = _c12(_depth_results(tmp_path, {"batch": 8, "layer": 20}))
    (case,) = [c for c in c12.cases if c["setting"] == "trainability"]
    assert case["verdict"] == "not enough data"


def test_full_batch_sharpness_under_sgd_matches_the_dense_hessian():
    """full_batch_sharpness (C14's full-batch sharpness under SGD): the top eigenvalue of the whole training set's
    loss, in parts of the step's size (BatchNorm's statistics per part, as in a step), beside the step's batch's
    `sharpness`; NaN when not asked for. A tiny float64 BatchNorm MLP, Lanczos run to the parameter count."""
    model = _tiny_bn_mlp()
    g = _gen(4)
    x, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(2, (12,), generator=g)
    n_all = sum(p.numel() for p in model.parameters())
    whole, _, _, _ = _dense_hessian(model, x, y, 6)
    step, _, _, _ = _dense_hessian(model, x[:6], y[:6], 6)
    for asked in (True, False):
        config = make_config({"arch": "mlp", "depth": 3, "norm": "batch", "lr": 0.1, "probe_every": 1,
                              "probes": "sharpness", "sharpness_iters": n_all, "batch_size": 6, "train_subset": 12,
                              "full_batch_sharpness": asked, "batch_sharpness_batches": 1})
        trial = _fake_trial(model, config)
        probes = P.Probes(trial.config, trial.model, trial.loss_fn, trial.optimizer, trial.device, trial.task,
                          draw_batch=lambda gen: (x[6:], y[6:]), train_set=lambda: (x, y))
        assert probes.begin(0)
        loss = F.cross_entropy(model(x[:6]), y[:6])
        trial.optimizer.zero_grad()
        loss.backward()
        probes.before_update(0, x[:6], y[:6], loss)
        row = probes.tables()["sharpness"].to_pylist()[0]
        assert row["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(step)[-1]), rel=1e-7)
        assert row["examples"] == 6
        if asked:
            assert row["full_batch_sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(whole)[-1]), rel=1e-7)
        else:
            assert math.isnan(row["full_batch_sharpness"])


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_full_batch_sharpness_under_sgd_does_not_perturb_training(norm):
    """The whole training set read at every probe step moves no random stream and no running statistic; in
    full-batch mode the column is the sharpness itself."""
    data = _images(n=48)
    base = {"arch": "mlp", "width": 1 / 32, "norm": norm, "lr": 0.1, "steps": 12, "batch_size": 8,
            "train_subset": 32, "eval_every": 6, "eval_subset": 16, "device": "cpu", "seed": 1}
    on = Trial(make_config({**base, "probe_every": 5, "probes": "sharpness", "sharpness_iters": 3,
                            "full_batch_sharpness": True}), data)
    off = Trial(make_config({**base, "probe_every": 0}), data)
    on.run()
    off.run()
    assert on.status == off.status == "completed"
    assert torch.equal(on.history, off.history) and on.evals == off.evals
    on_state, off_state = on.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(on_state[k], off_state[k]) for k in off_state)
    sharp = on.tables()["sharpness"].to_pandas()
    assert list(sharp.step) == [0, 5, 10] and sharp.full_batch_sharpness.notna().all()
    full = Trial(make_config({**base, "batch_size": 0, "probe_every": 5, "probes": "sharpness",
                              "sharpness_iters": 3}), data)
    full.run()
    sharp = full.tables()["sharpness"].to_pandas()
    assert (sharp.full_batch_sharpness == sharp.sharpness).all() and set(sharp.examples) == {32}


def test_full_batch_sharpness_options_are_checked():
    with pytest.raises(BnsweepError, match="full_batch_sharpness=.*set --train-subset N"):
        make_config({"arch": "mlp", "probes": "sharpness", "full_batch_sharpness": True})
    with pytest.raises(BnsweepError, match="full_batch_sharpness=.*noisy_batch"):
        make_config({"norm": "noisy_batch", "probes": "sharpness", "full_batch_sharpness": True,
                     "train_subset": 512})
    assert make_config({"train_subset": 512, "full_batch_sharpness": True}).full_batch_sharpness is True
