"""index.html in a real headless browser (Debian's chromium): no JavaScript error, all nine charts draw marks.

The page under test is the one `bnsweep figures` writes, for a synthetic results set that carries every table.
The test loads a copy with two small scripts added: one first in <head> that records errors (uncaught
exceptions, rejected promises, console.error), one last in <body> that waits for every chart's vegaEmbed
promise and writes, into the DOM, the errors and the number of data marks (not axes or legends) each chart's
Vega scene graph holds; chromium's --dump-dom returns that DOM. A screenshot of the page is kept in
test-artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from analysis.commands import build_all
from analysis.figures import FIGURES
from analysis.html import page
from analysis.load import load
from bnsweep.bench.figures import paper_like, write_fake_trial

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

RECORD_ERRORS = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { window.__errors.push("rejection: " + e.reason); });
var __consoleError = console.error;
console.error = function () {
  window.__errors.push("console.error: " + Array.from(arguments).join(" "));
  __consoleError.apply(console, arguments);
};
</script>"""

REPORT = """<script>
Promise.allSettled(window.bnsweepCharts || []).then(function (settled) {
  var marks = {};
  function count(node) {  // items of data marks only: role "mark", not axis, legend or title parts
    var n = 0;
    if (node.marktype && node.marktype !== "group" && node.role === "mark") n += (node.items || []).length;
    (node.items || []).forEach(function (item) { (item.items || []).forEach(function (m) { n += count(m); }); });
    return n;
  }
  Object.keys(window.bnsweepViews || {}).forEach(function (id) {
    marks[id] = count(window.bnsweepViews[id].scenegraph().root);
  });
  var report = document.createElement("pre");
  report.id = "bnsweep-report";
  report.textContent = JSON.stringify({errors: window.__errors, marks: marks,
                                       settled: settled.map(function (s) { return s.status; })});
  document.body.appendChild(report);
});
</script>"""


def instrument(html: str) -> str:
    head = html.index("<head>") + len("<head>")
    # The embedded Vega bundle contains the text "</body>" in a string: insert before the last one.
    body = html.rindex("</body>")
    return html[:head] + RECORD_ERRORS + html[head:body] + REPORT + html[body:]


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_index_html_draws_all_nine_figures(tmp_path):
    results = tmp_path / "results"
    for f in paper_like():
        write_fake_trial(results, f)
    data = load(results)
    drawn = build_all(data)
    shown = [(d.figure.name, d.figure.title, d.figure.caption, d.spec) for d in drawn if d.spec is not None]
    assert len(shown) == 9
    index = tmp_path / "index.html"
    index.write_text(page("bnsweep figures", str(results), data.trials, shown, []))
    probe = tmp_path / "probe.html"
    probe.write_text(instrument(index.read_text()))

    # Virtual time lets the page finish its promises before the DOM is dumped, without a fixed sleep.
    dom = chromium(tmp_path, "--virtual-time-budget=30000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="bnsweep-report">(.*?)</pre>', dom, re.S)
    assert found, f"the page never reported (chromium output: {dom[-500:]!r})"
    report = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    assert report["errors"] == []
    assert report["settled"] == ["fulfilled"] * 9
    assert set(report["marks"]) == {f.name for f in FIGURES}
    empty = [name for name, n in report["marks"].items() if n == 0]
    assert empty == [], f"charts that drew no marks: {empty}"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "figures_index.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, "--virtual-time-budget=30000", "--hide-scrollbars", "--window-size=1500,9000",
             f"--screenshot={shot}", index.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
