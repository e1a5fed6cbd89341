"""`bnsweep compare A B` on real results directories: trials run by `bnsweep trial` (the linear model on its
generated quadratic, a few milliseconds each), with a critical-rate bracket in the real `boundaries` schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnsweep import records
from bnsweep.cli import main as cli
from bnsweep.schema import BOUNDARIES_SCHEMA


def run_trials(root: Path, curvature: float, lrs: tuple[float, ...] = (0.1, 1.0)) -> str:
    """Real trials of the linear model: with curvature 1, GD trains below lr 2; with curvature 4, below 0.5."""
    for lr in lrs:
        assert cli(["trial", "--arch", "linear", "--norm", "none", "--lr", str(lr), "--curvature", str(curvature),
                    "--steps", "50", "--threads", "1", "--results", str(root)]) == 0
    return str(root)


def write_bracket(root: str, lower: float, upper: float) -> None:
    row = dict.fromkeys(BOUNDARIES_SCHEMA.names)
    row.update(sweep="t", scale="smoke", cell_id="linear-none-seeds", all_seeds=True, arch="linear", norm="none",
               width=1.0, dataset="quadratic", seed=-1, seeds=1, steps=30, batch_size=0, curvature=1.0, cell="{}",
               lower=lower, upper=upper, ratio=upper / lower, lower_min=lower, upper_max=upper, trials_used=4,
               rounds=2, monotone=True, failed_below=0, converged=True, budget_exhausted=False, target_ratio=1.25,
               budget=8, fixed_grid_trials=2)
    records.write_table(root, "boundaries", row["cell_id"], pa.Table.from_pylist([row], schema=BOUNDARIES_SCHEMA))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    """A (curvature 1, judged by `bnsweep check`) and B (curvature 4: lr 1 diverges; never checked)."""
    base = tmp_path_factory.mktemp("compare")
    a, b = run_trials(base / "A", 1.0), run_trials(base / "B", 4.0)
    write_bracket(a, 1.8, 2.2)
    write_bracket(b, 0.45, 0.55)
    assert cli(["check", a]) == 0
    return a, b


def snapshot(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def row(out: str, section: str, item: str) -> list[str]:
    """The terminal table's row of `item` in `section`, split on runs of two spaces."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        if section in cells and item in cells:
            return cells
    raise AssertionError(f"no row {section} {item} in:\n{out}")


def test_compare_prints_what_differs_and_writes_compare_html(pair, tmp_path, capsys):
    a, b = pair
    before = snapshot(a), snapshot(b)
    capsys.readouterr()
    assert cli(["compare", a, b, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert row(out, "config", "curvature") == ["≠", "config", "curvature", "1", "4"]
    assert row(out, "provenance", "precision") == ["provenance", "precision", "fp32", "fp32"]  # the same
    assert row(out, "provenance", "device_type") == ["provenance", "device_type", "cpu", "cpu"]
    assert row(out, "claims", "verdicts from") == ["≠", "claims", "verdicts from", "claims.json",
                                                   "judged now (no claims.json)"]
    assert row(out, "claims", "C1")[0] == "claims"  # every claim is listed, also where the verdicts agree
    cell = row(out, "cells", "linear none lr=1")
    assert cell[0] == "≠" and cell[3].startswith("1/1 trained") and "0/1 trained, 1 diverged" in cell[4]
    assert "lr=0.1" not in out  # trained on both sides: counted, not listed
    assert "cells: 1 of 2 differ" in out
    assert row(out, "brackets", "linear none quadratic batch 0 (all seeds)")[-2:] == ["[1.8, 2.2]", "[0.45, 0.55]"]
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "linear none lr=0.1" in page and "[0.45, 0.55]" in page and 'class="differs"' in page
    assert (snapshot(a), snapshot(b)) == before  # nothing in A or B written, B's claims judged in memory


def test_a_stale_claims_json_is_judged_afresh(pair, tmp_path, capsys):
    a = str(tmp_path / "A")
    shutil.copytree(pair[0], a)
    run_trials(Path(a), 1.0, lrs=(0.5,))  # a trial recorded since `bnsweep check` ran
    assert cli(["compare", a, pair[1], "--out", str(tmp_path)]) == 0
    assert row(capsys.readouterr().out, "claims", "verdicts from")[3] == (
        "judged now (claims.json: 2 of 3 trials)")


def test_the_claims_json_trusted_is_the_one_on_disk(pair, tmp_path, capsys):
    """A current claims.json is read, not re-judged: its verdict is what the table shows."""
    a = str(tmp_path / "A")
    shutil.copytree(pair[0], a)
    document = json.loads((Path(a) / "claims.json").read_text())
    document["C1"].update(verdict="supported", verdict_line="supported, 1 seed")
    (Path(a) / "claims.json").write_text(json.dumps(document))
    assert cli(["compare", a, pair[1], "--out", str(tmp_path)]) == 0
    assert row(capsys.readouterr().out, "claims", "C1") == ["≠", "claims", "C1", "supported, 1 seed",
                                                           "not enough data, 1 seed"]


def corrupt_parquet(root: Path) -> None:
    next((root / "trials").glob("*.parquet")).write_bytes(b"PAR1 not a parquet file")


def corrupt_claims(root: Path) -> None:
    (root / "claims.json").write_text('{"C1": {"verdict": ')


@pytest.mark.parametrize(("damage", "words"), [
    (lambda b: shutil.rmtree(b), "does not exist"),
    (lambda b: [shutil.rmtree(p) for p in b.iterdir() if p.is_dir()], "is not a results directory"),
    (corrupt_parquet, "corrupt Parquet file"),
    (corrupt_claims, "claims.json is unreadable"),
    (lambda b: pq.write_table(pa.table({"x": [1]}), b / "trials" / "other.parquet"), "other.parquet"),
    (lambda b: (b / "claims.json").write_text("[1, 2]"), "not a claims.json"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(pair, tmp_path, capsys, damage, words):
    b = tmp_path / "B"
    shutil.copytree(pair[0], b)
    damage(b)
    capsys.readouterr()
    assert cli(["compare", pair[0], str(b), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert captured.err.startswith("bnsweep: error: B: ") and words in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_an_empty_or_credentialed_location_is_one_line(pair, capsys):
    assert cli(["compare", "", pair[1]]) == 2
    assert cli(["compare", pair[0], "s3://key:secret@bucket/b"]) == 2
    first, second = capsys.readouterr().err.strip().splitlines()
    assert "A" in first and "empty" in first
    assert "credentials" in second and "secret" not in second


def test_compare_html_in_a_is_never_replaced_and_the_default_is_the_current_directory(pair, tmp_path, capsys,
                                                                                     monkeypatch):
    a = tmp_path / "A"
    shutil.copytree(pair[0], a)
    (a / "compare.html").write_text("the researcher's notes")
    assert cli(["compare", str(a), pair[1], "--out", str(a)]) == 2
    assert "exists inside A" in capsys.readouterr().err
    assert (a / "compare.html").read_text() == "the researcher's notes"
    monkeypatch.chdir(tmp_path)
    assert cli(["compare", str(a), pair[1]]) == 0
    assert "wrote ./compare.html" in capsys.readouterr().out
    assert "linear none lr=1" in (tmp_path / "compare.html").read_text()


def test_a_trial_records_its_precision(pair):
    """`precision` in the trials table with the TF32 settings in force (bnsweep/numerics.py), which compare shows."""
    table = pq.read_table(next((Path(pair[0]) / "trials").glob("*.parquet")))
    assert table.column("precision").to_pylist() == ["fp32"]
    assert table.column("matmul_fp32_precision").to_pylist() == ["ieee"]


def test_outcomes_and_verdicts_are_compared_not_their_seed_counts(tmp_path, capsys):
    """The bench's paper-like set (two seeds) against one seed where every claim fails: 2/2 trained and 1/1 trained
    are the same outcome, "not enough data" over 2 seeds and over 1 the same verdict; a flipped claim differs."""
    from bnsweep.bench.figures import FakeTrial, paper_like, write_fake_trial

    a, b = tmp_path / "paper", tmp_path / "one_seed"
    for fake in paper_like():
        write_fake_trial(a, fake)
    for lr in (0.05, 0.1, 0.5):
        write_fake_trial(b, FakeTrial("none", lr, tau=15, final=0.95, rough=1.0))
        write_fake_trial(b, FakeTrial("batch", lr, tau=60, final=0.9, status="diverged" if lr == 0.5 else "completed",
                                      rough=3.0))
    assert cli(["compare", str(a), str(b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert row(out, "claims", "C1")[0] == "≠"
    assert row(out, "claims", "C7") == ["claims", "C7", "not enough data, 0 of 2 seeds", "not enough data, 1 seed"]
    assert row(out, "cells", "vgg11 batch lr=0.5")[0] == "≠"
    assert "vgg11 batch lr=0.1" not in out  # 2/2 trained in A, 1/1 in B: the same outcome
    assert "vgg11 batch lr=0.1" in (tmp_path / "compare.html").read_text()
