import json
import subprocess
import sys
from pathlib import Path

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


# -- results locations (issue 22, item 9) ---------------------------------------------------------------------

SECRET_URIS = ["s3://AKIAEXAMPLE:s3cr3t@bucket/x", "s3://bucket/x?access_key=AKIAEXAMPLE&secret_key=s3cr3t"]


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    from bnsweep.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def location_commands(results: str) -> list[list[str]]:
    return [["run", "lr_grid", "--scale", "smoke", "--dry-run", "--results", results],
            ["trial", "--steps", "5", "--results", results], ["status", results], ["figures", results],
            ["check", results]]


@pytest.mark.parametrize("args", location_commands("mock://x/y"), ids=lambda a: a[0])
def test_a_results_location_of_another_scheme_is_refused_in_one_line(capsys, args):
    code, _, err = in_process(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'mock'" in err and "s3://" in err and "file://" in err


@pytest.mark.parametrize("uri", SECRET_URIS)
@pytest.mark.parametrize("command", ["run", "trial", "status", "figures", "check"])
def test_credentials_in_a_results_uri_are_refused_and_never_echoed(capsys, uri, command):
    args = next(a for a in location_commands(uri) if a[0] == command)
    code, out, err = in_process(capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "credentials" in err and "AWS_ACCESS_KEY_ID" in err
    assert "AKIAEXAMPLE" not in out + err and "s3cr3t" not in out + err


def test_the_analysis_and_the_python_api_apply_the_same_rule():
    from analysis.load import AnalysisError, load
    from bnsweep import run_sweep
    from bnsweep.errors import BnsweepError

    for uri in ["mock://x/y", *SECRET_URIS]:
        with pytest.raises(AnalysisError) as e:
            load(uri)
        assert "s3cr3t" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)
        with pytest.raises(BnsweepError) as e:
            run_sweep("lr_grid", scale="smoke", results=uri, dry_run=True)
        assert "s3cr3t" not in str(e.value) and "AKIAEXAMPLE" not in str(e.value)


@pytest.mark.parametrize("name", ["...yaml", "..yaml"])
def test_a_sweep_file_name_cannot_make_the_results_the_current_directory(tmp_path, capsys, monkeypatch, name):
    sweep = tmp_path / "work" / name
    sweep.parent.mkdir()
    sweep.write_text("description: d\nbase: {arch: dln, lr: 1e-6, steps: 5}\ngrids: {a: {}}\nscales: {smoke: {}}\n")
    monkeypatch.chdir(sweep.parent)
    code, out, err = in_process(capsys, "run", str(sweep), "--scale", "smoke", "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1, out + err
    assert f"its name {Path(name).stem!r} cannot name a directory" in err
    assert sorted(p.name for p in sweep.parent.iterdir()) == [name]


# -- the terminal (issue 22, item 10) -------------------------------------------------------------------------

HOSTILE = "d\x1b[2J\x1b]0;owned\x07\u202eevil\x9b31m\u2028x"


def assert_escaped(text: str) -> None:
    assert "\\x1b[2J" in text and "\\u202e" in text
    assert not any(c in text for c in "\x1b\x07\u202e\x9b\u2028"), repr(text)


def test_a_sweeps_description_is_printed_escaped(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "hostile.yaml"
    sweep.write_text(f"description: {json.dumps(HOSTILE)}\nbase: {{arch: dln, lr: 1e-6, steps: 5}}\n"
                     "grids: {a: {}}\nscales: {smoke: {}, cpu: {}}\n")
    code, out, _ = in_process(capsys, "run", str(sweep), "--scale", "smoke", "--dry-run")
    assert code == 0
    assert_escaped(out)
    monkeypatch.setattr("bnsweep.sweep.sweeps_dir", lambda: tmp_path)
    code, out, _ = in_process(capsys, "sweeps")
    assert code == 0 and "hostile: d\\x1b[2J" in out
    assert_escaped(out)


def test_an_error_line_prints_a_file_name_escaped(tmp_path, capsys):
    sweep = tmp_path / "a\x1b[2Jb.yaml"
    sweep.write_text("description: no smoke block\nbase: {arch: dln, lr: 1e-6, steps: 5}\ngrids: {a: {}}\n")
    code, _, err = in_process(capsys, "run", str(sweep), "--scale", "smoke", "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "a\\x1b[2Jb.yaml" in err and "\x1b" not in err


def test_status_prints_a_recorded_error_escaped(tmp_path, capsys):
    import pyarrow as pa

    from bnsweep import records

    trial_id = "dln-batch-lr1e-06-s0-0123456789"
    records.write_trial(tmp_path, trial_id, {"trials": pa.table({
        "trial_id": [trial_id], "status": ["failed"], "arch": ["dln"], "norm": ["batch"], "trained": [False],
        "error": [f"RuntimeError: {HOSTILE}"], "schema_version": [records.SCHEMA_VERSION]})})
    code, out, _ = in_process(capsys, "status", str(tmp_path))
    assert code == 0 and f"failed {trial_id}: RuntimeError: d\\x1b[2J" in out
    assert_escaped(out)
