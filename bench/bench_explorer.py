"""Issue 11 figures: the explorer page (/sweepcat/) on 10^5 and 10^6 Hamiltonians.

- First paint: headless Chromium (Debian's, through selenium) loads the page; the time from navigation
  start to the page's ready mark (every view drawn: count, 13 histograms, parallel coordinates, 2-D
  view, table page), read from the page (``performance.now()``). Warm server (its index loaded once
  by an earlier visit); the first visit after the server starts is reported on its own.
- A brush or query change: the server time (Tiled's ``Server-Timing: app;dur=``) of the request that
  answers count + every histogram (``/explorer/summary``), for a sequence of brush-like range queries,
  at 10^5 and 10^6; the page's other requests of an update (2-D view, parallel coordinates, table
  page) beside it, and the whole update as the page sees it in Chromium (10^5).
- A Hamiltonian: the time from the click on a table row to its RIXS map and XPS line drawn (the page's
  ``#detail[data-ms]``), each click a different Hamiltonian.

Catalogs are ingested once into $SWEEPCAT_BENCH_TMP (default /tmp/sweepcat-bench-explorer) from the
benchmark manifests (bench/_data/manifests: 10^5; manifests_1m: 10^6), and reused while the manifests
are unchanged.

    .venv/bin/python -m bench.run explorer
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .bench_catalog import seed_manifests
from .bench_ingest import manifests_1m
from .common import Figure, Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import browser as chrome  # noqa: E402
from tests.support.servers import API_KEY, sweepcat_server  # noqa: E402

DS = "NiPS3_batched"
WORK = Path(os.environ.get("SWEEPCAT_BENCH_TMP", "/tmp/sweepcat-bench-explorer"))


def stamp_of(manifests: Path) -> str:
    files = sorted(manifests.glob("*.parquet"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def catalog_for(label: str, manifests: Path) -> str:
    """An ingested catalog of ``manifests``, made once (its stamp names the manifests' sizes and times)."""
    WORK.mkdir(parents=True, exist_ok=True)
    name = label.replace("10^", "1e")
    path, stamp = WORK / f"{name}.db", WORK / f"{name}.stamp"
    want = stamp_of(manifests)
    if not path.exists() or not stamp.exists() or stamp.read_text() != want:
        path.unlink(missing_ok=True)
        print(f"ingesting {manifests} into {path} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "sweepcat.cli", "ingest", "--catalog", str(path), str(manifests)],
                       check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(want)
    return str(path)


def server_ms(response) -> float:
    """Tiled's own measure of the request inside the server (Server-Timing: app;dur=...)."""
    for part in response.headers.get("server-timing", "").split(","):
        name, _, rest = part.strip().partition(";")
        if name == "app":
            return float(rest.split("=")[1])
    raise AssertionError(f"no Server-Timing app duration: {response.headers}")


def brush_queries(n: int, seed: int = 0) -> list[str]:
    """Range queries like a brush makes: one to three parameters, ranges of 10-60 % of each."""
    rng = np.random.default_rng(seed)
    ranges = {"tenDq": (0.5, 3.5), "F2_dd": (2, 15), "soc_c": (1, 13), "xoffset": (-2, 12), "Gam_c": (0.2, 0.8)}
    out = []
    for i in range(n):
        names = rng.choice(list(ranges), size=1 + i % 3, replace=False)
        parts = []
        for name in names:
            lo, hi = ranges[name]
            width = (hi - lo) * rng.uniform(0.1, 0.6)
            a = rng.uniform(lo, hi - width)
            parts.append(f"{name} between {a:.6g} and {a + width:.6g}")
        out.append(" and ".join(parts))
    return out


def api_figures(url: str, label: str, repeat: int) -> list[Figure]:
    import httpx

    http = httpx.Client(headers={"Authorization": f"Apikey {API_KEY}"}, timeout=300)
    base = f"{url}/api/v1/sweepcat/explorer"
    queries = brush_queries(max(repeat, 20) + 3)
    for q in queries[:3] + [""]:  # warm: the index and the bins of this version
        for route, extra in (("summary", {}), ("density", {"x": "tenDq", "y": "F2_dd"}), ("parallel", {}),
                             ("table", {})):
            http.get(f"{base}/{route}/{DS}", params={"q": q, **extra}).raise_for_status()
    samples: dict[str, list[float]] = {k: [] for k in ("summary", "summary-wall", "density", "parallel", "table",
                                                        "sorted")}
    for q in queries[3:]:
        r = http.get(f"{base}/summary/{DS}", params={"q": q})
        r.raise_for_status()
        samples["summary"].append(server_ms(r))
        t0 = time.perf_counter()
        http.get(f"{base}/summary/{DS}", params={"q": q}).raise_for_status()
        samples["summary-wall"].append((time.perf_counter() - t0) * 1000)
        for route, extra, key in (("density", {"x": "tenDq", "y": "F2_dd"}, "density"), ("parallel", {}, "parallel"),
                                  ("table", {}, "table"), ("table", {"sort": "tenDq"}, "sorted")):
            r = http.get(f"{base}/{route}/{DS}", params={"q": q, **extra})
            r.raise_for_status()
            samples[key].append(server_ms(r))
    return [
        Figure(f"{label}: brush/query change, count + 12 histograms (/explorer/summary), server time", "ms",
               samples["summary"], target="p50 <= 100 ms"),
        Figure(f"{label}: the same request, wall time on loopback (client)", "ms", samples["summary-wall"]),
        Figure(f"{label}: 2-D view (/explorer/density, binned past 3,000 points), server time", "ms",
               samples["density"]),
        Figure(f"{label}: parallel coordinates (/explorer/parallel, binned past 2,000 lines), server time", "ms",
               samples["parallel"]),
        Figure(f"{label}: table page of 25 (/explorer/table), server time", "ms", samples["table"]),
        Figure(f"{label}: table page sorted by tenDq (order cached per version), server time", "ms",
               samples["sorted"]),
    ]


def browser_figures(url: str, label: str, repeat: int) -> list[Figure]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    figures = []
    with chrome.chromium() as driver:
        def first_paint() -> float:
            driver.get("about:blank")
            driver.get(f"{url}/sweepcat/?api_key={API_KEY}")
            chrome.wait_update(driver, 0, timeout=120)
            return float(driver.execute_script("return window.sweepcatTimings.firstReady"))

        cold = first_paint()  # the server loads the dataset's index and bins on this visit
        warm = [first_paint() for _ in range(max(repeat, 5))]
        figures.append(Figure(f"{label}: first paint in Chromium, navigation start to every view drawn (warm server)",
                              "ms", warm, target="<= 1,000 ms", notes=f"first visit after start: {cold:.0f} ms"))
        figures.append(Figure(f"{label}: first paint, first visit after the server started (index loaded)", "ms",
                              [cold]))

        updates = []
        for q in brush_queries(max(repeat, 10), seed=1):
            seq = chrome.page_state(driver)[1]
            box = driver.find_element(By.ID, "query")
            box.clear()
            box.send_keys(q, Keys.ENTER)
            chrome.wait_update(driver, seq, timeout=120)
            updates.append(float(driver.execute_script("return window.sweepcatTimings.updates.at(-1)")))
        figures.append(Figure(f"{label}: a query change in Chromium, Enter to every view redrawn (4 requests)", "ms",
                              updates))

        box = driver.find_element(By.ID, "query")
        box.clear()
        box.send_keys(Keys.ENTER)
        chrome.wait_update(driver, chrome.page_state(driver)[1], timeout=120)
        opens = []
        rows = driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")
        for i in range(min(len(rows), max(repeat, 10) + 1)):
            row = driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")[i]
            key = row.get_attribute("data-key")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
            row.click()
            detail = WebDriverWait(driver, 60).until(
                lambda d, key=key: (e := d.find_element(By.ID, "detail")).get_attribute("data-state") == "ready"
                and e.get_attribute("data-keys") == key and e)
            opens.append(float(detail.get_attribute("data-ms")))
        figures.append(Figure(f"{label}: click on a table row to its RIXS map + XPS line drawn (Chromium)", "ms",
                              opens[1:], target="<= 150 ms",
                              notes=f"first click after the page loaded: {opens[0]:.0f} ms"))
    return figures


def run(repeat: int = 5) -> Run:
    result = Run("explorer")
    missing = chrome.missing()
    for label, manifests in (("10^5", seed_manifests()), ("10^6", manifests_1m())):
        catalog = catalog_for(label, manifests)
        with sweepcat_server(catalog) as url:
            if missing:
                print(f"no browser figures: {missing}")
            else:
                result.figures.extend(browser_figures(url, label, repeat))
            result.figures.extend(api_figures(url, label, repeat))
    return result
