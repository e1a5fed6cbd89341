import subprocess
import sys

import pytest

BNSWEEP = [sys.executable, "-m", "bnsweep"]


def bnsweep(*args, timeout=300):
    return subprocess.run([*BNSWEEP, *args], capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_trial_option():
    from bnsweep.config import FIELDS

    out = bnsweep("trial", "--help").stdout
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in out
    assert "--results" in out and "--no-probes" in out
    top = bnsweep("--help").stdout
    for command in ("trial", "run", "sweeps", "status", "figures", "check"):
        assert command in top


@pytest.mark.parametrize("args, bad", [
    (["--arch", "resnet9"], "resnet9"),
    (["--norm", "weight"], "weight"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--lr", "-0.1"], "-0.1"),
    (["--lr", "fast"], "fast"),
    (["--ics-layers", "5,99"], "#99"),
    (["--activation-layers", "12"], "#12"),
    (["--data-root", "/nonexistent/data", "--dataset", "cifar10"], "/nonexistent/data"),
])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, args, bad):
    results = tmp_path / "results"
    (results / "trials").mkdir(parents=True)
    keep = results / "trials" / "earlier.parquet"
    keep.write_bytes(b"an earlier result")
    r = bnsweep("trial", "--steps", "5", "--width", "0.0625", "--results", str(results), *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and bad in lines[0] and "Traceback" not in r.stderr
    assert keep.read_bytes() == b"an earlier result" and sorted(p.name for p in results.rglob("*")) == [
        "earlier.parquet", "trials"]


def test_unwritable_results_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = bnsweep("trial", "--steps", "5", "--results", str(blocker / "results"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(blocker) in r.stderr


def test_a_recorded_trial_is_not_overwritten(tmp_path):
    args = ["trial", "--arch", "dln", "--lr", "1e-6", "--steps", "10", "--no-probes", "--results", str(tmp_path)]
    assert bnsweep(*args).returncode == 0
    before = (tmp_path / "trials").iterdir().__next__().stat().st_mtime_ns
    again = bnsweep(*args)
    assert again.returncode == 0 and "already recorded" in again.stdout
    assert next((tmp_path / "trials").iterdir()).stat().st_mtime_ns == before


def test_a_sweep_with_a_layer_its_model_lacks_fails_before_ray_starts(tmp_path):
    sweep = tmp_path / "bad_layer.yaml"
    sweep.write_text("description: a layer the deep linear network lacks\n"
                     "grids: {a: {arch: dln, lr: 1e-6, steps: 5, ics_layers: [9, 30]}}\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("kept")
    r = bnsweep("run", str(sweep), "--scale", "paper", "--results", str(results))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert str(sweep) in lines[0] and "ics_layers=9,30" in lines[0] and "#30" in lines[0] and "1..25" in lines[0]
    assert [p.name for p in results.rglob("*")] == ["notes.txt"]  # no Ray state, no attempt, no record
