"""analysis/: loading, the nine figures, the claims C1..C6 and the two commands.

The results sets are synthetic but written in the real layout with the real schemas (bnsweep.bench.figures
builds them through bnsweep's own trials_table, curves and probe schemas and records.write_trial), with knobs
that make each claim hold or fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import stat
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import analysis
from analysis import AnalysisError, Thresholds, check_claims, load
from analysis.claims import CONTRADICTED, NO_DATA, SUPPORTED
from analysis.commands import build_all, check, figures
from bnsweep import records
from bnsweep.bench.figures import FakeTrial, fake_trial, paper_like, write_fake_trial
from bnsweep.cli import main as cli

PROBE_TABLES = ("landscape", "ics", "activations", "bn_identity", "layer_norms")


def write_set(root: Path, fakes: list[FakeTrial]) -> str:
    for f in fakes:
        write_fake_trial(root, f)
    return str(root)


def contradicting() -> list[FakeTrial]:
    """Every claim fails: none is the robust, fast, rough-free one; noise does not shift; lp does not train."""
    fakes = []
    for lr in (0.05, 0.1, 0.5):
        batch_fails = lr == 0.5
        fakes += [
            FakeTrial("none", lr, tau=15, final=0.95, ics_l2=1.0, ics_cos=0.6, rough=1.0),
            FakeTrial("batch", lr, tau=60, final=0.9, status="diverged" if batch_fails else "completed",
                      ics_l2=0.1, ics_cos=0.95, rough=3.0),
            FakeTrial("noisy_batch", lr, tau=80, final=0.6, shift=0.02),
            FakeTrial("l2_batch", lr, tau=60, final=0.3),
        ]
    return fakes


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> str:
    return write_set(tmp_path_factory.mktemp("paper"), paper_like())


@pytest.fixture(scope="module")
def contra(tmp_path_factory) -> str:
    return write_set(tmp_path_factory.mktemp("contra"), contradicting())


@pytest.fixture(scope="module")
def minimal(tmp_path_factory) -> str:
    """none and batch at one rate where both train, without probes: most claims and figures lack data."""
    root = tmp_path_factory.mktemp("minimal")
    write_set(root, [FakeTrial("none", 0.1, tau=60, final=0.85), FakeTrial("batch", 0.1, tau=20),
                     FakeTrial("batch", 0.2, status="failed")])
    for name in PROBE_TABLES:
        shutil.rmtree(root / name)
    return str(root)


# -- loading --------------------------------------------------------------------------------------------------

def test_load_types_and_keys(paper):
    data = load(paper)
    assert {"trials", "curves", *PROBE_TABLES} <= set(data)
    t = data.trials
    assert t["lr"].dtype == "float64" and t["seed"].dtype == "int64"
    assert t["norm"].cat.ordered and list(t["norm"].cat.categories) == ["none", "batch", "noisy_batch", "l2_batch"]
    assert list(t["setting"].cat.categories) == ["vgg11", "dln"]  # architecture order, not alphabetical
    assert t.loc[t["arch"] == "vgg11", "etas"].iloc[0] == (0.5, 1.0, 2.0, 4.0)  # JSON text -> tuple
    assert t["trial_id"].is_unique and len(t) == len(paper_like())
    curves = data["curves"]
    for key in ("setting", "arch", "task", "norm", "lr", "seed"):
        assert key in curves
    assert curves["norm"].dtype == t["norm"].dtype and curves["lr"].dtype == "float64"
    one = t.iloc[0]
    rows = curves[curves["trial_id"] == one["trial_id"]]
    assert (rows["lr"] == one["lr"]).all() and (rows["norm"] == one["norm"]).all()
    assert len(rows) == one["steps_done"]


def test_load_while_a_sweep_writes(tmp_path):
    root = tmp_path / "r"
    write_fake_trial(root, FakeTrial("batch", 0.1))
    # A trial still finishing: its curves are published but not its trials row yet; and a half-written file.
    trial_id, tables = fake_trial(FakeTrial("none", 0.1))
    records.write_table(root, "curves", trial_id, tables["curves"])
    (root / "curves" / f".{trial_id}.abc.tmp").write_bytes(b"PAR1 half a file")
    (root / "_ray").mkdir()  # Ray's private state beside the tables
    data = load(root)
    assert len(data.trials) == 1
    assert set(data["curves"]["norm"].astype(str)) == {"batch"}  # the unfinished trial's rows wait for its row
    assert "_ray" not in data


def test_load_and_check_on_s3(tmp_path, monkeypatch):
    """The same results on a real S3 API (moto's server on loopback), read and judged through pyarrow.fs."""

    server_module = __import__("moto.server", fromlist=["server"])
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        import boto3

        host, port = server.get_host_and_port()
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="analysis-test")
        uri = f"s3://analysis-test/sweep?endpoint_override={host}:{port}&scheme=http"
        local = tmp_path / "local"
        for f in (FakeTrial("none", 0.1, tau=60), FakeTrial("batch", 0.1)):
            write_fake_trial(uri, f)
            write_fake_trial(local, f)
        remote = load(uri)
        assert set(remote) == set(load(local))
        assert remote["curves"]["loss"].sum() == pytest.approx(load(local)["curves"]["loss"].sum())
        assert check(uri) == 0
        body = boto3.client("s3", endpoint_url=f"http://{host}:{port}").get_object(
            Bucket="analysis-test", Key="sweep/claims.json")["Body"].read()
        assert json.loads(body)["C2"]["verdict"] == SUPPORTED
    finally:
        server.stop()


def test_load_bad_input(tmp_path, capsys):
    with pytest.raises(AnalysisError, match="does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(AnalysisError, match="is a file"):
        load(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="not a results directory"):
        load(tmp_path / "empty")
    root = tmp_path / "corrupt"
    write_fake_trial(root, FakeTrial("batch", 0.1))
    (root / "trials" / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnalysisError, match="corrupt Parquet file .*broken.parquet"):
        load(root)
    # The CLI prints the one-line error and exits 2, for both commands.
    assert cli(["check", str(tmp_path / "missing")]) == 2
    assert cli(["figures", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("bnsweep: error: ") for line in err)


# -- figures --------------------------------------------------------------------------------------------------

def test_nine_figures_build(paper):
    assert len(analysis.FIGURES) == 9 and len({f.name for f in analysis.FIGURES}) == 9
    drawn = build_all(load(paper), validate=True)
    assert [d.reason for d in drawn if d.spec is None] == []
    for d in drawn:
        assert "\n" not in d.figure.caption and d.figure.caption.endswith(".")
        assert d.spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def _titles(spec: object) -> list[str]:
    """Every y-axis title in a spec, in order."""
    found = []
    if isinstance(spec, dict):
        y = spec.get("encoding", {}).get("y", {})
        if isinstance(y.get("title"), str):
            found.append(y["title"])
        for value in spec.values():
            found += _titles(value)
    elif isinstance(spec, list):
        for value in spec:
            found += _titles(value)
    return found


def test_lr_figure_marks_failures_and_shows_loss_for_regression(paper):
    spec = analysis.figures.fig_lr_robustness(load(paper)).to_dict()
    vgg, dln = spec["vconcat"]
    assert _titles(vgg)[0] == "vgg11: final training accuracy" and "final test accuracy" in _titles(vgg)
    assert _titles(dln)[0] == "dln: final training loss"
    assert not any("accuracy" in t for t in _titles(dln))
    outcomes = {row.get("outcome") for rows in spec["datasets"].values() for row in rows}
    assert {"trained", "diverged", "did not train"} <= outcomes  # failures are drawn, not dropped


def test_figures_skip_what_is_missing(minimal):
    drawn = {d.figure.name: d for d in build_all(load(minimal))}
    assert drawn["fig1_lr_robustness"].spec and drawn["fig2_training_curves"].spec
    rows = [row for rows in drawn["fig1_lr_robustness"].spec["datasets"].values() for row in rows]
    assert any(row.get("outcome") == "failed" for row in rows)  # a crashed trial is drawn, not dropped
    assert "`activations`" in drawn["fig3_activations"].reason
    assert "noisy_batch" in drawn["fig4_noisy_batchnorm"].reason
    assert "`ics`" in drawn["fig5_ics"].reason
    assert "`landscape`" in drawn["fig6_landscape"].reason and "`landscape`" in drawn["fig8_gradient_change"].reason
    assert "l2_batch" in drawn["fig7_lp_variants"].reason
    assert "`bn_identity`" in drawn["fig9_bn_identity"].reason


def test_figures_command(minimal, tmp_path, capsys):
    out = tmp_path / "figs"
    assert figures(minimal, str(out)) == 0
    printed = capsys.readouterr().out
    assert "skipped fig5_ics (Internal covariate shift): needs the `ics` table" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fig1_lr_robustness.png", "fig1_lr_robustness.svg", "fig2_training_curves.png",
                     "fig2_training_curves.svg", "index.html"]
    assert (out / "fig1_lr_robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (out / "fig2_training_curves.svg").read_text()[:500]
    page = (out / "index.html").read_text()
    assert page.count("window.vegaEmbed=") == 1 and "<script src" not in page  # Vega embedded once, offline
    assert analysis.FIGURES[0].caption.split(",")[0] in page
    assert "Sweep configuration" in page and "fashion-mnist" in page and "needs the `ics` table" in page
    # Default output directory: RESULTS/figures.
    assert figures(minimal, None) == 0 and (Path(minimal) / "figures" / "index.html").exists()


# -- claims ---------------------------------------------------------------------------------------------------

def verdicts(results: str, thresholds: Thresholds | None = None) -> dict[str, str]:
    """The paper's claims C1..C6 (the claims beyond it have tests of their own: tests/test_dynamics.py)."""
    paper_claims = ("C1", "C2", "C3", "C4", "C5", "C6")
    return {c.key: c.verdict for c in check_claims(load(results), thresholds) if c.key in paper_claims}


def test_claims_supported(paper):
    assert verdicts(paper) == dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6"), SUPPORTED)


def test_claims_contradicted(contra):
    assert verdicts(contra) == dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6"), CONTRADICTED)


def test_claims_without_enough_data(minimal):
    # none trains at the only rate tried (C1 cannot tell); C2 can be judged; nothing else was measured.
    assert verdicts(minimal) == {"C1": NO_DATA, "C2": SUPPORTED, "C3": NO_DATA, "C4": NO_DATA, "C5": NO_DATA,
                                 "C6": NO_DATA}


def test_claims_rejudge_trained(paper):
    # With bars no trial reaches, no variant trains anywhere: C1 has nothing to compare.
    assert verdicts(paper, Thresholds(trained_acc=0.99, trained_loss_fraction=1e-9))["C1"] == NO_DATA
    # Held to a bar batch reaches at every rate and none never does, C1 still holds.
    assert verdicts(paper, Thresholds(trained_acc=0.9))["C1"] == SUPPORTED


def test_claim_c3_needs_the_noise_to_shift_activations(tmp_path):
    quiet = [replace(f, shift=0.02) if f.norm == "noisy_batch" else f for f in paper_like()]
    claims = {c.key: c for c in check_claims(load(write_set(tmp_path, quiet)))}
    assert claims["C3"].verdict == CONTRADICTED
    assert all(case["shift_ratio"] < 1.5 for case in claims["C3"].cases)


def test_claim_c5_gives_eta_beta_eff(paper):
    """C5's numbers carry eta * beta_eff per variant (the rate times the median effective smoothness) and the
    stability limit 2(1 + momentum) it is read against; the verdict does not depend on them."""
    c5 = next(c for c in check_claims(load(paper)) if c.key == "C5")
    assert c5.cases
    for case in c5.cases:
        for norm in ("batch", "none"):
            assert case["eta_beta_eff"][norm] == pytest.approx(case["lr"] * case[f"median_{norm}"]["beta_eff"])
        assert "eta*beta_eff" in case["why"] and "(stable below 2)" in case["why"]
    assert "eta_beta_eff.batch" in c5.cases[0]["over_seeds"]


def test_check_command(paper, capsys):
    assert check(paper) == 0
    printed = capsys.readouterr().out
    assert "C1    supported" in printed and "case_quorum = 0.75" in printed  # verdicts and thresholds
    document = json.loads((Path(paper) / "claims.json").read_text())
    assert [k for k in document if k.startswith("C")][:6] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert {"C10", "C11", "C12"} <= set(document)  # judged too, "not enough data" here
    c1 = document["C1"]
    assert c1["verdict"] == SUPPORTED and c1["cases"][0]["largest_lr_trained"]["batch"] == 0.5
    assert document["thresholds"]["speed_fraction"] == 0.9
    assert cli(["check", paper]) == 0


def test_frames_are_tidy_for_pandas_users(paper):
    """The documented use: group a probe table by the key columns without joining anything."""
    ics = load(paper)["ics"]
    medians = ics.groupby(["setting", "norm", "lr"], observed=True)["l2_diff"].median()
    assert isinstance(medians, pd.Series) and medians.index.names == ["setting", "norm", "lr"]


def test_lp_and_noisy_figures_draw_when_the_reference_rate_is_off_their_grid(tmp_path):
    # The reference rate (none and batch both train) is 0.1 here, but the lp variants ran only at 0.05 and noisy
    # BatchNorm only at 0.5: the figures use the measured rate nearest the reference, and say which.
    fakes = [f for f in paper_like() if not (f.norm == "l2_batch" and f.lr != 0.05)
             and not (f.norm == "noisy_batch" and f.lr != 0.5)]
    results = load(write_set(tmp_path, fakes))
    assert analysis.aggregate.reference_lr(results["trials"], "vgg11") == 0.1
    drawn = {d.figure.name: d for d in build_all(results)}
    for name, lr, norm in (("fig7_lp_variants", 0.05, "l2_batch"), ("fig4_noisy_batchnorm", 0.5, "noisy_batch")):
        assert drawn[name].spec is not None, drawn[name].reason
        rows = [row for rows in drawn[name].spec["datasets"].values() for row in rows]
        assert {row["lr"] for row in rows} == {lr} and norm in {row["norm"] for row in rows}


# -- outputs written whole, never through a planted link (issue 22, item 4) ----------------------------------

def _copy_set(source: str, tmp_path: Path) -> Path:
    """The results of `source` without what earlier tests wrote there (figures/, claims.json)."""
    out = tmp_path / "r"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("figures", "claims.json"))
    return out


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("command", ["check", "figures"])
def test_a_symlinked_output_is_refused_and_its_target_untouched(minimal, tmp_path, capsys, command):
    results = _copy_set(minimal, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    name = "claims.json" if command == "check" else "figures/index.html"
    (results / name).parent.mkdir(exist_ok=True)
    (results / name).symlink_to(victim)
    assert cli([command, str(results)]) == 2
    line = _one_line(capsys)
    assert name.rsplit("/", 1)[-1] in line and "symbolic link" in line
    assert victim.read_text() == "precious" and (results / name).is_symlink()


def test_a_symlinked_default_figures_directory_is_refused(minimal, tmp_path, capsys):
    results = _copy_set(minimal, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (results / "figures").symlink_to(elsewhere)
    assert cli(["figures", str(results)]) == 2
    assert "symbolic link" in _one_line(capsys) and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("command", ["check", "figures"])
def test_a_fifo_output_is_refused_without_hanging(minimal, tmp_path, capsys, command):
    """A reader holds the FIFO open (O_RDWR never blocks) with a large pipe buffer, so a writer that followed it
    would finish, not hang; the FIFO must be refused all the same."""
    results = _copy_set(minimal, tmp_path)
    fifo = results / ("claims.json" if command == "check" else "figures/fig1_lr_robustness.svg")
    fifo.parent.mkdir(exist_ok=True)
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        assert cli([command, str(results)]) == 2
    finally:
        os.close(reader)
    line = _one_line(capsys)
    assert fifo.name in line and "not a regular file" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@contextlib.contextmanager
def _file_size_limit(limit: int):
    """Every write of this process past `limit` bytes of a file fails with EFBIG, as on a disk that fills up
    part-way through a file (SIGXFSZ ignored, so the write returns the error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("command", ["check", "figures"])
def test_a_write_failing_midway_leaves_the_earlier_outputs_whole(minimal, tmp_path, capsys, command):
    results = _copy_set(minimal, tmp_path)
    assert cli([command, str(results)]) == 0
    outputs = [results / "claims.json"] if command == "check" else sorted((results / "figures").iterdir())
    before = {p: p.read_bytes() for p in outputs}
    assert all(len(b) > 1500 for b in before.values())
    capsys.readouterr()
    with _file_size_limit(1000):  # every output is larger: each write fails after its first 1000 bytes
        code = cli([command, str(results)])
    assert code == 2
    assert {p: p.read_bytes() for p in outputs} == before  # every earlier file whole
    line = _one_line(capsys)
    assert "File too large" in line and ("unchanged" in line or "as they were" in line), line
    assert not [p for p in outputs[0].parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
