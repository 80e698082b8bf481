"""serve's web pages at the hub's paths: the catalog, a repo's card, its files, one file; the API
routes unchanged for API clients; hostile cards and file names that run nothing; the token gate
for browsers. Real images in layouts, a real serve, HTTP from requests (and Chromium below)."""

from __future__ import annotations

import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from helpers import cli, make_project

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
NS = "pages"


def safetensors(shapes: dict[str, list[int]]) -> tuple[bytes, int]:
    """A valid safetensors file of F32 zeros; (bytes, parameter count)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset, total = 0, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
        total += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset), total


GOOD_CARD = b"""---
license: apache-2.0
pipeline_tag: text-classification
library_name: transformers
language: [en, fr]
tags: [pages-test, tiny]
---
# A tiny classifier

| metric | value |
| --- | ---: |
| accuracy | 0.91 |

```python
from transformers import AutoModel
```
"""

HOSTILE_CARD = b"""---
license: mit
pipeline_tag: text-generation
---
# Hostile card <script>window.__pwned = 1</script>

<img src=x onerror="window.__pwned = 2">
<svg><script>window.__pwned = 3</script></svg>
<style>body { display: none }</style>
<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:red">overlay</div>

[click me](javascript:window.__pwned=4)
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
<a href="javascript:alert(1)">raw link</a>
![img](javascript:alert(2))
"""

BOMB = b"""---
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: [*g,*g,*g,*g,*g,*g,*g,*g,*g]
license: bomb
---
# after the bomb
"""


@pytest.fixture(scope="module")
def site(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Repos mirrored into layouts (a good card, hostile ones, a dataset), served."""
    import os

    from hf2oci.consume.serve.store import Store
    from test_serve import Served

    root = tmp_path_factory.mktemp("pages")
    weights, params = safetensors({"embed.weight": [64, 32], "head.weight": [3, 32],
                                   "head.bias": [3]})  # fmt: skip
    repos = {
        "pagesorg/good-model": {"README.md": GOOD_CARD, "config.json": b'{"a": 1}\n',
                                "model.safetensors": weights,
                                "tokenizer/vocab.txt": b"[PAD]\nhello\n"},
        "pagesorg/hostile-card": {"README.md": HOSTILE_CARD,
                                  "<img src=x onerror=alert(1)>.txt": b"name with html\n"},
        "pagesorg/big-card": {"README.md": b"# big\n" + b"lorem ipsum " * (20 * 1024 * 1024 // 12)},
        "pagesorg/many-headings": {"README.md": b"".join(b"## heading %d\n" % i
                                                         for i in range(10_000))},
        "pagesorg/yaml-bomb": {"README.md": BOMB},
        "pagesorg/not-utf8": {"README.md": b"---\nlicense: x\n---\n# caf\xe9 \xff\xfe bytes\n"},
    }  # fmt: skip
    for repo_id, files in repos.items():
        hub_server.add_repo(repo_id, files)
    hub_server.add_repo("pagesorg/a-dataset", {"README.md": b"---\nlicense: cc0-1.0\n---\n# rows\n",
                                               "data/train.csv": b"a,b\n1,2\n"},
                        repo_type="dataset")  # fmt: skip
    old = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF2OCI_CACHE")}
    os.environ["HF_ENDPOINT"] = hub_server.url
    os.environ["HF2OCI_CACHE"] = str(root / "cache")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_project(root, models=list(repos), datasets=["pagesorg/a-dataset"],
                     config={"namespace": NS, "base_image": "scratch"})  # fmt: skip
        result = cli("sync", "-q")
        assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    served = Served(Store(NS, root=root / "oci-images"))
    try:
        yield {"url": served.url, "params": params, "root": root}
    finally:
        served.stop()


def elements(html: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every element of a page with its attributes, as a browser's parser reads them."""
    from html.parser import HTMLParser

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Parser().feed(html)
    return found


def page(site: dict[str, Any], path: str, **kwargs: Any) -> requests.Response:
    return requests.get(site["url"] + path, headers=HTML, timeout=30, **kwargs)


def test_the_catalog_lists_searches_and_filters(site: dict[str, Any]) -> None:
    resp = page(site, "/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "script-src" not in resp.headers["content-security-policy"]
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    for repo in ("pagesorg/good-model", "pagesorg/hostile-card", "pagesorg/yaml-bomb"):
        assert f'href="/{repo}"' in resp.text
    assert "pagesorg/a-dataset" not in resp.text
    found = page(site, "/models", params={"search": "tiny classifier"}).text  # card text
    assert 'href="/pagesorg/good-model"' in found and "hostile-card" not in found
    filtered = page(site, "/models", params={"pipeline_tag": "text-generation"}).text
    assert "hostile-card" in filtered and "good-model" not in filtered
    datasets = page(site, "/datasets").text
    assert 'href="/datasets/pagesorg/a-dataset"' in datasets and "good-model" not in datasets
    assert requests.get(site["url"] + "/-/hf2oci.css", timeout=10).headers[
        "content-type"].startswith("text/css")  # fmt: skip


def test_api_clients_keep_json_at_the_same_paths(site: dict[str, Any]) -> None:
    api = requests.get(site["url"] + "/api/models", timeout=10)
    assert api.headers["content-type"].startswith("application/json")
    assert "pagesorg/good-model" in {m["id"] for m in api.json()}
    plain = requests.get(site["url"] + "/pagesorg/good-model", timeout=10)
    assert plain.status_code == 404 and plain.headers["content-type"].startswith("application/json")
    resolved = requests.get(site["url"] + "/pagesorg/good-model/resolve/main/config.json",
                            headers=HTML, timeout=10)  # fmt: skip
    assert resolved.content == b'{"a": 1}\n'


def test_a_repo_page_renders_the_card_with_its_metadata_and_snippets(site: dict[str, Any]) -> None:
    resp = page(site, "/pagesorg/good-model")
    assert resp.status_code == 200
    text = resp.text
    assert "<h1>A tiny classifier</h1>" in text
    assert "<table>" in text and "<td" in text and "0.91" in text
    assert '<code class="language-python">' in text
    assert "pipeline_tag:" not in text  # the front matter is metadata, not text
    assert "<dt>pipeline_tag</dt><dd>text-classification</dd>" in text
    assert f"HF_ENDPOINT={site['url']}" in text and "vllm serve pagesorg/good-model" in text
    assert "hf2oci extract" in text and "docker pull" in text
    assert "apache-2.0" in text
    missing = page(site, "/pagesorg/absent-model")
    assert missing.status_code == 404 and "text/html" in missing.headers["content-type"]


def test_tree_and_blob_pages_navigate_and_read_the_safetensors_header(
    site: dict[str, Any],
) -> None:
    tree = page(site, "/pagesorg/good-model/tree/main").text
    assert 'href="/pagesorg/good-model/tree/main/tokenizer"' in tree
    assert 'href="/pagesorg/good-model/blob/main/config.json"' in tree
    sub = page(site, "/pagesorg/good-model/tree/main/tokenizer").text
    assert 'href="/pagesorg/good-model/blob/main/tokenizer/vocab.txt"' in sub
    blob = page(site, "/pagesorg/good-model/blob/main/config.json").text
    assert 'class="code"' in blob and "resolve/" in blob
    st = page(site, "/pagesorg/good-model/blob/main/model.safetensors").text
    assert f"{site['params']:,}" in st and "embed.weight" in st and "64×32" in st
    assert page(site, "/pagesorg/good-model/blob/main/nope.txt").status_code == 404
    assert page(site, "/pagesorg/good-model/tree/main/nope").status_code == 404


def test_hostile_cards_and_names_run_nothing_and_stay_within_limits(site: dict[str, Any]) -> None:
    resp = page(site, "/pagesorg/hostile-card")
    text = resp.text
    assert resp.status_code == 200
    tags = elements(text)
    names = {t for t, _ in tags}
    assert not names & {"script", "svg", "style", "iframe", "object", "embed"}, names
    for tag, attrs in tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert not (value or "").strip().lower().startswith(("javascript:", "data:")), value
            assert name != "style", (tag, value)  # the CSP allows no inline style
    assert "window.__pwned" in text  # shown as text, not run
    tree = page(site, "/pagesorg/hostile-card/tree/main").text
    assert "<img src=x" not in tree and "&lt;img src=x onerror=alert(1)&gt;.txt" in tree

    # a 20 MiB card: its first MiB, quickly, while others are answered
    done: list[float] = []

    def other() -> None:
        t = time.monotonic()
        assert page(site, "/pagesorg/good-model").status_code == 200
        done.append(time.monotonic() - t)

    worker = threading.Thread(target=other)
    t = time.monotonic()
    worker.start()
    big = page(site, "/pagesorg/big-card")
    elapsed = time.monotonic() - t
    worker.join()
    assert big.status_code == 200 and len(big.content) < 3 << 20 and elapsed < 10
    assert "longer than 1 MiB" in big.text and done and done[0] < 10
    many = page(site, "/pagesorg/many-headings")
    assert many.status_code == 200 and many.text.count("<h2>") == 10_000
    bomb = page(site, "/pagesorg/yaml-bomb")
    assert bomb.status_code == 200 and "after the bomb" in bomb.text and len(bomb.content) < 1 << 20
    odd = page(site, "/pagesorg/not-utf8")
    assert odd.status_code == 200 and "caf\ufffd" in odd.text


def test_a_browser_meets_the_token_gate_with_a_login_form(site: dict[str, Any]) -> None:
    from hf2oci.consume.serve.store import Store
    from test_serve import Served

    served = Served(Store(NS, root=site["root"] / "oci-images"), tokens=["s3cret-tok"])
    try:
        gate = requests.get(served.url + "/pagesorg/good-model", headers=HTML, timeout=10)
        assert gate.status_code == 401 and '<form method="post" action="/-/login">' in gate.text
        assert "s3cret" not in gate.text
        api = requests.get(served.url + "/api/models", headers=HTML, timeout=10)
        assert api.status_code == 401 and api.headers["content-type"].startswith("application/json")
        session = requests.Session()
        login = session.post(served.url + "/-/login", data={"token": "s3cret-tok"},
                             allow_redirects=False, timeout=10)  # fmt: skip
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert session.get(served.url + "/pagesorg/good-model", headers=HTML,
                           timeout=10).status_code == 200  # fmt: skip
        wrong = requests.Session()
        wrong.post(served.url + "/-/login", data={"token": "nope"}, timeout=10)
        assert wrong.get(served.url + "/", headers=HTML, timeout=10).status_code == 401
    finally:
        served.stop()


def _browser(width: int, height: int) -> Any:
    """Debian's chromium, headless, driven by Selenium through Debian's chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "chromium and chromium-driver are not installed (scripts/test.sh installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def _artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    where = os.environ.get("HF2OCI_ARTIFACTS")
    path = Path(where) / "pages" if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_in_chromium_the_pages_render_navigate_and_run_no_script(
    site: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = _artifacts(tmp_path_factory)
    url = site["url"]
    browser = _browser(1280, 900)
    try:
        browser.get(url + "/")
        listed = {a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.repo-id")}
        assert {"pagesorg/good-model", "pagesorg/hostile-card"} <= listed
        browser.save_screenshot(str(shots / "catalog-desktop.png"))
        box = browser.find_element(By.NAME, "search")
        box.send_keys("tiny classifier", Keys.ENTER)
        narrowed = {a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.repo-id")}
        assert narrowed == {"pagesorg/good-model"}, narrowed
        browser.find_element(By.LINK_TEXT, "pagesorg/good-model").click()
        assert browser.find_element(By.CSS_SELECTOR, "article.card h1").text == "A tiny classifier"
        assert browser.find_elements(By.CSS_SELECTOR, "article.card table td")
        browser.save_screenshot(str(shots / "repo-desktop.png"))
        browser.find_element(By.LINK_TEXT, "Files").click()
        browser.find_element(By.LINK_TEXT, "tokenizer/").click()
        assert browser.current_url.endswith("/tree/main/tokenizer")
        assert browser.find_element(By.LINK_TEXT, "vocab.txt")
        browser.save_screenshot(str(shots / "tree-desktop.png"))
        browser.get(url + "/pagesorg/good-model/blob/main/model.safetensors")
        assert browser.find_element(By.CSS_SELECTOR, ".params").text == f"{site['params']:,}"
        browser.save_screenshot(str(shots / "safetensors-desktop.png"))
        for repo in ("hostile-card", "yaml-bomb", "not-utf8"):
            browser.get(f"{url}/pagesorg/{repo}")
            assert browser.execute_script("return window.__pwned === undefined")
            assert browser.find_element(By.CSS_SELECTOR, "header.top").is_displayed()
        browser.get(url + "/pagesorg/hostile-card")
        for link in browser.find_elements(By.CSS_SELECTOR, "article.card a"):
            href = (link.get_attribute("href") or "").lower()
            assert not href.startswith(("javascript:", "data:")), href
        browser.save_screenshot(str(shots / "hostile-desktop.png"))
        problems = [e for e in browser.get_log("browser")
                    if e["level"] == "SEVERE" and "favicon" not in e["message"]]  # fmt: skip
        assert not problems, problems
    finally:
        browser.quit()
    phone = _browser(390, 844)
    try:
        for name, path in (("catalog", "/"), ("repo", "/pagesorg/good-model")):
            phone.get(url + path)
            phone.save_screenshot(str(shots / f"{name}-phone.png"))
            width = phone.execute_script("return document.documentElement.scrollWidth")
            inner = phone.execute_script("return window.innerWidth")
            assert width <= inner, (name, width, inner)  # no sideways scrolling on a phone
    finally:
        phone.quit()
