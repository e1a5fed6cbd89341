"""`python -m bnsweep.bench paper`'s fused part (issue 21, item 5): `bnsweep run --fuse 2` at smoke size on moto's S3,
each member's own `trials` row and curve rows read back from S3, the cohort one Tune trial. (The VGG-16 part runs
minutes: `python -m bnsweep.bench paper`, not here.)"""

import pandas as pd

from bnsweep import records
from bnsweep.bench import paper

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def test_bench_paper_runs_a_fused_cohort_with_each_members_records_on_s3(tmp_path, monkeypatch, one_thread):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    root = paper.write_cifar(tmp_path / "data", per_batch=64)
    with paper.moto_s3("bnsweep-bench", tmp_path / "moto.log") as (endpoint, _):
        results = f"s3://bnsweep-bench/fused?endpoint_override={endpoint}&scheme=http"
        line = paper.fused_slice(results, str(root), tmp_path, steps=3, eval_examples=32)
        trials = records.read_table(results, records.TRIALS).to_pandas()
        curves = records.read_table(results, "curves").to_pandas()
    assert line.startswith("fused: bnsweep run --fuse 2, one cohort of 2 smoke-size VGG-11s, 3 steps") and "S3" in line
    assert len(trials) == 2 and trials.trial_id.nunique() == 2 and set(trials.lr) == {0.1, 0.05}
    assert (trials.status == "completed").all() and (trials.steps_done == 3).all()
    for trial_id in trials.trial_id:
        assert sorted(curves[curves.trial_id == trial_id].step) == [0, 1, 2]
    assert isinstance(curves, pd.DataFrame) and curves.loss.notna().all()
