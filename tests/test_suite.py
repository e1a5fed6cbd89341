"""`bnsweep run science`: a suite of sweeps run one after another into RESULTS/<sweep>, each with its figures and
check, one RESULTS/index.html with every claim's verdict, resumed like any sweep (issue 20, item 6)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from analysis import check_claims, load
from analysis.claims import CHECKS, EXTRA_CHECKS
from bnsweep import cli
from bnsweep.errors import BnsweepError
from bnsweep.suite import find_suite, load_suite, run_suite
from bnsweep.sweep import available, sweeps_dir
from bnsweep.sweep import load as load_sweep

SWEEPS = Path(__file__).parent / "sweeps"


def main(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_suite(folder: Path, body: str) -> Path:
    """Two one-trial sweeps (tests/sweeps/tiny.yaml at two rates) beside a suite file listing them by path."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny = (SWEEPS / "tiny.yaml").read_text()
    (folder / "tiny.yaml").write_text(tiny)
    (folder / "tiny_b.yaml").write_text(tiny.replace("lr: 1e-6", "lr: 1e-5"))
    path = folder / "two.yaml"
    path.write_text(body)
    return path


TWO = "description: two tiny sweeps\nsuite:\n  tiny.yaml: [C1]\n  tiny_b.yaml: [C10, C12]\n"


def test_science_is_listed_and_every_claim_has_a_sweep_in_it():
    code, out, _ = main("sweeps", "--scale", "smoke")
    assert code == 0 and "science: " in out and "eos (C10)" in out
    assert "science" not in available()  # a suite is not a sweep: `bnsweep run science --dry-run` lists each
    science = load_suite(find_suite("science"))
    named = {c for claims in science.sweeps.values() for c in claims}
    registered = {check.__name__.split("_")[0].upper() for check in (*CHECKS, *EXTRA_CHECKS)}
    assert registered <= named, f"claims without a sweep in sweeps/science.yaml: {sorted(registered - named)}"
    code, out, _ = main("run", "science", "--scale", "smoke", "--dry-run")
    assert code == 0 and all(f"] {stem} (" in out for stem in science.sweeps)


def test_a_suite_runs_each_sweep_then_figures_check_and_one_page_and_resumes(tmp_path):
    suite, results = write_suite(tmp_path / "suite", TWO), tmp_path / "r"
    out = io.StringIO()
    run_suite(str(suite), scale="smoke", results=str(results), num_cpus=1, stream=out)
    for stem in ("tiny", "tiny_b"):
        assert len(list((results / stem / "trials").iterdir())) == 1
        assert (results / stem / "figures" / "index.html").is_file()
        assert "C10" in json.loads((results / stem / "claims.json").read_text())
        assert "thresholds" in (results / stem / "check.txt").read_text()
    page = (results / "index.html").read_text()
    for claim in check_claims(load(results / "tiny")):
        assert f"<b>{claim.key}</b>" in page  # every claim's verdict on the one page
    assert 'href="tiny/figures/index.html"' in page and 'href="tiny_b/claims.json"' in page
    assert set(json.loads((results / "suite.json").read_text())["wall_s"]) == {"tiny", "tiny_b"}
    assert "all 2 sweeps done" in out.getvalue()

    # Interrupted before its second sweep: the same command runs only what is missing.
    recorded = {p: p.stat().st_mtime_ns for p in (results / "tiny" / "trials").iterdir()}
    shutil.rmtree(results / "tiny_b")
    out = io.StringIO()
    run_suite(str(suite), scale="smoke", results=str(results), num_cpus=1, stream=out)
    assert "1 of 1 trials already recorded, 0 to run" in out.getvalue()
    assert {p: p.stat().st_mtime_ns for p in (results / "tiny" / "trials").iterdir()} == recorded
    assert (results / "tiny_b" / "claims.json").is_file() and "tiny_b" in (results / "index.html").read_text()


@pytest.mark.parametrize("body, words", [
    ("suite:\n  no_such_sweep: [C1]\n", ["suite.no_such_sweep", "unknown sweep"]),
    ("suite:\n  tiny.yaml: [C1, C0]\n", ["suite.tiny.yaml", "claim keys"]),
    ("suite:\n  tiny.yaml: C1\n", ["suite.tiny.yaml", "claim keys"]),
    ("suite: []\n", ["suite: a mapping"]),
    ("suite:\n  tiny.yaml: [C1]\ngrids: {}\n", ["unknown key", "grids"]),
    ("suite:\n  tiny.yaml: [C1]\n  ./tiny.yaml: [C2]\n", ["share the results folder"]),
])
def test_a_bad_suite_is_one_line_and_writes_nothing(tmp_path, body, words):
    suite, results = write_suite(tmp_path / "suite", body), tmp_path / "r"
    code, _, err = main("run", str(suite), "--scale", "smoke", "--results", str(results))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert not results.exists()


def test_bad_run_options_of_a_suite_are_one_line_before_anything_runs(tmp_path):
    results = tmp_path / "r"
    for args, word in ((["--scale", "huge"], "huge"), (["--set", "no_such_option=1"], "no_such_option")):
        code, _, err = main("run", "science", "--results", str(results), *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, err
    assert not results.exists()
    with pytest.raises(BnsweepError, match="suite of sweeps"):  # a suite read as a sweep says what it is
        load_sweep(str(sweeps_dir() / "science.yaml"), "smoke")
