"""Load every page of the built book in headless Chromium, offline, and check what a reader sees.

For each HTML page of ``_build/html`` (served from 127.0.0.1; every other host is unresolvable):

* every math element was typeset by MathJax (no raw ``\\(``, ``\\[``, ``$$`` left, no MathJax error)
  and MathJax output is present where the page has math;
* every ``<img>`` loaded with a non-zero natural size and no figure wider than the column; the
  drawn width of each figure is reported; at the desktop width every figure is sharp (an SVG, or
  a raster image with at least twice as many pixels across as the CSS pixels it is drawn on; see
  ``REQUIRE_SHARP_FIGURES``), and on the phone none is shrunk below half its full size, where its
  text would become too small to read (``MIN_PHONE_SCALE``); no figure is drawn out of shape
  (its width and height scaled alike, within 2 %);
* with every drop-down opened, no element of the main column is wider than the column (code
  cells, outputs and tables may scroll inside a visible scroll box; display equations in their
  own box), and the page itself never scrolls sideways;
* every link inside the book points to an existing page and, if it has one, an existing anchor;
* every Chinese character is drawn with a CJK font (no missing-glyph boxes);
* no request left the machine.

Every page is checked twice: at a desktop's 1280 px and at a phone's 390 px (mobile emulation,
device pixel ratio 2). A screenshot of the top of each page at each width goes to
``_build/screenshots/`` (``NAME.png`` and ``NAME@390.png``). Uses the Chrome DevTools
Protocol over a websocket (``websocket-client``), no browser download. Exit status 1 on any failure.

Usage: ``python scripts/browser_check.py [--html _build/html] [--chromium chromium]``
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websocket

#: Whether a figure with fewer than 2 image pixels per CSS pixel fails the page (at the desktop
#: width, where figures are drawn at their full size): the chapters store every figure at 2x.
REQUIRE_SHARP_FIGURES = True
#: The smallest share of its full size a figure may be shrunk to on a phone. A figure is drawn at
#: full size at half its pixel width (2x); the book's figures are at most 6.4 in at 100 dpi with
#: text of at least 10 pt (lora_edu.report.BOOK_FIGURE_STYLE), so at half size their text is still
#: about 7 px high. A wider figure is shrunk further and its labels become unreadable.
MIN_PHONE_SCALE = 0.5
#: (name, width, height, device pixel ratio, mobile) of each viewport every page is checked at
VIEWPORTS = (("desktop", 1280, 900, 1, False), ("phone", 390, 844, 2, True))
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")

MEASURE_JS = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  // open every drop-down (solutions, ledger details): what a reader opens must fit too
  for (const d of document.querySelectorAll('details')) d.open = true;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  await document.fonts.ready;
  const art = document.querySelector('article.bd-article') || document.querySelector('main');
  const box = art.getBoundingClientRect();
  const cs = getComputedStyle(art);
  const col = {left: box.left + parseFloat(cs.paddingLeft),
               right: box.right - parseFloat(cs.paddingRight)};
  col.width = col.right - col.left;
  const skip = el => el.closest('mjx-assistive-mml, script, style, .headerlink');
  // math
  const maths = [...art.querySelectorAll('.math')];
  const untypeset = maths.filter(m => !m.querySelector('mjx-container'))
                         .map(m => m.textContent.slice(0, 60));
  const errors = [...art.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60));
  const raw = [];
  const walker = document.createTreeWalker(art, NodeFilter.SHOW_TEXT);
  const rawPattern = /\\\(|\\\[|\$\$|(^|[^\\])\$[^$\s][^$]*[^\s\\]\$/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest('pre, code, script, style, mjx-container, textarea, .output')) continue;
    if (rawPattern.test(n.textContent)) raw.push(n.textContent.trim().slice(0, 80));
  }
  // images
  const badImages = [...document.images]
    .filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))
    .map(i => i.getAttribute('src'));
  // figures: drawn width (CSS px), pixels across, sharpness
  const figures = [...art.querySelectorAll('img')].map(i => {
    const box = i.getBoundingClientRect(), w = box.width;
    const src = i.getAttribute('src') || '';
    const svg = /\.svg(\?|$)/i.test(src) || src.startsWith('data:image/svg');
    // drawn aspect ratio against the image's own (1 when it is scaled evenly)
    const aspect = (box.width / box.height) / (i.naturalWidth / i.naturalHeight);
    return {src: src.slice(-50), width: Math.round(w), natural: i.naturalWidth, svg,
            sharp: svg || i.naturalWidth >= 2 * w - 1, fits: w <= col.width + 1,
            aspect: Math.round(aspect * 1000) / 1000};
  });
  // the page itself must not scroll sideways
  const pageWidth = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  // widths; an equation is named by its TeX source (MathJax's own record of it)
  const texOf = new Map();
  try {
    for (const item of MathJax.startup.document.math) texOf.set(item.typesetRoot, item.math);
  } catch (e) { /* no MathJax on this page */ }
  const describe = el => {
    const box = el.closest('mjx-container');
    const text = box && texOf.has(box) ? 'TeX ' + texOf.get(box) : el.textContent;
    return text.trim().replace(/\s+/g, ' ').slice(0, 80);
  };
  let widest = {width: 0, what: ''};
  const overflows = [];
  const over = new Set();
  for (const el of art.querySelectorAll('*')) {
    if (skip(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    // inside a box that scrolls visibly (code cells, output areas, tables)?
    let scrolled = false;
    for (let p = el.parentElement; p && p !== art; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if ((ox === 'auto' || ox === 'scroll') && p.scrollWidth > p.clientWidth + 1) {
        // a table, a code/output box or a display equation may scroll in its own box; inline
        // math may not (it would hide part of a sentence)
        const inlineMath = el.closest('mjx-container:not([display="true"])');
        scrolled = p.tagName === 'TABLE' || !inlineMath;
        break;
      }
    }
    if (!scrolled && r.width > widest.width) {
      widest = {width: Math.round(r.width), what: el.tagName.toLowerCase() + '.' +
                [...el.classList].join('.')};
    }
    if (r.right <= col.right + 1 && r.left >= col.left - 1) continue;
    if (!scrolled) {
      over.add(el);
      if (el.parentElement && over.has(el.parentElement)) continue;  // report the outermost
      overflows.push(el.tagName.toLowerCase() + '.' + [...el.classList].join('.') + ' ' +
                     Math.round(r.width) + 'px: ' + describe(el));
    }
  }
  // links
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  // elements whose own text holds Chinese characters
  let k = 0;
  for (const el of art.querySelectorAll('*')) {
    if (skip(el)) continue;
    const own = [...el.childNodes].filter(c => c.nodeType === 3).map(c => c.textContent).join('');
    if (/[\u3400-\u4dbf\u4e00-\u9fff]/.test(own)) el.setAttribute('data-cjk-check', String(k++));
  }
  return {column: Math.round(col.width), mathCount: maths.length,
          mjx: art.querySelectorAll('mjx-container').length, untypeset, errors, raw,
          badImages, figures, pageWidth, viewport: window.innerWidth, widest,
          overflows: overflows.slice(0, 10), nOverflows: overflows.length,
          links, cjkElements: k};
})()
"""


class CDP:
    """A minimal Chrome DevTools Protocol client: commands and the events seen meanwhile."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name: str, timeout: float = 60.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for i, ev in enumerate(self.events):
                if ev.get("method") == name:
                    return self.events.pop(i)
            self.ws.settimeout(max(0.1, deadline - time.time()))
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(name)


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D102 - silence the access log
        pass


def start_chromium(binary: str, profile: str) -> tuple[subprocess.Popen, int]:
    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars",
            "--remote-debugging-port=0", f"--user-data-dir={profile}",
            f"--window-size={VIEWPORTS[0][1]},{VIEWPORTS[0][2]}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "about:blank"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"
    for _ in range(300):
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("chromium did not start (no DevToolsActivePort)")


def anchors_of(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        text = path.read_text(encoding="utf-8", errors="replace")
        cache[path] = set(re.findall(r'\bid="([^"]+)"', text))
    return cache[path]


def check_links(links: list[str], page: Path, html: Path, origin: str,
                cache: dict[Path, set[str]]) -> list[str]:
    broken = []
    for link in sorted(set(links)):
        if not link.startswith(origin):
            continue  # external: not part of the book
        parsed = urllib.parse.urlparse(link)
        rel = urllib.parse.unquote(parsed.path).lstrip("/")
        target = html / rel
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(f"{link} (no such page)")
        elif parsed.fragment and target.suffix == ".html":
            if urllib.parse.unquote(parsed.fragment) not in anchors_of(target, cache):
                broken.append(f"{link} (no anchor #{parsed.fragment})")
    return broken


def check_cjk_fonts(cdp: CDP) -> list[str]:
    root = cdp.call("DOM.getDocument", depth=-1)["root"]["nodeId"]
    nodes = cdp.call("DOM.querySelectorAll", nodeId=root, selector="[data-cjk-check]")["nodeIds"]
    missing = []
    for node in nodes:
        text = cdp.call("DOM.getOuterHTML", nodeId=node)["outerHTML"]
        own = re.sub(r"<[^>]+>.*?</[^>]+>|<[^>]+>", "", text, flags=re.S)
        need = len(CJK.findall(own))
        fonts = cdp.call("CSS.getPlatformFontsForNode", nodeId=node)["fonts"]
        got = sum(f["glyphCount"] for f in fonts if "CJK" in f["familyName"])
        if need and got < need:
            names = ", ".join(f"{f['familyName']} ({f['glyphCount']})" for f in fonts)
            missing.append(f"{own.strip()[:30]!r}: {need} CJK characters, fonts used: {names}")
    return missing


def check_page(cdp: CDP, page: Path, html: Path, origin: str, cache: dict[Path, set[str]],
               shots: Path, suffix: str) -> bool:
    """Load one page at the current viewport, print its line, return True if it has problems."""
    rel = page.relative_to(html).as_posix()
    cdp.events.clear()
    cdp.call("Page.navigate", url=origin + rel)
    cdp.wait_event("Page.loadEventFired")
    res = cdp.call("Runtime.evaluate", expression=MEASURE_JS, awaitPromise=True,
                   returnByValue=True)
    if "exceptionDetails" in res:
        raise RuntimeError(f"{rel}: {res['exceptionDetails']}")
    m = res["result"]["value"]
    problems = []
    if m["untypeset"] or m["errors"] or m["raw"]:
        problems.append(f"math not typeset: {m['untypeset'][:3]} errors {m['errors'][:3]}"
                        f" raw {m['raw'][:3]}")
    if m["mathCount"] and not m["mjx"]:
        problems.append("no MathJax output on a page with math")
    if m["badImages"]:
        problems.append(f"images not loaded: {m['badImages'][:5]}")
    blurred = [f"{f['src']} ({f['natural']} px drawn on {f['width']})" for f in m["figures"]
               if not f["sharp"]]
    if blurred and REQUIRE_SHARP_FIGURES and not suffix:
        problems.append(f"figures with fewer than 2 pixels per CSS pixel: {blurred[:3]}")
    if suffix:   # the phone: how much each figure is shrunk (its full size: half its pixels)
        shrunk = [f"{f['src']} at {f['width'] / (f['natural'] / 2):.0%}" for f in m["figures"]
                  if not f["svg"] and f["width"] < MIN_PHONE_SCALE * f["natural"] / 2]
        if shrunk:
            problems.append(f"figures shrunk below {MIN_PHONE_SCALE:.0%} of their size on a "
                            f"phone (text too small to read): {shrunk[:3]}")
    distorted = [f"{f['src']} (x/y scale ratio {f['aspect']})" for f in m["figures"]
                 if abs(f["aspect"] - 1) > 0.02]
    if distorted:
        problems.append(f"figures squeezed out of shape: {distorted[:3]}")
    wide_figures = [f["src"] for f in m["figures"] if not f["fits"]]
    if wide_figures:
        problems.append(f"figures wider than the column: {wide_figures[:3]}")
    if m["nOverflows"]:
        problems.append(f"{m['nOverflows']} element(s) wider than the column: "
                        f"{m['overflows'][:3]}")
    if m["pageWidth"] > m["viewport"]:
        problems.append(f"the page scrolls sideways: {m['pageWidth']} px wide in a "
                        f"{m['viewport']} px viewport")
    broken = check_links(m["links"], page, html, origin, cache)
    if broken:
        problems.append(f"broken links: {broken[:5]}")
    if m["cjkElements"]:
        tofu = check_cjk_fonts(cdp)
        if tofu:
            problems.append(f"CJK text without a CJK font: {tofu[:3]}")
    outside = sorted({ev["params"]["request"]["url"] for ev in cdp.events
                      if ev.get("method") == "Network.requestWillBeSent"
                      and not ev["params"]["request"]["url"].startswith(
                          (origin, "data:", "blob:"))})
    if outside:
        problems.append(f"requests outside the book: {outside[:5]}")
    shot = cdp.call("Page.captureScreenshot", format="png")["data"]
    name = rel.replace("/", "_").removesuffix(".html") + suffix + ".png"
    (shots / name).write_bytes(base64.b64decode(shot))
    widths = ",".join(str(f["width"]) for f in m["figures"]) or "-"
    if m["figures"] and not suffix:
        widths += f" ({sum(f['sharp'] for f in m['figures'])} sharp)"
    elif m["figures"]:
        smallest = min(f["width"] / (f["natural"] / 2) for f in m["figures"])
        widths += f" (≥ {smallest:.0%} size)"
    status = "ok" if not problems else "FAIL"
    print(f"{rel:<34}{m['column']:>8}{m['widest']['width']:>8}{m['pageWidth']:>6}{m['mjx']:>6}"
          f"{m['cjkElements']:>6}  {widths:<26} {status}")
    for p in problems:
        print(f"    {p}")
    return bool(problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", default="_build/html", type=Path)
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    parser.add_argument("--screenshots", default="_build/screenshots", type=Path)
    args = parser.parse_args()
    html = args.html.resolve()
    binary = shutil.which(args.chromium)
    if binary is None:
        print(f"browser check: {args.chromium} not found", file=sys.stderr)
        return 2
    pages = sorted(p for p in html.rglob("*.html")
                   if p.name not in ("genindex.html", "search.html") and "_static" not in p.parts
                   and 'http-equiv="Refresh"' not in p.read_text(errors="replace")[:300])
    if not pages:
        print(f"browser check: no pages under {html}", file=sys.stderr)
        return 2
    args.screenshots.mkdir(parents=True, exist_ok=True)
    server, port = serve(html)
    origin = f"http://127.0.0.1:{port}/"
    profile = tempfile.mkdtemp(prefix="lora-edu-chromium-")
    proc, debug_port = start_chromium(binary, profile)
    failures = 0
    cache: dict[Path, set[str]] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list") as resp:
            target = next(t for t in json.load(resp) if t["type"] == "page")
        cdp = CDP(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Network", "Runtime", "DOM", "CSS"):
            cdp.call(f"{domain}.enable")
        for view, width, height, ratio, mobile in VIEWPORTS:
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                     deviceScaleFactor=ratio, mobile=mobile)
            print(f"-- {view}, {width} px")
            print(f"{'page':<34}{'column':>8}{'widest':>8}{'page':>6}{'math':>6}{'CJK':>6}"
                  f"  {'figures (px)':<26} result")
            for page in pages:
                failures += check_page(cdp, page, html, origin, cache, args.screenshots,
                                       "" if view == "desktop" else f"@{width}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"browser check: {len(pages)} pages at {len(VIEWPORTS)} widths, {failures} page views "
          f"with problems; screenshots in {args.screenshots}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
