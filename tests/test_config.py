import pytest

from bnsweep.config import TrialConfig, make_config, parse_value
from bnsweep.errors import BnsweepError


def test_defaults_follow_the_paper_per_architecture():
    vgg = make_config({"arch": "vgg16"})
    assert (vgg.batch_size, vgg.momentum, vgg.weight_decay, vgg.etas, vgg.ics_layers) == (128, 0.0, 0.0,
                                                                                         (0.5, 1.0, 2.0, 4.0), (5, 10))
    dln = make_config({"arch": "dln", "lr": "1e-6"})
    assert dln.dataset == "gaussian-linear" and dln.batch_size == 0 and dln.lr == 1e-6
    assert dln.etas == (0.01, 0.1, 1.0, 10.0, 30.0) and dln.ics_layers == (9, 17)
    resnet = make_config({"arch": "resnet20", "norm": "nf"})  # the NF authors' alpha and AGC threshold
    assert (resnet.ics_layers, resnet.nf_alpha, resnet.agc_clip, resnet.batch_size) == ((7, 13), 0.2, 0.01, 128)
    assert make_config({"arch": "resnet56", "norm": "nf", "agc_clip": 0}).agc_clip == 0  # no clipping
    assert make_config({"arch": "resnet56", "norm": "skipinit"}).ics_layers == (19, 37)
    assert make_config({"arch": "vgg13", "norm": "ws_group"}).agc_clip is None


def test_numbers_written_as_strings_are_numbers():
    # PyYAML reads 1e-3 as a string; the CLI gives strings too.
    assert parse_value("lr", "1e-3") == 1e-3
    assert parse_value("steps", "200") == 200 and parse_value("steps", 2e2) == 200
    assert parse_value("etas", "0.5,1,2") == (0.5, 1.0, 2.0)
    assert parse_value("ics_layers", "all") == "all" and parse_value("ics_layers", [5, 10]) == (5, 10)
    assert parse_value("augment", "true") is True
    assert parse_value("norm", "none") == "none"  # a variant, not a null


@pytest.mark.parametrize("values, words", [
    ({"arch": "resnet"}, ["arch", "'resnet'", "vgg11"]),
    ({"norm": "bn"}, ["norm", "'bn'", "noisy_batch"]),
    ({"dataset": "mnist"}, ["dataset", "'mnist'", "fashion-mnist"]),
    ({"lr": -0.1}, ["lr", "-0.1"]),
    ({"lr": "fast"}, ["lr", "'fast'"]),
    ({"steps": "2.5"}, ["steps", "whole"]),
    ({"arch": "dln", "dataset": "cifar10"}, ["dln", "cifar10"]),
    ({"ics_layers": "some"}, ["ics_layers", "'some'"]),
    ({"colour": "red"}, ["colour"]),
    ({"arch": "vgg11", "norm": "fixup"}, ["norm='fixup'", "residual network (resnet20 or resnet56)", "vgg11"]),
    ({"arch": "dln", "norm": "skipinit"}, ["norm='skipinit'", "resnet20 or resnet56", "not dln"]),
    ({"arch": "mlp", "norm": "nf"}, ["norm='nf'", "resnet20 or resnet56", "not mlp"]),
    ({"arch": "mlp", "norm": "ws_group"}, ["norm='ws_group'", "convolutional", "resnet20", "not mlp"]),
    ({"norm": "batch", "agc_clip": 0.01}, ["agc_clip=0.01", "only applies to norm nf"]),
    ({"arch": "resnet20", "norm": "batch", "nf_alpha": 0.2}, ["nf_alpha=0.2", "only applies to norm nf"]),
    ({"arch": "resnet20", "norm": "nf", "fixup_scalar_lr": 0.1}, ["fixup_scalar_lr=0.1", "only applies to norm fixup"]),
    ({"hold_fixed": "examples"}, ["examples=None", "needs the budget"]),
    ({"examples": 1000}, ["examples=1000", "hold_fixed=examples"]),
    ({"hold_fixed": "epochs"}, ["hold_fixed", "'epochs'", "steps, examples"]),
    ({"hold_fixed": "examples", "examples": 10**11}, ["examples"]),
    ({"hold_fixed": "examples", "examples": 1280, "steps": 50}, ["steps=50", "examples / batch size (10 here)"]),
])
def test_bad_values_name_themselves(values, words):
    with pytest.raises(BnsweepError) as e:
        make_config(values)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_trial_id_is_the_identity_not_the_place():
    a = make_config({"lr": 0.1, "norm": "batch"})
    assert a.trial_id == make_config({"lr": "0.1", "norm": "batch", "threads": 3, "device": "cpu"}).trial_id
    assert a.trial_id != make_config({"lr": 0.2, "norm": "batch"}).trial_id
    assert a.trial_id != make_config({"lr": 0.1, "norm": "batch", "seed": 1}).trial_id
    assert a.trial_id.startswith("vgg11-batch-lr0.1-s0-")
    assert TrialConfig().resolved().trial_id == TrialConfig().resolved().trial_id
