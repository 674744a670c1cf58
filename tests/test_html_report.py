"""The HTML report: the committed tables rendered to pages (nabla.report.html_tables), and the whole
report built from a copy of results/ and opened in a real headless Chromium (Debian's `chromium`,
installed by .ci/run; the browser test is skipped only where it is missing), where every committed
figure must load as an image and every table must render in its frame.

Chromium is driven through the DevTools protocol over a pipe (--remote-debugging-pipe: NUL-separated
JSON on file descriptors 3 and 4), with the standard library alone.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nabla.report.html_tables import markdown_to_html, page_path, selection_to_html, table_page, title_of

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BUILD = ["--cores", "1", "--report", "results/report.html", "--report-after-run", "report_inputs"]


# -- the pages ------------------------------------------------------------------------------------
def test_a_pipe_table_keeps_its_alignment_and_escapes_its_cells():
    text = ("tiny, release protocol: a <caption> & more\n\n| method | reward |\n|:--|--:|\n"
            "| residual ∇-DB | 0.315 ± 0.00887 |\n| `a|b` <x> | – |\n")
    page = markdown_to_html(text)
    assert "<p>tiny, release protocol: a &lt;caption&gt; &amp; more</p>" in page
    assert '<th style="text-align: left">method</th><th style="text-align: right">reward</th>' in page
    assert '<td style="text-align: right" class="num">0.315 ± 0.00887</td>' in page
    assert "<code>a</code>" not in page and "&lt;x&gt;" in page and page.count("<tr>") == 3


def test_headings_lists_code_and_links_render():
    page = markdown_to_html("### toy2d: 40 rounds\n\n- `release/`: 42 runs\n- a [link](https://x.org/?a=1&b=2)\n\n"
                            "    snakemake --cores all\n\nafter **that**\n")
    assert "<h4>toy2d: 40 rounds</h4>" in page
    assert "<li><code>release/</code>: 42 runs</li>" in page
    assert '<a href="https://x.org/?a=1&amp;b=2" target="_blank">link</a>' in page
    assert "<pre>snakemake --cores all</pre>" in page and "<p>after <strong>that</strong></p>" in page


def test_the_selection_lists_each_methods_chosen_point_and_keeps_the_file():
    text = ("rule: the lowest divergence at the level\nlevel: 0.5\nrewards:\n  linear:\n    levels: {prior_reward: 0.1,"
            " reference_reward: 0.9, level_reward: 0.5}\n    methods:\n      ddpo:\n        settings: {lr: 0.004}\n"
            "        point: p3\n        why: lowest energy distance\n        edges: {lr: high edge}\n")
    page = selection_to_html(text)
    assert "<td>ddpo</td><td>p3</td><td>lr = 0.004</td><td>lowest energy distance</td><td>lr: high edge</td>" in page
    assert "Levels (matched fraction 0.5)" in page and "<pre>rule: the lowest divergence" in page


def test_every_committed_table_renders_to_the_same_bytes_with_its_title(tmp_path):
    sources = sorted(p for p in (ROOT / "results").glob("*/*.md") if p.name != "README.md")
    sources += sorted((ROOT / "results").glob("*/*/table.md")) + sorted((ROOT / "results").glob("*/selected.yaml"))
    assert sources
    for source in sources:
        page = table_page(source, title_of(source.relative_to(ROOT / "results")))
        assert page == table_page(source, title_of(source.relative_to(ROOT / "results")))
        assert page.startswith("<!DOCTYPE html>") and ("<table>" in page or "<pre>" in page)
    assert title_of("tiny/release/table.md") == "tiny · release protocol · end of budget"
    page = page_path("results/tiny/release/table.md", "results", "runs/report")
    assert page == Path("runs/report/tiny/release/table.html")


# -- the report in a browser ----------------------------------------------------------------------
class Chromium:
    """A headless Chromium and one page of it, driven by the DevTools protocol over a pipe."""

    def __init__(self, profile: Path, width=1400, height=1000):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        high_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)  # above 3 and 4: safe to dup2 in the child
        high_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)

        def pipe_fds():
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=pipe_fds, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(profile.parent / "chromium.log", "wb"))
        for fd in (to_browser_read, from_browser_write, high_read, high_write):
            os.close(fd)
        self._buffer, self._id = b"", 0
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False, session=True)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError(f"{method}: no reply in {timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{method}: Chromium closed the pipe")
            self._buffer += chunk

    def evaluate(self, expression: str, timeout: float = 120, **params):
        """The value of a JavaScript expression in the page (awaited where it is a promise)."""
        result = self.call("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                           awaitPromise=True, returnByValue=True, **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(expression)
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._write)
        os.close(self._read)


SHOW_EVERY_IMAGE = """(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const shown = [];
  for (const [path, entry] of Object.entries(results)) {
    if (!entry.mime_type.startsWith("image/")) continue;
    app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
    let img;
    for (let i = 0; i < 400; i++) {
      img = Array.from(document.querySelectorAll("img")).find(x => x.getAttribute("src") === entry.data_uri);
      if (img && img.complete) break;
      await sleep(25);
    }
    if (img) { try { await img.decode(); } catch (e) {} }
    const box = img ? img.getBoundingClientRect() : {top: -1, left: -1};
    shown.push({path, width: img ? img.naturalWidth : -1, height: img ? img.naturalHeight : -1,
                top: box.top, left: box.left});
  }
  return shown;
})()"""

IN_FRAME = ("document.body ? {tables: document.querySelectorAll('table').length, title: document.title,"
            " pre: document.querySelectorAll('pre').length, text: document.body.innerText.length} : {text: 0}")


def committed_figures() -> list[str]:
    """Every committed PNG of results/: the protocols' figures, each set's prior grid, the bench's."""
    results = ROOT / "results"
    found = [*results.glob("*/*/figures/*.png"), *results.glob("*/prior_samples.png"), *results.glob("bench/*.png")]
    return sorted(str(p.relative_to(ROOT)) for p in found)


def build_report(folder: Path) -> subprocess.CompletedProcess:
    """The report's build command on a copy of the workflow and of the committed results/. The copied
    figures are made newer than their sources, as after `snakemake figures`, so that the build renders
    the tables and writes the report (it would redraw a figure older than its sources first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml", "results"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, folder / name)
    (folder / "results" / "report.html").unlink(missing_ok=True)
    now = time.time()
    for figure in [*(folder / "results").rglob("*.png"), *(folder / "results").rglob("*.pdf")]:
        os.utime(figure, (now, now))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "snakemake", *BUILD], cwd=folder, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium)")
def test_the_report_builds_from_results_alone_and_every_figure_and_table_shows_in_chromium(tmp_path, record_property):
    started = time.monotonic()
    build = build_report(tmp_path / "repo")
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    report = tmp_path / "repo" / "results" / "report.html"
    assert report.exists() and "runs" not in {p.name for p in (tmp_path / "repo" / "results").iterdir()}
    built = time.monotonic() - started
    shots = Path(os.environ.get("NABLA_REPORT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    browser = Chromium(tmp_path / "profile", height=800)  # shorter than the tallest figure
    try:
        version = browser.call("Browser.getVersion")["product"]
        browser.call("Page.navigate", session=True, url=report.as_uri())
        browser.wait_for("document.readyState === 'complete' && typeof app !== 'undefined'"
                         " && document.body.innerText.includes('∇-GFlowNet, reproduced')")
        # the landing page: its text, the paper's and the official code's links, a link per result set
        landing = browser.evaluate("document.body.innerText")
        assert "∇-GFlowNet, reproduced" in landing and "produced by the workflow" in landing
        # its start in view, longer as it is than the window (the report's stylesheet, workflow/report/style.css)
        assert browser.evaluate("document.querySelector('h1').getBoundingClientRect().top") >= 0
        for href in ("https://arxiv.org/abs/2412.07775", "https://github.com/lzzcd001/nabla-gfn"):
            assert browser.evaluate(f"document.querySelector('a[href=\"{href}\"]') !== null"), href
        categories = browser.evaluate("Object.keys(categories)")
        sets = sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir())
        assert set(sets) <= set(categories), categories
        for name in sets:
            assert browser.evaluate(f"document.querySelector(`a[href*=\"showCategory('{name}')\"]`) !== null"), name
        captions = browser.evaluate("Object.values(results).map(r => r.caption).join(' ') + workflow_desc")
        assert "System Message" not in captions and "system-message" not in captions
        time.sleep(1)  # the workflow graph draws itself
        landing_shot = browser.screenshot(shots / "report_landing.png")

        # every committed figure is a result of the report, and shows as a decoded image
        shown = {entry["path"]: entry for entry in browser.evaluate(SHOW_EVERY_IMAGE, timeout=300)}
        missing = [path for path in committed_figures() if path not in shown]
        assert not missing, f"committed figures not in the report: {missing}"
        blank = [entry for entry in shown.values() if entry["width"] <= 0 or entry["height"] <= 0]
        assert not blank, f"figures that did not load: {blank}"
        cut = [entry for entry in shown.values() if entry["top"] < 0 or entry["left"] < 0]
        assert not cut, f"figures whose top or left lies out of reach: {cut}"

        figure = "results/toy2d/tuned/figures/frontier_quadratic.png"
        browser.evaluate(f"app.setView({{content: 'img', contentPath: results['{figure}'].data_uri,"
                         f" resultPath: '{figure}'}}); app.showCategory('toy2d'); true")
        time.sleep(1)
        figure_shot = browser.screenshot(shots / "report_figure.png")

        # every table page renders in the report's frame, with a table (or the selection's file)
        pages = browser.evaluate("Object.keys(results).filter(p => results[p].mime_type === 'text/html')")
        assert {f"runs/report/{s}/{t}.html" for s in ("toy2d", "tiny") for t in ("release/table", "release/matched",
                "tuned/table", "selected")} <= set(pages)
        assert {"runs/report/bench/bench.html", "runs/report/tiny/prior_quality.html",
                "runs/report/toy2d/exactness.html", "runs/report/tiny-beta/tune/table.html"} <= set(pages)
        for page in pages:
            browser.evaluate(f"app.setView({{content: 'html', contentPath: results['{page}'].data_uri,"
                             f" resultPath: '{page}'}}); true")
            frame = None
            for _ in range(100):
                children = browser.call("Page.getFrameTree", session=True)["frameTree"].get("childFrames", [])
                frame = next((c["frame"] for c in children if c["frame"]["url"].startswith("data:text/html")), None)
                if frame:
                    break
                time.sleep(0.05)
            assert frame, page
            world = browser.call("Page.createIsolatedWorld", session=True, frameId=frame["id"])
            for _ in range(100):
                inside = browser.evaluate(IN_FRAME, contextId=world["executionContextId"])
                if inside["text"]:
                    break
                time.sleep(0.05)
            assert inside["tables"] + inside["pre"] > 0 and inside["text"] > 50, (page, inside)
            if page.endswith("toy2d/tuned/table.html"):
                browser.screenshot(shots / "report_table.png")
    finally:
        browser.close()
    summary = (f"report built in {built:.0f} s; {version} showed {len(shown)} images (every committed figure) "
               f"and {len(pages)} table pages; screenshots {landing_shot}, {figure_shot}")
    record_property("chromium", summary)
    print(summary)
