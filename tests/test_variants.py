"""bnsweep/variants.py: one row per variant drives config, schedule, dynamics and analysis/, and agrees with the
layers bnsweep/norms.py builds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnsweep import variants
from bnsweep.config import CONV_NORMS, NETWORKS, NORMS, RESIDUAL_NORMS, make_config, norm_problem
from bnsweep.dynamics import SCALE_INVARIANT, eps_term
from bnsweep.errors import BnsweepError
from bnsweep.models import build_model
from bnsweep.norms import NORM_LAYERS, make_norm
from bnsweep.schedule import NORM_STEP_COST

ROOT = Path(__file__).resolve().parent.parent


def test_importing_analysis_loads_the_variant_table_and_no_training_code():
    """In a fresh interpreter: other tests' imports would hide a stray one here."""
    code = ("import json, sys, analysis; print(json.dumps([sorted(m for m in sys.modules if m.split('.')[0] == "
            "'bnsweep'), 'torch' in sys.modules]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded, torch_loaded = json.loads(run.stdout.splitlines()[-1])
    assert loaded == ["bnsweep", "bnsweep.variants"] and not torch_loaded


def test_the_table_and_the_norms_registry_agree_and_every_variant_builds():
    assert tuple(NORM_LAYERS) == variants.NAMES
    x = {"vgg11": torch.randn(2, 3, 32, 32), "resnet20": torch.randn(2, 3, 32, 32), "mlp": torch.randn(2, 3, 32, 32)}
    for v in variants.VARIANTS:
        arch = {variants.ALL: "mlp", variants.CONVOLUTIONAL: "vgg11", variants.RESIDUAL: "resnet20"}[v.applies_to]
        net = build_model(arch, width=0.125, norm=v.name, in_shape=(3, 32, 32), num_outputs=10)
        assert torch.isfinite(net(x[arch])).all(), v.name


def test_config_schedule_dynamics_and_analysis_read_the_table():
    from analysis.aggregate import LP_NORMS
    from analysis.claims_resnets import NF_NORMS, SMALL_BATCH_NORMS
    from analysis.figures import NORM_COLORS
    from analysis.load import NORM_ORDER

    rows = variants.VARIANTS
    assert NORMS == NORM_ORDER == tuple(v.name for v in rows) == tuple(NORM_COLORS)
    assert NORM_STEP_COST == {v.name: v.step_cost for v in rows}
    assert NORM_COLORS == {v.name: v.color for v in rows} and len(set(NORM_COLORS.values())) == len(rows)
    assert SCALE_INVARIANT == tuple(v.name for v in rows if v.scale_invariant)
    assert RESIDUAL_NORMS == ("fixup", "skipinit", "nf") and CONV_NORMS == ("ws_group",)
    assert LP_NORMS == ("l1_batch", "l2_batch", "linf_batch") and NF_NORMS == RESIDUAL_NORMS
    assert SMALL_BATCH_NORMS == ("group", "ws_group")
    assert all(set(v.families) <= set(variants.FAMILIES) for v in rows)
    with pytest.raises(KeyError, match="unknown family 'lp_norms'"):
        variants.family("lp_norms")


def test_which_networks_a_variant_fits_comes_from_its_row():
    for v in variants.VARIANTS:
        for arch in NETWORKS[variants.ALL]:
            problem = norm_problem(arch, v.name)
            if arch in NETWORKS[v.applies_to]:
                assert problem is None, (arch, v.name)
            else:
                assert problem and problem.startswith(f"{v.name} {v.needs}: it needs a ") and arch in problem
    assert norm_problem("mlp", "ws_group") == ("ws_group standardizes convolution weights: it needs a convolutional "
                                               "network (vgg11, vgg13, vgg16, resnet20, resnet56), not mlp")


def test_a_variants_own_options_are_filled_for_it_and_refused_for_the_others():
    assert set(variants.OPTIONS) == {"nf_alpha", "agc_clip", "fixup_scalar_lr"}
    for key, (owner, default) in variants.OPTIONS.items():
        assert getattr(make_config({"arch": "resnet20", "norm": owner}), key) == default
        assert getattr(make_config({"arch": "resnet20", "norm": "batch"}), key) is None
        with pytest.raises(BnsweepError, match=f"{key} only applies to norm {owner}, not 'skipinit'"):
            make_config({"arch": "resnet20", "norm": "skipinit", key: default})


def test_the_eps_term_column_says_where_dynamics_derives_one():
    y = torch.randn(4, 8, 3, 3, requires_grad=True)
    for v in variants.VARIANTS:
        assert v.eps_term in (None, *variants.EPS_TERMS) and (v.scale_invariant or v.eps_term is None), v.name
        norm = make_norm(v.name, 8, spatial=True)
        z = norm(y)
        assert (eps_term(norm, y, torch.ones_like(z)) is None) == (v.eps_term is None), v.name
