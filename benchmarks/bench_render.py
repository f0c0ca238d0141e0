"""How fast the views render a large report in a real browser, and how big the HTML file gets.

Builds a synthetic 1,000-call report (:func:`xfdiff.demo.large_report`: real
detail arrays for every call), serves the dashboard, and drives headless
Chromium through it:

- first view: navigation start until the verdict, the depth plot, the module
  table and the first divergence's detail plots are all on screen and no Dash
  callback is pending (measured in the page with ``performance.now()``);
- layer detail: a click on a table row until that layer's detail is shown
  and every callback has finished, for several rows.

The same for the static HTML report opened from disk, plus its size. Writes
``benchmarks/results/render.json``. ``--screenshot PATH`` also saves a
screenshot of the demo's dashboard (the README's picture).

    python benchmarks/bench_render.py [--calls 1000] [--screenshot assets/dashboard.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

LIMITS = {"first_view_ms": 2000, "layer_detail_ms": 500, "html_bytes": 6_000_000}
ROOT = Path(__file__).resolve().parent.parent
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
)

# Resolves with performance.now() once `cond` holds (polled every animation frame).
_WAIT = """
const done = arguments[arguments.length - 1];
const cond = new Function(arguments[0]);
const t0 = performance.now();
const tick = () => { if (cond()) done(performance.now()); else if (performance.now() - t0 > 30000) done(-1);
                     else requestAnimationFrame(tick); };
tick();
"""
_IDLE = "!document.querySelector('[data-dash-is-loading=\"true\"]')"


def _driver(width: int = 1500, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--window-size={width},{height}")
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            opts.binary_location = shutil.which(name)
            break
    driver = webdriver.Chrome(options=opts)
    driver.set_script_timeout(60)
    driver.execute_cdp_cmd("Performance.enable", {"timeDomain": "threadTicks"})
    return driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(report) -> str:
    import logging

    from xfdiff.dashboard import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_app(report)
    port = _free_port()
    threading.Thread(target=lambda: app.run(port=port, debug=False), daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("dashboard did not start")


def _js_str(s: str) -> str:
    return json.dumps(s)


def _dash_first_view(driver, url: str, label: str) -> tuple[float, float, float, float]:
    """(verdict shown, first view, everything drawn, main-thread CPU at first view), ms after navigation start.

    The first view is what a 1500 x 1000 window shows without scrolling: the
    verdict, the depth plot, the module table and the selected layer's facts.
    "Everything drawn" also waits for the detail plots further down.
    """
    driver.get(url)
    verdict = "const v = document.getElementById('xf-verdict'); return !!v && v.textContent.includes('First');"
    t_verdict = driver.execute_async_script(_WAIT, verdict)
    first = (
        f"const v = document.getElementById('xf-verdict'); const t = document.getElementById('xf-detail-title');"
        f"return v && v.textContent.includes('First divergence') && t && t.textContent.includes({_js_str(label)})"
        f" && document.getElementById('xf-facts').textContent.length > 0"
        f" && document.querySelector('#xf-depth .scatterlayer .trace')"
        f" && document.querySelector('#xf-grid .xf-row') && {_IDLE};"
    )
    t_first = driver.execute_async_script(_WAIT, first)
    metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    cpu = 1000 * next(m["value"] for m in metrics if m["name"] == "ThreadTime")
    drawn = (
        "const g = document.querySelectorAll('.js-plotly-plot');"
        "return g.length >= 5 && [...g].every(x => x.querySelector('.main-svg'));"
    )
    return t_verdict, t_first, driver.execute_async_script(_WAIT, drawn), cpu


def _dash_detail(driver, report, n: int = 5) -> list[float]:
    from selenium.webdriver.common.by import By

    fd = report.first_divergence.order
    rows = driver.find_elements(By.CSS_SELECTOR, "#xf-grid .xf-row")
    ids = [r.get_attribute("data-row-id") for r in rows if r.get_attribute("data-row-id") != str(fd)][:n]
    out = []
    for rid in ids:
        lyr = report.layers[int(rid)]
        cell = driver.find_element(By.CSS_SELECTOR, f'#xf-grid .xf-row[data-row-id="{rid}"] [data-col="layer"]')
        t0 = driver.execute_script("return performance.now()")
        cell.click()
        cond = (
            f"return document.getElementById('xf-detail-title').textContent.includes({_js_str(lyr.label)})"
            f" && document.getElementById('xf-facts').textContent.includes({_js_str(lyr.torch_path)})"
            f" && {_IDLE};"
        )
        out.append(driver.execute_async_script(_WAIT, cond) - t0)
    return out


def _html_first_view(driver, path: str) -> float:
    driver.get(f"file://{path}")
    return driver.execute_async_script(_WAIT, "return document.body.dataset.ready === '1';")


def _html_detail(driver, report, n: int = 5) -> list[float]:
    from selenium.webdriver.common.by import By

    fd = report.first_divergence.order
    out = []
    for order in [fd + k for k in range(1, n + 1) if fd + k < len(report.layers)]:
        row = driver.find_element(By.CSS_SELECTOR, f'#xf-tbody tr[data-order="{order}"]')
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
        t0 = driver.execute_script("return performance.now()")
        row.click()
        cond = (
            f"return document.getElementById('xf-detail-title').textContent"
            f".includes({_js_str(report.layers[order].label)});"
        )
        out.append(driver.execute_async_script(_WAIT, cond) - t0)
    return out


def _stats(samples: list[float]) -> dict:
    return {
        "median": round(statistics.median(samples), 1),
        "max": round(max(samples), 1),
        "samples": [round(s, 1) for s in samples],
    }


def bench_dashboard(report, runs: int = 3) -> dict:
    """First views (a fresh browser profile each: nothing cached), reloads, then clicks on rows.

    The browser first opens a trivial page, as a user's browser is already
    running; the dashboard's scripts are still fetched and compiled cold.
    """
    t = time.perf_counter()
    url = _serve(report)
    started = time.perf_counter() - t
    label = report.first_divergence.label
    shown, cold, cold_all, warm, detail, cpu = [], [], [], [], [], []
    for _ in range(runs):
        driver = _driver()
        try:
            driver.get("data:text/html,<p>browser ready</p>")
            seen, first, drawn, busy = _dash_first_view(driver, url, label)
            shown.append(seen)
            cpu.append(busy)
            cold.append(first)
            cold_all.append(drawn)
            warm.append(_dash_first_view(driver, url, label)[1])
            detail += _dash_detail(driver, report, n=3)
        finally:
            driver.quit()
    return {
        "server_start_s": round(started, 2),
        "verdict_shown_ms": _stats(shown),
        "first_view_ms": _stats(cold),
        "all_plots_drawn_ms": _stats(cold_all),
        "renderer_main_thread_cpu_ms": _stats(cpu),
        "first_view_cached_scripts_ms": _stats(warm),
        "layer_detail_ms": _stats(detail),
    }


def bench_html(report, driver, folder: Path) -> dict:
    import re

    from xfdiff.views.html_report import write_html

    t = time.perf_counter()
    path = write_html(report, folder / "report.html")
    write_s = time.perf_counter() - t
    text = Path(path).read_text(encoding="utf-8")
    m = re.search(r"\((\d+) of \d+ layers have plots\)", text)
    first = [_html_first_view(driver, path) for _ in range(2)]
    detail = _html_detail(driver, report)
    return {
        "bytes": os.path.getsize(path),
        "write_s": round(write_s, 2),
        "layers_with_plots": int(m.group(1)) if m else len(report.layers),
        "first_view_ms": _stats(first),
        "layer_detail_ms": _stats(detail),
    }


def screenshot(path: Path) -> None:
    """Save a screenshot of the demo's dashboard (real torch and Flax models) at ``path``."""
    from xfdiff.demo import demo_report

    report = demo_report()
    driver = _driver(1500, 1500)
    try:
        url = _serve(report)
        _dash_first_view(driver, url, report.first_divergence.label)
        time.sleep(0.5)  # let plotly finish its transitions
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    print(f"screenshot: {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "render.json"))
    parser.add_argument("--screenshot", metavar="PNG", help="also save the demo dashboard's screenshot here")
    args = parser.parse_args(argv)
    import dash
    import plotly

    from xfdiff.demo import large_report

    t = time.perf_counter()
    report = large_report(args.calls)
    build_s = time.perf_counter() - t
    load_before = os.getloadavg()[0]
    dash_result = bench_dashboard(report)
    driver = _driver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "n_calls": len(report.layers),
                "report": "xfdiff.demo.large_report (synthetic: real detail arrays, 64 positions x 256 channels)",
                "build_report_s": round(build_s, 2),
                "dashboard": dash_result,
                "html": bench_html(report, driver, Path(tmp)),
                "limits": LIMITS,
                "criteria": (
                    "median first view with nothing cached (fresh browser profile) and median row click, "
                    "in the page's own clock; HTML file size. renderer_main_thread_cpu_ms: CPU time of "
                    "the page's main thread up to the first view (less sensitive to other load)"
                ),
                "machine": {
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "browser": driver.capabilities.get("browserVersion"),
                    "dash": dash.__version__,
                    "plotly": plotly.__version__,
                    "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                },
            }
    finally:
        driver.quit()
    d, h = result["dashboard"], result["html"]
    result["pass"] = (
        d["first_view_ms"]["median"] < LIMITS["first_view_ms"]
        and d["layer_detail_ms"]["median"] < LIMITS["layer_detail_ms"]
        and h["bytes"] <= LIMITS["html_bytes"]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    if args.screenshot:
        screenshot(Path(args.screenshot))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
