"""Issue 11: the explorer at /sweepcat/, in a real browser (Debian's headless Chromium) against a real
`sweepcat serve` on the demo data, and its routes against the API they summarise.

Browser tests wait on the page's own marks (``<body data-state data-seq>``, ``#detail[data-state]``), never
on sleeps; each saves a screenshot of every state under its tmp_path."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import sqlite_demo
from tests.support import browser as chrome
from tests.support.servers import API_KEY, sweepcat_server

DS = "NiPS3_batched"
STATIC = Path(__file__).resolve().parents[1] / "src" / "sweepcat" / "server" / "static"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, demo_manifests: Path) -> str:
    return sqlite_demo(tmp_path_factory, demo_manifests, "explorer")


@pytest.fixture(scope="module")
def server(catalog: str) -> Iterator[str]:
    with sweepcat_server(catalog) as url:
        yield url


@pytest.fixture(scope="module")
def public_server(catalog: str) -> Iterator[str]:
    with sweepcat_server(catalog, public=True) as url:
        yield url


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(headers={"Authorization": f"Apikey {API_KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    reason = chrome.missing()
    if reason:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chrome.chromium(downloads=downloads) as d:
        d.downloads = downloads
        yield d


def shot(driver: Any, tmp_path: Path, name: str, show: str | None = None) -> Path:
    """A screenshot of the window, scrolled to the element ``show`` (a CSS selector) if given."""
    if show:
        driver.execute_script("document.querySelector(arguments[0]).scrollIntoView({block: 'start'})", show)
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    return path


def api_count(http: httpx.Client, url: str, q: str, ds: str = DS) -> int:
    r = http.get(f"{url}/api/v1/sweepcat/search/{ds}", params={"q": q, "limit": 0})
    r.raise_for_status()
    return r.json()["count"]


def shown(driver: Any) -> tuple[int, str]:
    """The count the page shows and the query it sent."""
    from selenium.webdriver.common.by import By

    count = driver.find_element(By.ID, "count")
    text = count.text.split(" of ")[0].replace(",", "")
    assert text == count.get_attribute("data-count"), (count.text, count.get_attribute("data-count"))
    return int(text), driver.find_element(By.ID, "effective-query").get_attribute("data-query")


def load(driver: Any, url: str, path: str = "/sweepcat/") -> None:
    driver.get(url + path)
    chrome.wait_update(driver, 0)


def drag(driver: Any, element: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag across ``element`` between two points given as fractions of its width and height."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    w, h = element.size["width"], element.size["height"]
    off = [(round((fx - 0.5) * w), round((fy - 0.5) * h)) for fx, fy in (start, end)]
    (ActionChains(driver).move_to_element_with_offset(element, *off[0]).click_and_hold()
     .move_to_element_with_offset(element, (off[0][0] + off[1][0]) // 2, (off[0][1] + off[1][1]) // 2)
     .move_to_element_with_offset(element, *off[1]).release().perform())


def click(driver: Any, element: Any) -> None:
    """Click ``element`` scrolled to the middle of the window (the page's header is sticky)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def wait_detail(driver: Any, keys: list[str] | None = None, timeout: float = 30) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d: Any) -> Any:
        e = d.find_element(By.ID, "detail")
        if e.get_attribute("data-state") != "ready":
            return False
        return e if keys is None or e.get_attribute("data-keys") == ",".join(keys) else False
    return WebDriverWait(driver, timeout).until(ready, f"the Hamiltonian view never showed {keys}")


PIXELS = """const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let opaque = 0; const colours = new Set();
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 3] > 0) opaque++;
  colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
}
return [opaque, d.length / 4, colours.size];"""


def ticks(element: Any, css: str) -> list[float]:
    from selenium.webdriver.common.by import By

    return [float(t.text) for t in element.find_elements(By.CSS_SELECTOR, css)]


# --------------------------------------------------------------------------- the page and its routes (no browser)


def test_the_page_ships_in_the_package_and_loads_nothing_from_elsewhere(server: str) -> None:
    page = httpx.get(f"{server}/sweepcat/")  # the page needs no key: its data requests do
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="sweepcat-api" content="/api/v1">' in page.text
    for name, kind in (("explorer.js", "text/javascript"), ("explorer.css", "text/css")):
        r = httpx.get(f"{server}/sweepcat/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.content == (STATIC / name).read_bytes()
    for bad in ("..%2Fexplorer.py", "explorer.py", ".hidden.js", "nope.js"):
        assert httpx.get(f"{server}/sweepcat/static/{bad}").status_code == 404, bad
    assert httpx.get(f"{server}/sweepcat?ds=x").headers["location"] == "/sweepcat/?ds=x"
    # the same page under the API prefix (a `tiled serve config` deployment has only the router)
    assert httpx.get(f"{server}/api/v1/sweepcat/explorer/").text == page.text
    for path in STATIC.iterdir():  # offline: no CDN, no remote font, no import from another host
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|import\s.*https?://|"""
                             r"""fetch\(\s*["']https?://""", text), path.name


def test_summary_counts_and_histograms_are_the_api_s(server: str, catalog: str, http: httpx.Client) -> None:
    import sweepcat.client

    q = "tenDq > 1 and F2_dd < 8"
    s = http.get(f"{server}/api/v1/sweepcat/explorer/summary/{DS}", params={"q": q}).json()
    assert s["count"] == api_count(http, server, q) and s["total"] == 256
    params = sweepcat.client.open(catalog)[DS].find(q).params
    for p in s["params"]:
        if p["kind"] != "number":
            assert p["name"] == "huid" and p.get("identifier")
            continue
        facet = http.get(f"{server}/api/v1/sweepcat/facets/{DS}", params={"param": p["name"], "bins": 40}).json()
        assert p["edges"] == facet["histogram"]["edges"] and p["all"] == facet["histogram"]["counts"]  # /facets'
        got, _ = np.histogram(params[p["name"]].to_numpy(), bins=np.asarray(p["edges"]))
        assert p["sel"] == got.tolist() and sum(p["sel"]) == s["count"]
    bad = http.get(f"{server}/api/v1/sweepcat/explorer/summary/{DS}", params={"q": "tenDq >> 1"})
    same = http.get(f"{server}/api/v1/sweepcat/search/{DS}", params={"q": "tenDq >> 1"})
    assert bad.status_code == same.status_code == 400 and bad.json()["detail"] == same.json()["detail"]
    assert http.get(f"{server}/api/v1/sweepcat/explorer/summary/nope").status_code == 404
    assert httpx.get(f"{server}/api/v1/sweepcat/explorer/summary/{DS}").status_code == 401  # no key


def test_density_parallel_and_table_follow_the_query(server: str, catalog: str, http: httpx.Client) -> None:
    import sweepcat.client

    q = "tenDq between 1 and 2.5"
    base = f"{server}/api/v1/sweepcat/explorer"
    res = sweepcat.client.open(catalog)[DS].find(q)
    keys = res.keys()
    points = http.get(f"{base}/density/{DS}", params={"q": q, "x": "tenDq", "y": "F2_dd"}).json()
    assert points["mode"] == "points" and points["keys"] == keys
    np.testing.assert_array_equal(points["xs"], res.params["tenDq"].to_numpy())
    binned = http.get(f"{base}/density/{DS}", params={"q": q, "x": "tenDq", "y": "F2_dd", "points": 10,
                                                     "bins": 16}).json()
    assert binned["mode"] == "density" and len(binned["counts"]) == 256 and sum(binned["counts"]) == len(keys)
    counts = np.asarray(binned["counts"]).reshape(16, 16)  # x bin major: the tenDq histogram on its edges
    tendq, _ = np.histogram(res.params["tenDq"], bins=np.asarray(binned["xedges"]))
    assert counts.sum(axis=1).tolist() == tendq.tolist()
    assert http.get(f"{base}/density/{DS}", params={"x": "huid", "y": "tenDq"}).status_code == 400

    lines = http.get(f"{base}/parallel/{DS}", params={"q": q}).json()
    assert lines["mode"] == "lines" and lines["keys"] == keys and len(lines["params"]) == 12
    dens = http.get(f"{base}/parallel/{DS}", params={"q": q, "lines": 5, "bins": 8}).json()
    assert dens["mode"] == "density" and len(dens["pairs"]) == 11
    assert all(sum(p) == len(keys) for p in dens["pairs"])

    for sort, descending in (("tenDq", True), ("F2_dd", False), ("key", True)):
        page = http.get(f"{base}/table/{DS}", params={"q": q, "sort": sort, "descending": descending,
                                                      "offset": 5, "limit": 20}).json()
        want = res.sort_by(sort, ascending=not descending).keys()[5:25]  # Result.sort_by's order
        assert [r[0] for r in page["rows"]] == want and page["count"] == len(keys)
    plain = http.get(f"{base}/table/{DS}", params={"q": q, "limit": 3}).json()
    assert plain["columns"][:3] == ["key", "huid", "F2_dd"] and [r[0] for r in plain["rows"]] == keys[:3]
    assert http.get(f"{base}/table/{DS}", params={"sort": "nope"}).status_code == 400


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_locator_files_equal_the_locators_route(server: str, http: httpx.Client, kind: str) -> None:
    for q, type_ in (("tenDq > 2", None), ("F2_dd < 5", "rixs")):
        params = {"q": q, **({"type": type_} if type_ else {})}
        want = pa.ipc.open_stream(http.get(f"{server}/api/v1/sweepcat/locators/{DS}", params=params).content)
        want = want.read_all().to_pandas()
        r = http.get(f"{server}/api/v1/sweepcat/explorer/locators/{DS}", params={**params, "format": kind})
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        got = pd.read_csv(io.BytesIO(r.content)) if kind == "csv" else pq.read_table(io.BytesIO(r.content)).to_pandas()
        pd.testing.assert_frame_equal(got, want, check_dtype=kind == "parquet")


# --------------------------------------------------------------------------- in the browser


def test_explore_select_open_and_compare(driver: Any, server: str, http: httpx.Client, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    load(driver, server, f"/sweepcat/?api_key={API_KEY}")  # the banner-style link: key kept, then dropped
    assert "api_key" not in driver.current_url and API_KEY not in driver.current_url
    assert shown(driver) == (256, "")
    assert driver.find_element(By.ID, "info-size").text == "256"
    assert "eloss_RIXS × ein_RIXS" in driver.find_element(By.ID, "info-artifacts").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#histograms canvas")) == 12
    shot(driver, tmp_path, "1-loaded")

    # typing a query
    box = driver.find_element(By.ID, "query")
    box.send_keys("tenDq > 1 and F2_dd < 8", Keys.ENTER)
    seq = chrome.wait_update(driver, 1) and chrome.page_state(driver)[1]
    count, q = shown(driver)
    assert q == "tenDq > 1 and F2_dd < 8" and count == api_count(http, server, q) and 0 < count < 256
    shot(driver, tmp_path, "2-typed")

    # brushing a histogram: tenDq from 30% to 70% of its range
    hist = driver.find_element(By.CSS_SELECTOR, '#histograms canvas[data-param="tenDq"]')
    drag(driver, hist, (0.3, 0.5), (0.7, 0.5))
    chrome.wait_update(driver, seq)
    seq = chrome.page_state(driver)[1]
    count, q = shown(driver)
    assert re.fullmatch(r"\(tenDq > 1 and F2_dd < 8\) and tenDq between \S+ and \S+", q), q
    low, high = map(float, re.findall(r"between (\S+) and (\S+)", q)[0])
    assert 1.3 < low < 1.5 and 2.5 < high < 2.7  # 30% and 70% of the demo's tenDq range (0.53 .. 3.50)
    assert count == api_count(http, server, q) and 0 < count
    assert "tenDq" in driver.find_element(By.ID, "brushes").text
    shot(driver, tmp_path, "3-brushed")

    # brushing the 2-D view (a rectangle: both of its parameters) and parallel coordinates (an axis)
    drag(driver, driver.find_element(By.CSS_SELECTOR, "#density canvas.data"), (0.05, 0.05), (0.95, 0.95))
    chrome.wait_update(driver, seq)
    seq = chrome.page_state(driver)[1]
    count, q = shown(driver)
    assert "F2_dd between" in q and "F2_dp between" in q and count == api_count(http, server, q)
    pc = driver.find_element(By.CSS_SELECTOR, "#parallel canvas")
    n_axes = 12
    x_sigma = (30 + 6 * (pc.size["width"] - 60) / (n_axes - 1)) / pc.size["width"]  # the 7th axis: sigma
    drag(driver, pc, (x_sigma, 0.1), (x_sigma, 0.85))
    chrome.wait_update(driver, seq)
    seq = chrome.page_state(driver)[1]
    count, q = shown(driver)
    assert "sigma between" in q and count == api_count(http, server, q)
    shot(driver, tmp_path, "4-brushed-views")

    # open a Hamiltonian: RIXS on its physical axes, XPS on w_xps, its parameters beside them
    row = driver.find_element(By.CSS_SELECTOR, "#table tbody tr")
    key = row.get_attribute("data-key")
    row.click()
    detail = wait_detail(driver, [key])
    heat = detail.find_element(By.CSS_SELECTOR, ".heatmap")
    opaque, total, colours = driver.execute_script(PIXELS, heat.find_element(By.CSS_SELECTOR, "canvas.heatmap-canvas"))
    assert opaque == total and colours > 20, (opaque, total, colours)  # drawn edge to edge, many colours
    x_axis, y_axis = heat.find_element(By.CSS_SELECTOR, "g.axis.x"), heat.find_element(By.CSS_SELECTOR, "g.axis.y")
    assert x_axis.get_attribute("data-label") == "ein_RIXS" and y_axis.get_attribute("data-label") == "eloss_RIXS"
    x_ticks, y_ticks = ticks(heat, "text.tick.x"), ticks(heat, "text.tick.y")
    assert len(x_ticks) >= 3 and 852 <= min(x_ticks) and max(x_ticks) <= 858 and {852, 858} <= set(x_ticks)
    assert len(y_ticks) >= 3 and -1 <= min(y_ticks) and max(y_ticks) <= 14 and 0 in y_ticks
    assert x_axis.find_element(By.CSS_SELECTOR, ".axis-range").text.split() == ["852", "…", "858"]
    assert y_axis.find_element(By.CSS_SELECTOR, ".axis-range").text.split() == ["-1", "…", "14"]
    assert heat.find_elements(By.CSS_SELECTOR, "canvas.colorbar") and ticks(heat, "text.tick.c")
    xps = detail.find_element(By.CSS_SELECTOR, '.artifact[data-type="xps"] .lineplot')
    assert xps.find_element(By.CSS_SELECTOR, "g.axis.x").get_attribute("data-label") == "w_xps"
    assert driver.execute_script(PIXELS, xps.find_element(By.CSS_SELECTOR, "canvas.data"))[0] > 100
    params = driver.find_element(By.ID, "detail-params").text
    meta = http.get(f"{server}/api/v1/metadata/{DS}/{key}").json()["data"]["attributes"]["metadata"]
    assert key in params and "tenDq" in params and f"{meta['tenDq']:.6g}" in params
    shot(driver, tmp_path, "5-opened", "#detail")

    # the log colour scale
    click(driver, driver.find_element(By.ID, "log"))
    detail = wait_detail(driver, [key])
    assert detail.find_element(By.CSS_SELECTOR, "g.colorbar-axis").get_attribute("data-log") == "1"
    shot(driver, tmp_path, "6-log", "#detail")

    # compare: two more ticked
    boxes = driver.find_elements(By.CSS_SELECTOR, "#table tbody input[type=checkbox]")
    others = [b.find_element(By.XPATH, "./ancestor::tr").get_attribute("data-key") for b in boxes[1:3]]
    for b in boxes[1:3]:
        click(driver, b)
        wait_detail(driver)
    detail = wait_detail(driver, [key, *others])
    assert len(detail.find_elements(By.CSS_SELECTOR, ".heatmap")) == 3
    assert len(detail.find_elements(By.CSS_SELECTOR, ".lineplot text.legend")) == 3
    shot(driver, tmp_path, "7-compare", "#detail")

    # the URL holds the state: the same link shows the same view (this tab keeps the key)
    link = driver.current_url
    assert API_KEY not in link and "open=" in link and "b=tenDq" in link and "log=1" in link
    driver.get("about:blank")
    driver.get(link)
    chrome.wait_update(driver, 0)
    assert shown(driver) == (count, q)
    wait_detail(driver, [key, *others])
    shot(driver, tmp_path, "8-from-link", "#detail")

    # copy Python: the selection as sweepcat.client code, which runs and finds what the page counts
    click(driver, driver.find_element(By.ID, "copy-python"))
    snippet = driver.find_element(By.ID, "snippet").text
    assert API_KEY not in snippet and f"ds.find({q!r}".replace("'", '"') in snippet
    code = snippet.split("len(res)")[0]
    scope: dict[str, Any] = {}
    old = os.environ.get("SWEEPCAT_API_KEY")
    os.environ["SWEEPCAT_API_KEY"] = API_KEY
    try:
        exec(compile(code, "snippet", "exec"), scope)  # noqa: S102 - the page's own output, run as a user would
    finally:
        if old is None:
            os.environ.pop("SWEEPCAT_API_KEY")
        else:
            os.environ["SWEEPCAT_API_KEY"] = old
    assert len(scope["res"]) == count
    shot(driver, tmp_path, "9-snippet", "#selection")


def test_sorting_and_paging_the_table(driver: Any, server: str, catalog: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    import sweepcat.client

    load(driver, server, f"/sweepcat/?api_key={API_KEY}&q=F2_dd%20%3C%2010")
    seq = chrome.page_state(driver)[1]
    res = sweepcat.client.open(catalog)[DS].find("F2_dd < 10")
    header = driver.find_element(By.CSS_SELECTOR, '#table th[data-col="tenDq"]')
    header.click()  # ascending
    seq = chrome.wait_update(driver, seq) and chrome.page_state(driver)[1]
    driver.find_element(By.CSS_SELECTOR, '#table th[data-col="tenDq"]').click()  # descending
    seq = chrome.wait_update(driver, seq) and chrome.page_state(driver)[1]
    click(driver, driver.find_element(By.ID, "next"))
    chrome.wait_update(driver, seq)
    keys = [r.get_attribute("data-key") for r in driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")]
    assert keys == res.sort_by("tenDq", ascending=False).keys()[25:50]
    assert "sort=tenDq" in driver.current_url and "desc=1" in driver.current_url and "page=1" in driver.current_url
    assert driver.find_element(By.ID, "page-info").text == f"26–50 of {len(res)}"
    shot(driver, tmp_path, "sorted-page-2", "#table")


def test_a_bad_query_shows_the_server_s_sentence(driver: Any, server: str, http: httpx.Client,
                                                 tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    load(driver, server, f"/sweepcat/?api_key={API_KEY}")
    for bad in ("tenDq >> 1", "tenDQ > 1"):
        seq = chrome.page_state(driver)[1]
        box = driver.find_element(By.ID, "query")
        box.clear()
        box.send_keys(bad, Keys.ENTER)
        chrome.wait_update(driver, seq, states=("error",))
        error = driver.find_element(By.ID, "query-error")
        detail = http.get(f"{server}/api/v1/sweepcat/search/{DS}", params={"q": bad}).json()["detail"]
        assert error.is_displayed() and error.text == f"{detail['message']}\n{detail['hint']}"
        assert shown(driver)[0] == 256  # the last good selection stays on screen
        shot(driver, tmp_path, f"error-{seq}")
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys("tenDq > 1", Keys.ENTER)
    chrome.wait_update(driver, chrome.page_state(driver)[1])
    assert not driver.find_element(By.ID, "query-error").is_displayed()


def test_the_key_is_asked_once_and_never_written_out(driver: Any, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{server}/sweepcat/")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.state") == "auth")
    assert driver.find_element(By.ID, "auth").is_displayed()
    shot(driver, tmp_path, "1-asks")
    field = driver.find_element(By.ID, "apikey")
    field.send_keys("wrongKey1")
    driver.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    WebDriverWait(driver, 30).until(lambda d: "refused" in d.find_element(By.ID, "auth-message").text)
    field.clear()
    field.send_keys(API_KEY)
    driver.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    chrome.wait_update(driver, 0)
    assert shown(driver)[0] == 256
    assert driver.execute_script("return sessionStorage.getItem('sweepcat.apiKey')") == API_KEY
    driver.find_element(By.CSS_SELECTOR, "#table tbody tr").click()
    wait_detail(driver)
    click(driver, driver.find_element(By.ID, "copy-python"))
    snippet = driver.find_element(By.ID, "snippet").text
    assert 'os.environ.get("SWEEPCAT_API_KEY")' in snippet
    for text in (driver.current_url, snippet, driver.page_source):
        assert API_KEY not in text
    links = driver.execute_script("return [...document.querySelectorAll('a')].map((a) => a.href)")
    assert not any(API_KEY in link for link in links)
    shot(driver, tmp_path, "2-in")
    driver.refresh()  # kept for this tab: not asked again
    chrome.wait_update(driver, 0)
    assert not driver.find_element(By.ID, "auth").is_displayed()


def test_a_public_server_needs_no_key(driver: Any, public_server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    load(driver, public_server)
    assert shown(driver)[0] == 256
    assert driver.find_element(By.ID, "auth-status").text == "no API key (anonymous access)"
    driver.find_element(By.CSS_SELECTOR, "#table tbody tr").click()
    wait_detail(driver)
    shot(driver, tmp_path, "public")


def test_downloads_are_the_locators_of_the_selection(driver: Any, server: str, http: httpx.Client,
                                                     tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    q = "tenDq > 2.5"
    load(driver, server, f"/sweepcat/?api_key={API_KEY}&q=tenDq%20%3E%202.5")
    assert shown(driver)[1] == q
    Select(driver.find_element(By.ID, "download-type")).select_by_value("rixs")
    want = pa.ipc.open_stream(http.get(f"{server}/api/v1/sweepcat/locators/{DS}",
                                       params={"q": q, "type": "rixs"}).content).read_all().to_pandas()
    for kind in ("csv", "parquet"):
        click(driver, driver.find_element(By.ID, f"download-{kind}"))
        path = driver.downloads / f"{DS}-locators-rixs.{kind}"

        def saved(_: Any, path: Path = path) -> bool:
            return path.exists() and not list(driver.downloads.glob("*.crdownload"))
        WebDriverWait(driver, 30).until(saved, f"{path.name} was never saved")
        got = pd.read_csv(path) if kind == "csv" else pq.read_table(path).to_pandas()
        pd.testing.assert_frame_equal(got, want, check_dtype=kind == "parquet")
        assert len(got) and f"{len(got)} locators" in driver.find_element(By.ID, "takeaway-status").text
    shot(driver, tmp_path, "downloaded")


def test_any_dataset_one_d_as_lines_two_d_as_maps(driver: Any, server: str, tmp_path: Path) -> None:
    """NiPS3_per_entity: RIXS (2-D), XPS (1-D), MH (int32 on `field`), GF (complex128 on `freq`)."""
    from selenium.webdriver.common.by import By

    load(driver, server, f"/sweepcat/?api_key={API_KEY}&ds=NiPS3_per_entity")
    assert shown(driver)[0] == 24
    key = driver.find_element(By.CSS_SELECTOR, "#table tbody tr").get_attribute("data-key")
    driver.find_element(By.CSS_SELECTOR, "#table tbody tr").click()
    detail = wait_detail(driver, [key])
    kinds = {a.get_attribute("data-type"): a for a in detail.find_elements(By.CSS_SELECTOR, ".artifact")}
    assert set(kinds) == {"rixs", "xps", "mh", "gf"}
    assert kinds["rixs"].find_elements(By.CSS_SELECTOR, ".heatmap")
    for type_, axis in (("xps", "w_xps"), ("mh", "field"), ("gf", "freq")):
        plot = kinds[type_].find_element(By.CSS_SELECTOR, ".lineplot")
        assert plot.find_element(By.CSS_SELECTOR, "g.axis.x").get_attribute("data-label") == axis
        assert driver.execute_script(PIXELS, plot.find_element(By.CSS_SELECTOR, "canvas.data"))[0] > 50, type_
    shot(driver, tmp_path, "per-entity", "#detail")
