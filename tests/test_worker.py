"""bnsweep.worker: the trial a worker rebuilds from Tune's config is the trial the driver planned."""

import pytest

from bnsweep.config import make_config
from bnsweep.worker import ID, trial_config


def test_a_trial_rebuilt_as_another_names_both_ids():
    config = make_config({"arch": "dln", "norm": "batch", "lr": 0.1, "steps": 3, "dataset": "gaussian-linear"})
    params = {ID: config.trial_id, **config.identity()}
    assert trial_config(params, config.runtime()).trial_id == config.trial_id
    params["lr"] = 0.2  # Tune's config changed on the way: the identity no longer matches
    with pytest.raises(RuntimeError, match=f"trial {config.trial_id} rebuilt as "):
        trial_config(params, config.runtime())
