"""Probes against closed forms (quadratic, three-layer linear network, BatchNorm's backward) and the rule that
probes never perturb training (bit-identical curves with probes on and off)."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnsweep import probes as P
from bnsweep.config import make_config
from bnsweep.data import Dataset
from bnsweep.models import Block, Net, build_model
from bnsweep.norms import BatchNorm, NormOptions
from bnsweep.schema import PROBE_SCHEMAS
from bnsweep.trial import Trial

ALL_PROBES = ("landscape,ics,activations,bn_identity,layer_norms,hessian,random_direction,sharpness,scale_invariance,"
              "spectrum")
# The spectrum at small sizes (its default cadence, every 20000 steps, would never reach these short trials).
SPECTRUM = {"slq_iters": 3, "spectrum_k": 2, "slq_runs": 1, "hutchinson_samples": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _fake_trial(model, config, loss_fn=F.cross_entropy):
    """What Probes needs from a Trial, around any models.Net."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    return SimpleNamespace(config=config, model=model, optimizer=opt, params=params, loss_fn=loss_fn,
                           device=torch.device("cpu"), task="classification")


def _probes(trial):
    """The probes of a fake trial, built as Trial._make_probes builds them."""
    return P.Probes(trial.config, trial.model, trial.loss_fn, trial.optimizer, trial.device, trial.task)


def _train_step(trial, probes, t, x, y):
    """Trial.train_step's probe protocol, step by step."""
    probing = probes.begin(t)
    loss = trial.loss_fn(trial.model(x), y)
    trial.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if probing:
        probes.before_update(t, x, y, loss)
    trial.optimizer.step()
    if probing:
        probes.after_update(t, x, y)
    return loss


def _same_rows(a, b) -> bool:
    """Two tables hold the same rows (NaN equal to NaN), whatever their trial ids."""
    drop = [c for c in ("trial_id",) if c in a.column_names]
    return a.drop_columns(drop).to_pandas().equals(b.drop_columns(drop).to_pandas())


def _random_images(n_train=128, n_test=32, side=32, seed=0):
    g = _gen(seed)
    return Dataset(name="random", task="classification", train_x=torch.randn(n_train, 1, side, side, generator=g),
                   train_y=torch.randint(10, (n_train,), generator=g),
                   test_x=torch.randn(n_test, 1, side, side, generator=g),
                   test_y=torch.randint(10, (n_test,), generator=g), num_outputs=10, checksum="random",
                   source="random")


# ---------------------------------------------------------------- closed forms


def test_landscape_quadratic_is_exact():
    """L = x'Hx/2: L(x - eta g), |grad L(x) - grad L(x - eta g)| = eta |Hg| and beta_eff = |Hg|/|g|."""
    g = _gen()
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    h = a @ a.T + torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    x = torch.randn(6, generator=g, dtype=torch.float64)

    def loss_of(p):
        return 0.5 * p["x"] @ h @ p["x"]

    grad = h @ x
    etas = [0.01, 0.05, 0.1, 0.4]
    raw = P.landscape(loss_of, {"x": x}, {"x": grad}, {"x": grad}, etas)
    points = [(eta, float(v), float(d)) for eta, v, d in raw]
    hg = torch.linalg.vector_norm(h @ grad)
    for eta, v, d in points:
        xe = x - eta * grad
        assert v == pytest.approx(float(0.5 * xe @ h @ xe), rel=1e-13)
        assert d == pytest.approx(float(eta * hg), rel=1e-13)
    summary = P.landscape_summary(points, float(torch.linalg.vector_norm(grad)))
    assert summary["beta_eff"] == pytest.approx(float(hg / torch.linalg.vector_norm(grad)), rel=1e-13)
    assert summary["loss_min"] == min(p[1] for p in points) and summary["grad_diff_max"] == max(p[2] for p in points)


def test_hessian_power_iteration_on_quadratic():
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=_gen(1), dtype=torch.float64))
    eig = torch.tensor([10.0, 3.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    h = q @ torch.diag(eig) @ q.T
    lam, residual = P.top_hessian_eigenvalue(lambda p: 0.5 * p["x"] @ h @ p["x"],
                                             {"x": torch.ones(5, dtype=torch.float64)}, 60, _gen(2))
    assert lam == pytest.approx(10.0, rel=1e-12) and residual < 1e-10


def _linear_net(dims, seed):
    g = _gen(seed)
    blocks = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layer = nn.Linear(d_in, d_out, bias=False).double()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in))
        blocks.append(Block(layer, nn.Identity(), nn.Identity(), nn.Identity()))
    return Net("dln", blocks)


def _linear_grads(w1, w2, w3, x, y):
    """L = |X W1' W2' W3' - Y|^2 / 2 (rows are samples): the three weight gradients by hand."""
    a1 = x @ w1.T
    a2 = a1 @ w2.T
    r = a2 @ w3.T - y
    return (r @ w3 @ w2).T @ x, (r @ w3).T @ a1, r.T @ a2


@pytest.mark.parametrize("momentum,steps", [(0.0, 1), (0.9, 2)])
def test_ics_middle_layer_of_linear_network(momentum, steps):
    """ICS of layer #2 of a three-layer linear network: G2 and G2' = (r' W3)' (X W1'') with W1'' the
    real optimizer update of W1 (with momentum, after two steps so the buffer is not just the gradient)."""
    lr = 0.01
    model = _linear_net([5, 4, 3, 2], seed=0)
    g = _gen(1)
    x, y = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 2, generator=g, dtype=torch.float64)
    config = make_config({"arch": "mlp", "lr": lr, "momentum": momentum, "probe_every": 1, "probes": "ics",
                          "ics_layers": "all"})
    trial = _fake_trial(model, config, loss_fn=lambda out, target: 0.5 * (out - target).pow(2).sum())
    probes = _probes(trial)

    w = [b.layer.weight.detach().clone() for b in model.blocks]  # the same trajectory, by hand
    bufs = None
    for t in range(steps):
        grads = _linear_grads(*w, x, y)
        bufs = list(grads) if bufs is None else [momentum * b + gr for b, gr in zip(bufs, grads, strict=True)]
        w1_new = w[0] - lr * bufs[0]
        g2, g2_after = grads[1], _linear_grads(w1_new, w[1], w[2], x, y)[1]
        _train_step(trial, probes, t, x, y)
        w = [wi - lr * b for wi, b in zip(w, bufs, strict=True)]
    for wi, b in zip(w, model.blocks, strict=True):
        torch.testing.assert_close(b.layer.weight.detach(), wi, rtol=1e-12, atol=1e-14)

    rows = {(r["step"], r["layer"]): r for r in probes.tables()["ics"].to_pylist()}
    row = rows[(steps - 1, 2)]
    assert row["l2_diff"] == pytest.approx(float(torch.linalg.vector_norm(g2 - g2_after)), rel=1e-10)
    cos = float((g2 * g2_after).sum() / (torch.linalg.vector_norm(g2) * torch.linalg.vector_norm(g2_after)))
    assert row["cos"] == pytest.approx(cos, rel=1e-10)
    assert row["grad_norm"] == pytest.approx(float(torch.linalg.vector_norm(g2)), rel=1e-12)
    assert row["l2_diff"] > 1e-3  # not trivially zero: layer #1 really moved
    assert rows[(steps - 1, 1)]["l2_diff"] == 0.0  # layer #1: nothing before it moves, by construction


@pytest.mark.parametrize("shape", [(64, 5), (6, 5, 4, 3)])
def test_bn_identity_float64(shape):
    """|dL/dy|^2 equals the exact identity (with eps) to float64 precision; the printed bound is tighter."""
    g = _gen(3)
    bn = BatchNorm(5, spatial=len(shape) == 4, eps=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.7, 2.0, 3.0, 0.9], dtype=torch.float64))
        bn.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    y = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_()
    upstream = torch.randn(shape, generator=g, dtype=torch.float64) + 0.7  # non-zero mean gradient
    (grad_in,) = torch.autograd.grad((bn(y) * upstream).sum(), y)
    terms = P.bn_identity(y.detach(), grad_in, upstream, bn.weight.detach(), bn.eps)
    torch.testing.assert_close(terms["lhs"], terms["exact"], rtol=1e-12, atol=0)
    assert terms["m"] == shape[0] * math.prod(shape[2:])
    assert bool((terms["printed"] <= terms["exact"]).all())  # 1/sqrt(m) > 1/m: it removes more than the truth
    summary = P.bn_identity_summary(terms, 1e-9)
    assert summary["exact_holds_frac"] == 1.0 and summary["exact_max_rel_err"] < 1e-12
    assert summary["printed_bound_holds"] is False


@pytest.mark.parametrize("arch,norm,placement", [("mlp", "batch", "after_affine"),
                                                 ("mlp", "noisy_batch", "after_affine"),
                                                 ("mlp", "noisy_batch", "before_affine"),
                                                 ("vgg11", "noisy_batch", "after_affine")])
def test_bn_identity_from_the_steps_hooks(arch, norm, placement):
    """The hooks capture g (before the noise) and g_hat of the step's own backward: float64 network, exact."""
    in_shape = (6,) if arch == "mlp" else (1, 32, 32)
    model = build_model(arch, width=1 / 64 if arch == "mlp" else 0.125, norm=norm, in_shape=in_shape,
                        num_outputs=3, norm_options=NormOptions(eps=1e-3, noise_placement=placement),
                        noise_generator=_gen(5), generator=_gen(6)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.weight.uniform_(0.5, 2.0, generator=_gen(7))
    config = make_config({"arch": arch, "norm": norm, "probe_every": 1, "probes": "bn_identity",
                          "bn_identity_tol": 1e-9, "ics_layers": "1"})
    trial = _fake_trial(model, config)
    probes = _probes(trial)
    g = _gen(8)
    x = torch.randn((8, *in_shape), generator=g, dtype=torch.float64)
    _train_step(trial, probes, 0, x, torch.randint(3, (8,), generator=g))
    rows = probes.tables()["bn_identity"].to_pylist()
    assert [r["layer"] for r in rows] == [i for i in range(1, model.num_layers) if norm != "none"]
    for r in rows:
        assert r["exact_holds_frac"] == 1.0 and r["exact_max_rel_err"] < 1e-10, r
        assert r["norm"] == norm


def test_landscape_uses_batch_statistics():
    """With garbage running statistics the probe's eta -> 0 loss is still the step's training loss, and the
    running statistics are left exactly as the step's forward made them."""
    model = build_model("mlp", width=1 / 32, norm="batch", in_shape=(10,), num_outputs=4, generator=_gen(0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.running_mean.fill_(-50.0)
                m.running_var.fill_(1e-4)
    config = make_config({"arch": "mlp", "norm": "batch", "lr": 0.1, "probe_every": 1, "probes": "landscape",
                          "etas": "1e-7", "ics_layers": "1"})
    trial = _fake_trial(model, config)
    probes = _probes(trial)
    g = _gen(1)
    x, y = torch.randn(32, 10, generator=g), torch.randint(4, (32,), generator=g)
    assert probes.begin(0)
    loss = F.cross_entropy(model(x), y)
    trial.optimizer.zero_grad()
    loss.backward()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    probes.before_update(0, x, y, loss)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    row = probes.tables()["landscape"].to_pylist()[0]
    assert row["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    model.eval()
    with torch.no_grad():
        assert abs(float(F.cross_entropy(model(x), y)) - float(loss.detach())) > 1.0  # running stats: another network


def test_activation_stats():
    a = torch.randn(50, 4, 3, 3, generator=_gen(0))
    s = P.activation_stats(a, _gen(1))
    assert s["sample_size"] == a.numel() and sum(s["hist_counts"]) == a.numel()
    assert len(s["hist_edges"]) == P.HIST_BINS + 1
    assert s["q50"] == pytest.approx(float(torch.quantile(a.double().flatten(), 0.5)), rel=1e-12)
    assert s["mean"] == pytest.approx(float(a.double().mean()), rel=1e-12)
    big = torch.randn(2**20 + 3, 1, generator=_gen(2))
    big[0] = math.nan
    s = P.activation_stats(big, _gen(3), sample=2**12)
    assert s["sample_size"] == 2**12 and s["nonfinite"] == 1 and math.isfinite(s["mean"])
    assert abs(s["q50"]) < 0.1 and sum(s["hist_counts"]) == big.numel() - 1


# ---------------------------------------------------------------- probes never perturb training


@pytest.mark.parametrize("norm", ["batch", "noisy_batch"])
def test_probes_do_not_perturb_training(norm):
    data = _random_images()
    base = {"arch": "vgg11", "width": 0.125, "norm": norm, "lr": 0.1, "steps": 30, "batch_size": 8,
            "eval_every": 15, "eval_subset": 32, "device": "cpu", "seed": 3}
    on = Trial(make_config({**base, "probe_every": 10, "probes": ALL_PROBES, "ics_layers": "all",
                            "etas": "0.5,4", "hessian_iters": 2, "sharpness_iters": 3, "batch_sharpness_batches": 2,
                            **SPECTRUM, "spectrum_every": 7, "spectrum_start": 0}), data)
    off = Trial(make_config({**base, "probe_every": 0}), data)
    on.run()
    off.run()
    assert on.status == off.status == "completed"
    assert torch.equal(on.history, off.history)
    assert on.evals == off.evals and on.evals[29]["test_acc"] == off.evals[29]["test_acc"]
    on_state, off_state = on.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(on_state[k], off_state[k]) for k in off_state)  # weights and running stats
    assert torch.equal(on.noise_generator.get_state(), off.noise_generator.get_state())
    assert on.sampler.state_dict().keys() == off.sampler.state_dict().keys()

    tables = on.tables()
    assert _same_rows(tables["curves"], off.tables()["curves"])
    for name in ("landscape", "ics", "activations", "bn_identity", "layer_norms", "hessian", "sharpness",
                 "scale_invariance"):
        t = tables[name]
        assert t.schema.names[:2] == ["trial_id", "step"] and t.schema == PROBE_SCHEMAS[name]
        assert sorted(set(t.column("step").to_pylist())) == [0, 10, 20], name
    ls = tables["landscape"].to_pandas()
    assert set(ls.direction) == {"gradient", "random"} and len(ls) == 3 * 2 * 2
    assert set(ls.noise_in_probes) == {"reuse" if norm == "noisy_batch" else "none"}
    assert len(tables["ics"]) == 3 * 11 and len(tables["activations"]) == 3 * 11
    assert tables["activations"].to_pandas().delta_mean.notna().all()  # step t+1 was seen for every probe
    bn = tables["bn_identity"].to_pandas()
    assert len(bn) == 3 * 10 and bn.exact_holds_frac.mean() > 0.99
    assert len(tables["sharpness"]) == 3 and len(tables["scale_invariance"]) == 3 * 11
    assert set(tables["sharpness"].column("batch_sharpness_batches").to_pylist()) == {2}
    # The spectrum at its own cadence, steps 0, 7, 14, 21, 28 (off the other probes' steps too): the whole
    # network and each of the 11 layers.
    spectrum = tables["spectrum"]
    assert spectrum.schema == PROBE_SCHEMAS["spectrum"]
    sp = spectrum.to_pandas()
    assert sorted(set(sp.step)) == [0, 7, 14, 21, 28] and len(sp) == 5 * 12
    assert list(sp[sp.step == 7].layer) == list(range(12)) and (sp.top >= sp.bottom).all()


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_probes_do_not_perturb_full_batch_training(norm):
    """Full-batch gradient descent on a training subset over ghost batches, momentum and weight decay, squared
    loss: the dynamics probes (and the others) leave the trajectory bit-identical."""
    data = _random_images(n_train=96, n_test=16, side=8)
    base = {"arch": "mlp", "width": 1 / 16, "depth": 5, "norm": norm, "lr": 0.1, "steps": 12, "batch_size": 0,
            "train_subset": 64, "ghost_batch": 16, "loss": "mse", "momentum": 0.9, "weight_decay": 0.01,
            "eval_every": 6, "eval_subset": 32, "device": "cpu", "seed": 2}
    on = Trial(make_config({**base, "probe_every": 5, "probes": ALL_PROBES, "ics_layers": "all",
                            "hessian_iters": 2, "sharpness_iters": 4, **SPECTRUM, "spectrum_every": 4,
                            "spectrum_start": 2, "spectrum_layers": "0,2"}), data)
    off = Trial(make_config({**base, "probe_every": 0}), data)
    on.run()
    off.run()
    assert on.status == off.status == "completed"
    assert torch.equal(on.history, off.history) and on.evals == off.evals
    on_state, off_state = on.model.state_dict(), off.model.state_dict()
    assert all(torch.equal(on_state[k], off_state[k]) for k in off_state)
    assert all(torch.equal(a, b) for a, b in zip(on.optimizer.buffers, off.optimizer.buffers, strict=True))
    tables = on.tables()
    sharp = tables["sharpness"].to_pandas()
    assert list(sharp.step) == [0, 5, 10] and set(sharp.examples) == {64} and set(sharp.ghost_batch) == {16}
    assert set(sharp.batch_sharpness_batches) == {1}  # full batch: the minibatch is the step's batch
    sp = tables["spectrum"].to_pandas()
    assert list(sp.step) == [2, 2, 6, 6, 10, 10] and list(sp.layer) == [0, 2] * 3
    si = tables["scale_invariance"].to_pandas()
    assert len(si) == 3 * 5 and list(si[si.step == 0].scale_invariant) == [True] * 4 + [False]


def test_batch_sharpness_draws_minibatches_of_the_step_from_the_train_subset():
    """The further minibatches of batch sharpness: the step's size, distinct examples of the train subset,
    prepared as the step's are, drawn by the probe-only generator (the trial's batch stream never moves); full
    batch draws none (the step's batch is the minibatch)."""
    data = _random_images(n_train=64, n_test=16, side=8)
    base = {"arch": "mlp", "width": 1 / 16, "norm": "batch", "lr": 0.1, "steps": 2, "eval_every": 2,
            "eval_subset": 16, "device": "cpu", "probe_every": 1, "probes": "sharpness", "train_subset": 40}
    trial = Trial(make_config({**base, "batch_size": 8}), data)
    sampler = copy.deepcopy(trial.sampler.state_dict())
    (sharpness,) = trial.probes.probes  # the draw the trial hands its probes
    x, y = sharpness.draw_batch(torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 8, 8) and y.shape == (8,)
    subset, labels = data.inputs(data.train_x[trial.train_index]), data.train_y[trial.train_index]
    rows = [int(((subset - xi).abs().sum((1, 2, 3)) == 0).nonzero()) for xi in x]
    assert len(set(rows)) == 8 and torch.equal(labels[rows], y)
    after = trial.sampler.state_dict()
    assert torch.equal(after["generator"], sampler["generator"]) and after["pos"] == sampler["pos"]
    trial.run()
    assert set(trial.tables()["sharpness"].column("batch_sharpness_batches").to_pylist()) == {4}
    full = Trial(make_config({**base, "batch_size": 0}), data)
    full.run()
    assert set(full.tables()["sharpness"].column("batch_sharpness_batches").to_pylist()) == {1}


@pytest.mark.parametrize("norm", ["batch", "noisy_batch"])
def test_a_finished_trial_is_freed(norm):
    """Nothing of a probed trial outlives it: a BatchNorm gradient hook that held its own tensor made a
    reference cycle through C++ that Python's collector cannot see, so every BatchNorm trial's model, probe
    rows and step tensors stayed in the Ray worker that ran it (10 to 40 MB more per trial)."""
    import gc
    import weakref

    config = make_config({"arch": "vgg11", "width": 0.125, "norm": norm, "lr": 0.1, "steps": 3, "batch_size": 8,
                          "eval_every": 3, "eval_subset": 8, "device": "cpu", "probe_every": 1,
                          "probes": "bn_identity,activations"})
    trial = Trial(config, _random_images(n_train=32, n_test=8))
    trial.run()
    assert len(trial.tables()["bn_identity"]) == 3 * 10
    model, probes = weakref.ref(trial.model), weakref.ref(trial.probes)
    del trial
    gc.collect()
    assert model() is None and probes() is None


def test_resume_keeps_probe_rows():
    """A trial checkpointed right after a probe step (its t -> t+1 activation change still pending) resumes
    to the same probe tables as an uninterrupted one."""
    data = _random_images(n_train=64, n_test=16, side=8)
    config = make_config({"arch": "mlp", "width": 1 / 16, "norm": "noisy_batch", "lr": 0.1, "steps": 9,
                          "batch_size": 16, "eval_every": 9, "eval_subset": 16, "device": "cpu",
                          "probe_every": 4, "probes": ALL_PROBES, "ics_layers": "all", "hessian_iters": 2,
                          **SPECTRUM, "spectrum_every": 3, "spectrum_start": 1})
    whole = Trial(config, data)
    whole.run()
    saved = {}

    def keep(trial):
        if trial.step in (1, 5):
            saved[trial.step] = copy.deepcopy(trial.state_dict())

    interrupted = Trial(config, data)
    interrupted.run(callback=keep, callback_every=1)
    for step in (1, 5):
        resumed = Trial(config, data)
        resumed.load_state_dict(copy.deepcopy(saved[step]))
        resumed.run()
        for name, table in whole.tables().items():
            if name != "trials":
                assert _same_rows(table, resumed.tables()[name]), (step, name)
                assert _same_rows(table, interrupted.tables()[name]), name


def test_fresh_noise_in_probes_does_not_perturb_training():
    """noise_in_probes=fresh draws probe noise from a probe-only generator, never the training one."""
    data = _random_images(n_train=64, n_test=16, side=8)
    base = {"arch": "mlp", "width": 1 / 16, "norm": "noisy_batch", "lr": 0.1, "steps": 8, "batch_size": 16,
            "eval_every": 8, "eval_subset": 16, "device": "cpu", "ics_layers": "all"}
    on = Trial(make_config({**base, "probe_every": 3, "probes": ALL_PROBES, "noise_in_probes": "fresh",
                            "hessian_iters": 2, **SPECTRUM, "spectrum_every": 2, "spectrum_start": 0}), data)
    off = Trial(make_config({**base, "probe_every": 0}), data)
    on.run()
    off.run()
    assert torch.equal(on.history, off.history) and on.evals == off.evals
    assert torch.equal(on.noise_generator.get_state(), off.noise_generator.get_state())
    ics = on.tables()["ics"].to_pandas()
    assert set(ics.noise_in_probes) == {"fresh"}
    assert (ics[ics.layer == 1].l2_diff > 0).all()  # fresh noise: even layer #1 sees another landscape


# ---------------------------------------------------------------- a probe is one class


def test_each_probe_is_one_registered_class():
    """Every probe config.probes accepts is one class in the registry, which names its config options, its
    table (with a schema) and its random stream."""
    import dataclasses

    from bnsweep.config import PROBES, TrialConfig

    assert set(P.PROBES) == set(PROBES)
    fields = {f.name for f in dataclasses.fields(TrialConfig)}
    for name, cls in P.PROBES.items():
        assert issubclass(cls, P.Probe) and cls.name == name
        assert set(cls.options) <= fields, (name, cls.options)
        assert cls.table in PROBE_SCHEMAS and cls.schema() is PROBE_SCHEMAS[cls.table]
    assert {cls.stream for cls in P.PROBES.values()} - {None} == {"activations", "random_direction", "hessian",
                                                                  "sharpness", "spectrum"}
    assert P.PROBES["landscape"].options == ("etas",) and P.PROBES["ics"].options == ("ics_layers",)
    assert P.PROBES["hessian"].options == ("hessian_iters",) and P.PROBES["bn_identity"].options == ("bn_identity_tol",)


def test_probes_are_built_from_what_they_read_not_from_a_trial():
    """Probes takes the config, model, loss, optimizer, device and task (no Trial), and cuts the rows of the
    steps after a divergence only when told the diverged step."""
    model = build_model("mlp", width=1 / 32, norm="batch", in_shape=(10,), num_outputs=4, generator=_gen(0))
    config = make_config({"arch": "mlp", "norm": "batch", "lr": 0.1, "probe_every": 1, "probes": ALL_PROBES,
                          "ics_layers": "all", "hessian_iters": 2, "sharpness_iters": 3, **SPECTRUM,
                          "spectrum_every": 1, "spectrum_start": 0})
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    probes = P.Probes(config, model, F.cross_entropy, opt, torch.device("cpu"), "classification")
    g = _gen(1)
    x, y = torch.randn(16, 10, generator=g), torch.randint(4, (16,), generator=g)
    for t in range(3):
        assert probes.begin(t)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        probes.before_update(t, x, y, loss)
        opt.step()
        probes.after_update(t, x, y)
    probes.finish()
    whole, cut = probes.tables(), probes.tables(diverged_step=1)
    assert set(whole) == {P.PROBES[p].table for p in config.probes}
    for name, table in whole.items():
        assert table.schema == PROBE_SCHEMAS[name] and set(table.column("step").to_pylist()) == {0, 1, 2}, name
        assert set(cut[name].column("step").to_pylist()) == {0, 1}, name
    assert set(whole["layer_norms"].column("position").to_pylist()) == {"fc", "head"}


def test_a_new_probe_is_one_class(monkeypatch):
    """A probe added to the registry runs at the probe steps with what the step context gives it, and its table
    is written: nothing else changes."""
    import dataclasses

    import pyarrow as pa

    seen = []

    class GradientNorm(P.Probe):
        name, table = "gradient_norm", "gradient_norm"

        def measure(self, ctx):
            seen.append((ctx.t, sorted(ctx.params) == sorted(ctx.grads), ctx.lr))
            self.row(ctx.t, norm=float(P.global_norm(ctx.grads.values())), loss=float(ctx.loss))

    monkeypatch.setitem(P.PROBES, GradientNorm.name, GradientNorm)
    monkeypatch.setitem(P.PROBE_SCHEMAS, GradientNorm.table,
                        pa.schema([("trial_id", pa.string()), ("step", pa.int64()), ("norm", pa.float64()),
                                   ("loss", pa.float64())]))
    config = dataclasses.replace(make_config({"arch": "mlp", "width": 1 / 16, "norm": "batch", "lr": 0.1, "steps": 5,
                                              "batch_size": 16, "eval_every": 5, "eval_subset": 16, "device": "cpu",
                                              "probe_every": 2}), probes=("gradient_norm",))
    trial = Trial(config, _random_images(n_train=64, n_test=16, side=8))
    trial.run()
    assert seen == [(0, True, 0.1), (2, True, 0.1), (4, True, 0.1)]
    table = trial.tables()["gradient_norm"].to_pandas()
    assert list(table.step) == [0, 2, 4]
    assert list(table.loss) == [float(trial.history[t, 0]) for t in (0, 2, 4)]
