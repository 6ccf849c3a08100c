"""Open an HTML page from disk in headless Chromium with the network off, and say what rendered.

A copy of the page gets a small probe as the first script of its <head>: it records console
errors and uncaught exceptions from the very start, and once the page has loaded it writes
what the test needs into the DOM (plotly plots drawn, resources fetched). Chromium's
``--dump-dom`` then prints the DOM after the scripts ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = """<script>
window.__errors = [];
const __error = console.error;
console.error = (...args) => {
  window.__errors.push(args.map(String).join(' '));
  __error(...args);
};
window.addEventListener('error', e => window.__errors.push('uncaught: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejected: ' + e.reason));
window.addEventListener('load', () => setTimeout(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const out = document.createElement('pre');
  out.id = 'autoclf-probe';
  out.textContent = JSON.stringify({
    errors: window.__errors,
    plots: plots.length,
    drawn: plots.filter(p => {
      const svg = p.querySelector('svg.main-svg');
      return svg !== null && svg.getBoundingClientRect().width > 0 && p._fullLayout;
    }).length,
    traces: plots.map(p => (p._fullData || []).filter(t => t.visible !== false).length),
    marks: plots.map(p => p.querySelectorAll(
      'g.trace, g.parcoords, .hm, image, path.point, path.box, g.point').length),
    resources: performance.getEntriesByType('resource').map(r => r.name),
    images: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
    xticks: plots.map(p => [...p.querySelectorAll('.xtick text')].map(t => t.textContent)),
  });
  document.body.appendChild(out);
}, 500));
</script>"""
NO_NETWORK = [
    "--proxy-server=127.0.0.1:9",  # nothing listens there
    "--host-resolver-rules=MAP * ~NOTFOUND",  # and no name resolves
]


def chromium() -> str:
    """The browser, or a skip; ``AUTOCLF_REQUIRE_CHROMIUM=1`` (CI sets it) makes that a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("AUTOCLF_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (AUTOCLF_REQUIRE_CHROMIUM=1) but not installed")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


def _run(args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *NO_NETWORK]
    profile = f"--user-data-dir={workdir / 'chromium-profile'}"
    return subprocess.run(
        [chromium(), *flags, profile, *args], capture_output=True, text=True, timeout=120
    )


def render(page: Path, workdir: Path) -> dict:
    """Load ``page`` offline; return the probe's findings."""
    probed = workdir / f"probed-{page.name}"
    text = page.read_text()
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1))
    done = _run(["--virtual-time-budget=20000", "--dump-dom", probed.as_uri()], workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    start = done.stdout.find('<pre id="autoclf-probe">')
    assert start >= 0, "the page never finished loading:\n" + done.stderr[-2000:]
    end = done.stdout.index("</pre>", start)
    raw = done.stdout[start + len('<pre id="autoclf-probe">') : end]
    return json.loads(raw.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def screenshot(page: Path, target: Path, workdir: Path, *, height: int = 6000) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    done = _run(
        ["--virtual-time-budget=20000", f"--window-size=1280,{height}",
         f"--screenshot={target}", page.as_uri()],
        workdir,
    )  # fmt: skip
    assert done.returncode == 0 and target.is_file(), done.stderr[-2000:]
    return target
