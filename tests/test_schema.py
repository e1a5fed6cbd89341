"""bnsweep.schema: the one definition of every table's columns, and what the trials write matches it."""

import dataclasses

from bnsweep import schema
from bnsweep.config import TrialConfig


def test_the_trials_schema_is_the_config_then_the_outcome():
    names = schema.trials_schema().names
    fields = [f.name for f in dataclasses.fields(TrialConfig)]
    assert names[:len(fields)] == fields and names[len(fields):] == list(schema.OUTCOME)
    assert len(set(names)) == len(names)  # no outcome column shadows an option
    for name in ("final_train_acc", "final_test_acc", "final_train_loss", "final_test_loss"):
        assert schema.trials_schema().field(name).type == "double"


def test_curves_and_quantile_columns_match_their_lists():
    assert schema.CURVES_SCHEMA.names == ["trial_id", "step", *schema.CURVE_COLUMNS, *schema.EVAL_COLUMNS]
    activations = schema.PROBE_SCHEMAS["activations"].names
    assert [n for n in activations if n in schema.QUANTILE_COLUMNS] == list(schema.QUANTILE_COLUMNS)
    assert all(f"q{round(q * 100):02d}" == name for name, q in schema.QUANTILE_COLUMNS.items())
    for table in schema.PROBE_SCHEMAS.values():
        assert table.names[:2] == ["trial_id", "step"]
