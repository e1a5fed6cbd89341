"""`bnsweep figures` and `bnsweep check`: the command-line faces of the figures and the claims.

bnsweep's CLI calls these; they return the exit code and raise AnalysisError for bad input (the CLI prints it
and exits 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
import uuid
from dataclasses import dataclass

import altair as alt
import pyarrow as pa
import pyarrow.fs as pafs
import vl_convert as vlc

from analysis import critical_lr
from analysis.claims import Thresholds, check_claims, claims_table
from analysis.figures import EXTRA_FIGURES, FIGURES, Figure, MissingData, band_caption
from analysis.html import page, vegalite_version
from analysis.load import AnalysisError, Results, child, filesystem, load
from analysis.seeds import seeds_in

SEED_RULE = ("each claim is judged on every seed alone and on all together; over several seeds it is supported "
             "(contradicted) when at least seed_agreement of the seeds that could be judged support (contradict) it, "
             "'seeds disagree' otherwise; one seed: that seed's verdict")
PNG_SCALE = 2  # PNGs at twice the chart's pixel size: sharp on a slide or a high-density screen


@dataclass
class Drawn:
    figure: Figure
    spec: dict | None  # the Vega-Lite spec, or None when the figure was skipped
    reason: str = ""  # why it was skipped
    band: str = ""  # which band over seeds it draws here (a sentence for the caption), if it draws one
    band_short: str = ""  # the same in a few words, for the terminal

    @property
    def caption(self) -> str:
        return f"{self.figure.caption} {self.band}".strip()


def build_all(data: Results, validate: bool = False) -> list[Drawn]:
    """Every figure's Vega-Lite spec (aggregation + chart + spec), or the reason it cannot be drawn; then each
    of EXTRA_FIGURES whose table the results hold (the others are left out, not reported as skipped).

    `validate` checks each spec against the Vega-Lite JSON schema (the tests do; it costs about a second, and
    vl-convert and the page compile the spec anyway)."""
    drawn = []
    for fig in [*FIGURES, *EXTRA_FIGURES]:
        try:
            chart = fig.build(data)
        except MissingData as e:
            if fig not in EXTRA_FIGURES:
                drawn.append(Drawn(fig, None, str(e)))
            continue
        # The data are aggregated already; the row limit guards notebooks, not these few-thousand-row specs.
        with alt.data_transformers.disable_max_rows():
            drawn.append(Drawn(fig, chart.to_dict(validate=validate), band=band_caption(fig, data),
                               band_short=band_caption(fig, data, short=True)))
    return drawn


def export(spec: dict) -> tuple[str, bytes]:
    """SVG text and PNG bytes of a spec: compiled to Vega once, rendered to SVG once, rasterised from it."""
    vega = vlc.vegalite_to_vega(spec, vl_version=vegalite_version())
    svg = vlc.vega_to_svg(vega)
    return svg, vlc.svg_to_png(svg, scale=PNG_SCALE)


def refuse_special(path: str) -> None:
    """A local output that exists must be a regular file: a symlink planted in a shared results directory would
    point the write at a file elsewhere, and a FIFO would hang it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise AnalysisError(f"{path} is a symbolic link: remove it (bnsweep writes its outputs itself and never "
                            "writes through a link)")
    if not stat.S_ISREG(mode):
        raise AnalysisError(f"{path} exists and is not a regular file: remove or rename it")


def publish(fs, path: str, data: bytes | str) -> None:
    """Write one output whole or not at all. On a local disk: beside its target under a dot-prefixed temporary
    name, then renamed over it, so a full disk leaves the previous file as it was; on S3 a single PUT, which is
    atomic already. An OSError or ArrowException is the caller's to word."""
    payload = data.encode() if isinstance(data, str) else data
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as f:
            f.write(payload)
        return
    refuse_special(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        # O_EXCL | O_NOFOLLOW: the temporary is a new file of ours, never something planted under its name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces the name itself: a link swapped in since the check is not followed
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _reason(e: BaseException) -> str:
    """The one-line reason of an I/O error ("No space left on device"), also from pyarrow's wordier messages."""
    text = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    detail = re.search(r"\[errno \d+\] (.+)", text)
    return detail.group(1) if detail else text


def _publish_figure(fs, out: str, path: str, data: bytes | str) -> None:
    try:
        publish(fs, path, data)
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"cannot write {path} ({_reason(e)}): free space or choose a writable --out; no file in "
                            f"{out} is half-written (those before it are new, it and those after are as they were)"
                            ) from None


def figures(results: str, out: str | None) -> int:
    """Write each drawable figure as PNG and SVG in OUT (default RESULTS/figures) and an offline index.html."""
    data = load(results)
    fs, root = filesystem(out or child(results, "figures"))
    if out is None and isinstance(fs, pafs.LocalFileSystem) and os.path.islink(root):
        raise AnalysisError(f"{root} is a symbolic link: remove it, or pass --out to choose where the figures go")
    out = out or child(results, "figures")
    try:
        fs.create_dir(root, recursive=True)
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"cannot write figures to {out!r} ({str(e).splitlines()[0]}): choose a writable "
                            "--out directory") from None
    start = time.perf_counter()
    drawn = build_all(data)
    built = time.perf_counter()
    shown, skipped = [], []
    for d in drawn:
        fig = d.figure
        if d.spec is None:
            print(f"skipped {fig.name} ({fig.title}): {d.reason}")
            skipped.append((fig.name, fig.title, d.reason))
            continue
        svg, png = export(d.spec)
        _publish_figure(fs, out, f"{root}/{fig.name}.svg", svg)
        _publish_figure(fs, out, f"{root}/{fig.name}.png", png)
        shown.append((fig.name, fig.title, d.caption, d.spec))
        print(f"{fig.name}.png/.svg  {fig.title}" + (f"  [{d.band_short}]" if d.band_short else ""))
    title = f"bnsweep figures: {str(results).partition('?')[0]}"
    _publish_figure(fs, out, f"{root}/index.html", page(title, str(results), data.trials, shown, skipped))
    left_out = f" ({len(skipped)} skipped)" if skipped else ""  # "skipped" only when one was: scripts grep it
    print(f"{len(shown)} figures{left_out} and index.html in {out} "
          f"[built in {built - start:.1f}s, exported in {time.perf_counter() - built:.1f}s]")
    return 0


def check(results: str, thresholds: Thresholds | None = None) -> int:
    """Judge the claims on the results, per seed and over seeds, print the table (and a search's critical learning
    rates over seeds) and write RESULTS/claims.json; 0 whatever the verdicts."""
    data = load(results)
    thresholds = thresholds or Thresholds()
    claims = check_claims(data, thresholds)
    boot = thresholds.bootstrap()
    fs, root = filesystem(results)
    target = child(results, "claims.json")
    document = {**{c.key: c.as_dict() for c in claims}, "thresholds": thresholds.as_dict(),
                "bootstrap": boot.as_dict(), "seeds": seeds_in(data), "seed_rule": SEED_RULE,
                "results": str(results), "trials": len(data.trials)}
    if data.has("boundaries"):
        document["critical_lr"] = critical_lr.as_json(data, boot)
    try:
        publish(fs, f"{root}/claims.json", json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"cannot write claims.json in {str(results)!r} ({_reason(e)}): free space or make the "
                            "results directory writable; the claims.json there before is unchanged") from None
    # Written before anything is printed, so a closed pipe (`| head`) cannot lose it.
    print(claims_table(claims, thresholds, more=critical_lr.report(data, boot)))
    print(f"wrote {target.partition('?')[0]}")
    return 0
