"""The hub's web pages, at the hub's own paths, rendered on the server from the images: the
catalog (``/``, ``/models``, ``/datasets``), a repo's page (its card), its files (``tree``) and
one file (``blob``). No script anywhere: Jinja2 escapes every value, the card's Markdown goes
through markdown-it-py (raw HTML off) and then nh3 (Ammonia), and every page carries a strict
Content-Security-Policy. Cards are third-party text: read capped, front matter parsed with no
YAML aliases."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jinja2
import nh3
import yaml
from markdown_it import MarkdownIt

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.consume.serve import preview
from hf2oci.consume.serve.files import RepoFile
from hf2oci.consume.serve.gguf import usage
from hf2oci.consume.serve.store import Snapshot, Store
from hf2oci.consume.serve.xet import XetSettings
from hf2oci.oci.image import Image
from hf2oci.spec import RepoType
from hf2oci.units import human_size

log = logging.getLogger(__name__)

#: no script, no plugin, no frame, nothing from elsewhere: the air gap has no CDN
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
STYLESHEET = "/-/hf2oci.css"
#: a card is read this far (a 20 MiB card renders its first MiB, and says so)
CARD_LIMIT = 1 << 20
#: the front matter parsed at most this long
FRONT_LIMIT = 64 << 10
#: text files shown inline up to this size
TEXT_LIMIT = 1 << 20
PER_PAGE = 30
_TEXT_SUFFIXES = (
    ".json", ".yaml", ".yml", ".md", ".txt", ".py", ".cfg", ".toml", ".csv", ".jsonl", ".ini",
    ".jinja", ".tiktoken", ".sh", ".gitattributes",
)  # fmt: skip
_ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt",
    "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre",
    "s", "strong", "sub", "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
}


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: a card's front matter cannot expand into a bomb."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not read in a model card")
        return super().compose_node(parent, index)


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, Markdown body) of a model card; bad or hostile YAML reads as none."""
    if not text.startswith("---"):
        return {}, text
    end = text.find("\n---", 3)
    if end < 0:
        return {}, text
    body = text[end + 4 :].split("\n", 1)[1] if "\n" in text[end + 4 :] else ""
    front = text[3:end]
    if len(front) > FRONT_LIMIT:
        return {}, body
    try:
        doc = yaml.load(front, Loader=_NoAliases)  # a SafeLoader, aliases refused
    except yaml.YAMLError:
        return {}, body
    return (doc if isinstance(doc, dict) else {}), body


@functools.cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    """Markdown → HTML that can run nothing: raw HTML escaped by the parser, then cleaned by
    nh3 to a list of tags and attributes, http(s)/mailto links only."""
    html = _markdown().render(text)
    # no style attribute survives (a table column's alignment neither): the CSP allows none
    return nh3.clean(
        html, tags=_ALLOWED_TAGS, attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"}, link_rel="nofollow noopener noreferrer",
    )  # fmt: skip


@functools.cache
def environment() -> jinja2.Environment:
    from hf2oci.render import _ROOTS, _TraversableLoader

    env = jinja2.Environment(
        loader=_TraversableLoader(_ROOTS),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(f"pages/{name}").render(stylesheet=STYLESHEET, **context)


@functools.cache
def stylesheet() -> bytes:
    from pygments.formatters import HtmlFormatter

    from hf2oci.render import _ROOTS

    for root in _ROOTS:
        css = root / "pages" / "hf2oci.css"
        if css.is_file():
            base = css.read_text(encoding="utf-8")
            break
    else:
        base = ""
    rules = str(HtmlFormatter(style="default").get_style_defs(".code"))  # type: ignore[no-untyped-call]
    return (base + "\n" + rules).encode()


# -- what the pages know of a repo --------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    """What a repo's card says, read once per image."""

    meta: dict[str, Any]
    body: str
    truncated: bool

    def values(self, key: str) -> list[str]:
        value = self.meta.get(key)
        items = value if isinstance(value, list) else [value] if value is not None else []
        return [str(v) for v in items if isinstance(v, (str, int, float)) and str(v)][:50]


def read_card(files: Mapping[str, RepoFile]) -> Card:
    readme = files.get("README.md")
    if readme is None:
        return Card({}, "", False)
    data = b"".join(readme.chunks(0, min(readme.size, CARD_LIMIT)))
    text = data.decode("utf-8", "replace").replace("\x00", "\ufffd")
    meta, body = split_card(text)
    return Card(meta, body, readme.size > CARD_LIMIT)


@dataclass
class Row:
    """One repo of the catalog."""

    repo_id: str
    repo_type: RepoType
    revision: str
    date: str
    size: int
    files: int
    format: str
    scan: str
    license: str
    card: Card
    #: a cosign signature is stored beside the image (``sha256-<hex>.sig``)
    signed: bool = False
    #: what the filters and the search look at, worked out once
    facets: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    haystack: str = field(default="", repr=False)
    _html: str | None = field(default=None, repr=False)
    _preview: tuple[str | None, preview.Rows | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.facets:
            self.facets = {k: frozenset(self.card.values(k)) for k in FILTER_KEYS}
            if self.license:
                self.facets["license"] |= {self.license}
        if not self.haystack:
            self.haystack = self.repo_id.lower() + "\n" + self.card.body[:65536].lower()

    def matches(self, search: str, filters: Mapping[str, str]) -> bool:
        if search and search.lower() not in self.haystack:
            return False
        return all(wanted in self.facets.get(key, ()) for key, wanted in filters.items())

    @property
    def card_html(self) -> str:
        """The card rendered and cleaned, once per image."""
        if self._html is None:
            self._html = render_markdown(self.card.body)
        return self._html

    def data_preview(self, files: Mapping[str, RepoFile]) -> tuple[str | None, preview.Rows | None]:
        """A dataset's first data file and its first rows, read once per image."""
        if self._preview is None:
            path = first_data_file(files) if self.repo_type == "dataset" else None
            self._preview = (path, preview.dataset_rows(files[path]) if path else None)
        return self._preview


FILTER_KEYS = ("pipeline_tag", "library_name", "license", "language", "tags")


class Catalog:
    """Rows of the catalog. A row is cached by image digest (a moved tag is a new row); the
    list of rows for ``ttl`` seconds, and past that it answers the list it has while one
    thread reads the registry again (a page never waits on a refresh it does not need)."""

    def __init__(self, store: Store, max_rows: int = 8192, workers: int = 8) -> None:
        self.store = store
        self.max_rows, self.workers = max_rows, workers
        self._rows: OrderedDict[str, Row] = OrderedDict()
        self._lists: dict[RepoType, tuple[float, list[Row], dict[str, dict[str, int]]]] = {}
        self._refreshing: set[RepoType] = set()
        self._lock = threading.Lock()

    def row(self, repo_type: RepoType, repo_id: str, image: Image) -> Row:
        with self._lock:
            found = self._rows.get(image.digest)
        if found is not None:
            return found
        files = self.store.files(image)
        labels = L.of_image(image)
        card = read_card(files)
        row = Row(
            repo_id=repo_id, repo_type=repo_type, revision=labels.get(L.REVISION, ""),
            date=labels.get(L.CREATED, ""), size=sum(f.size for f in files.values()),
            files=len(files), format=labels.get(L.FORMAT, "image"),
            scan=labels.get(L.SCAN, ""),
            license=labels.get(L.LICENSES, "") or ", ".join(card.values("license")),
            card=card,
        )  # fmt: skip
        with self._lock:
            self._rows[image.digest] = row
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)
        return row

    def rows(self, repo_type: RepoType) -> list[Row]:
        """Every mirrored repo of a type, newest first."""
        return self.listing(repo_type)[0]

    def listing(self, repo_type: RepoType) -> tuple[list[Row], dict[str, dict[str, int]]]:
        """Every mirrored repo of a type, newest first, and the values of each filter."""
        now = time.monotonic()
        with self._lock:
            cached = self._lists.get(repo_type)
            stale = cached is not None and now - cached[0] >= self.store.ttl
            start = stale and repo_type not in self._refreshing
            if start:
                self._refreshing.add(repo_type)
        if cached is None:
            return self._read(repo_type)
        if start:
            threading.Thread(target=self._refresh, args=(repo_type,), daemon=True,
                             name="catalog-refresh").start()  # fmt: skip
        return cached[1], cached[2]

    def _refresh(self, repo_type: RepoType) -> None:
        try:
            # two at a time: a refresh in the background spreads out, the API keeps its pace
            self._read(repo_type, workers=2)
        except Exception as e:  # the list read before keeps answering; the next page retries
            log.warning("catalog: %s", e)
        finally:
            with self._lock:
                self._refreshing.discard(repo_type)

    def _read(
        self, repo_type: RepoType, workers: int | None = None
    ) -> tuple[list[Row], dict[str, dict[str, int]]]:
        started = time.monotonic()
        workers = workers or self.workers
        tags = self.store.tags(repo_type)
        signatures = {t for t in tags if t.startswith("sha256-") and t.endswith(".sig")}
        listed = self.store.listed(repo_type, tags, workers=workers)

        def one(item: tuple[str, Image]) -> Row:
            row = self.row(repo_type, item[0], item[1])
            row.signed = f"{item[1].digest.replace(':', '-')}.sig" in signatures
            return row

        with ThreadPoolExecutor(workers, thread_name_prefix="catalog") as pool:
            out = list(pool.map(one, listed))
        out.sort(key=lambda r: (r.date, r.repo_id), reverse=True)
        facets = Facets.of(out).counts
        with self._lock:
            self._lists[repo_type] = (started, out, facets)
        return out, facets


@dataclass
class Facets:
    """The values each filter can take, with counts (the catalog's side bar)."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Facets:
        counts: dict[str, dict[str, int]] = {k: {} for k in FILTER_KEYS}
        for row in rows:
            for key in FILTER_KEYS:
                for v in row.facets.get(key, ()):
                    counts[key][v] = counts[key].get(v, 0) + 1
        return cls({k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[:20])
                    for k, v in counts.items() if v})  # fmt: skip


def catalog_page(catalog: Catalog, repo_type: RepoType, query: Mapping[str, str], base: str) -> str:
    rows, facets = catalog.listing(repo_type)
    search = query.get("search", "").strip()[:200]
    filters = {k: query[k][:200] for k in FILTER_KEYS if query.get(k)}
    chosen = [r for r in rows if r.matches(search, filters)]
    try:
        page = max(1, int(query.get("p", "1")))
    except ValueError:
        page = 1
    pages = max(1, math.ceil(len(chosen) / PER_PAGE))
    page = min(page, pages)
    shown = chosen[(page - 1) * PER_PAGE : page * PER_PAGE]
    return render(
        "catalog.html.j2", kind=repo_type, rows=shown, total=len(chosen), all=len(rows),
        search=search, filters=filters, facets=facets, page=page, pages=pages,
        prefix="/datasets" if repo_type == "dataset" else "", base=base,
    )  # fmt: skip


def repo_prefix(repo_type: RepoType) -> str:
    return "/datasets" if repo_type == "dataset" else ""


def repo_page(store: Store, catalog: Catalog, snap: Snapshot, base: str) -> str:
    row = catalog.row(snap.repo_type, snap.repo_id, snap.image)
    tag = naming.repo_tag(snap.repo_id)
    pinned = sorted(t for t in store.tags(snap.repo_type) if t.startswith(tag + naming.SEP))
    image = _image_name(store, snap.repo_type)
    data_path, rows = row.data_preview(snap.files)
    return render(
        "repo.html.j2", row=row, snap=snap, card=row.card_html,
        meta=_meta_items(row.card.meta), pinned=pinned, image=image, tag=tag, base=base,
        prefix=repo_prefix(snap.repo_type), hub_path=naming.hub_path(snap.repo_id, snap.repo_type),
        data_path=data_path, rows=rows, verified=store.verify_key is not None,
        usage=usage(list(snap.files)),
    )  # fmt: skip


def first_data_file(files: Mapping[str, RepoFile]) -> str | None:
    """The file a dataset's page previews: a train split first, then the shortest path."""
    infos = ("dataset_infos.json", "dataset_info.json")
    data = [
        p
        for p in files
        if p.lower().endswith(preview.DATA_SUFFIXES) and p.rsplit("/", 1)[-1] not in infos
    ]
    if not data:
        return None
    return min(data, key=lambda p: ("train" not in p.lower(), p.count("/"), p))


def _image_name(store: Store, repo_type: RepoType) -> str:
    repository = store.repository(repo_type)
    if store.client is not None:
        return f"{store.client.registry}/{repository}"
    return f"oci:{store.root}/{repository}"


def _meta_items(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The front matter as short key/value lines (no nesting shown in full)."""
    out = []
    for key, value in list(meta.items())[:40]:
        if isinstance(value, (list, tuple)):
            text = ", ".join(str(v) for v in value[:20] if not isinstance(v, (dict, list)))
        elif isinstance(value, dict):
            text = f"({len(value)} entries)"
        else:
            text = str(value)
        out.append((str(key)[:80], text[:300]))
    return out


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    folder: bool
    size: int
    sha256: str
    #: how a client with hf_xet gets it: "Xet" or "HTTP" (folders: "")
    transfer: str = ""


def tree_entries(
    files: Mapping[str, RepoFile], path: str, xet: XetSettings | None = None
) -> list[Entry]:
    prefix = f"{path}/" if path else ""
    folders: dict[str, int] = {}
    out: list[Entry] = []
    for name, f in files.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if "/" in rest:
            top = rest.split("/", 1)[0]
            folders[top] = folders.get(top, 0) + f.size
        else:
            transfer = xet.transfer(f) if xet is not None else "HTTP"
            out.append(Entry(rest, name, False, f.size, f.sha256 or "", transfer))
    dirs = [Entry(n, prefix + n, True, s, "") for n, s in sorted(folders.items())]
    return dirs + sorted(out, key=lambda e: e.name)


def tree_page(snap: Snapshot, rev: str, path: str, xet: XetSettings | None = None) -> str | None:
    entries = tree_entries(snap.files, path, xet)
    if path and not entries:
        return None
    return render(
        "tree.html.j2", snap=snap, rev=rev, path=path, entries=entries,
        crumbs=_crumbs(path), prefix=repo_prefix(snap.repo_type),
    )  # fmt: skip


def _crumbs(path: str) -> list[tuple[str, str]]:
    parts = [p for p in path.split("/") if p]
    return [(p, "/".join(parts[: i + 1])) for i, p in enumerate(parts)]


def blob_page(snap: Snapshot, rev: str, path: str, xet: XetSettings | None = None) -> str | None:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import TextLexer, guess_lexer_for_filename
    from pygments.util import ClassNotFound

    f = snap.files.get(path)
    if f is None:
        return None
    code = tensors = gguf = rows = None
    if f.size <= TEXT_LIMIT and (path.endswith(_TEXT_SUFFIXES) or "." not in path.rsplit("/")[-1]):
        data = b"".join(f.chunks())
        if b"\x00" not in data[:8192]:
            text = data.decode("utf-8", "replace")
            try:
                lexer = guess_lexer_for_filename(path.rsplit("/", 1)[-1], text[:4096])
            except ClassNotFound:
                lexer = TextLexer()
            code = highlight(text, lexer, HtmlFormatter(cssclass="code", linenos=False))
    if path.endswith(".safetensors"):
        tensors = preview.safetensors_header(f)
    elif path.endswith(".gguf"):
        gguf = preview.gguf_view(f)
    elif path.lower().endswith(preview.DATA_SUFFIXES):
        rows = preview.dataset_rows(f)
    f.ensure_hashes()
    return render(
        "blob.html.j2", snap=snap, rev=rev, path=path, f=f, code=code, tensors=tensors,
        gguf=gguf, rows=rows, transfer=xet.transfer(f) if xet is not None else "HTTP",
        crumbs=_crumbs(path), prefix=repo_prefix(snap.repo_type),
    )  # fmt: skip


def login_page(message: str = "") -> str:
    return render("login.html.j2", message=message)
