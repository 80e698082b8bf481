"""What the hub's other clients ask of ``serve``, besides huggingface_hub's routes: a repo's
``refs`` (llama.cpp's ``-hf`` reads the ``targetCommit`` of a branch), a file's ``raw`` text
(huggingface.js's ``fileExists``; for an LFS file its pointer, which RamaLama reads the sha256
from), and the GGUF manifest ``/v2/{org}/{repo}/manifests/{tag}`` that RamaLama and llama.cpp
before March 2026 read, with the quant chosen the way the hub and llama.cpp choose it. Every
answer reads the same store, through the same token gate, ``--verify-key`` policy and metrics
as the rest of serve."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from hf2oci import labels as L
from hf2oci.consume.serve.app import _error, _Hub
from hf2oci.consume.serve.store import RepoFile, Snapshot, lfs_pointer
from hf2oci.errors import ServeError
from hf2oci.spec import RepoType

#: what ``latest`` (no tag) means: the first of these quants a file name carries, else the
#: first model GGUF (the hub's and llama.cpp's order)
DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")
#: GGUF files that are not a model to load but one beside it
_SIDECARS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_QUANT_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
#: the hub's answers when no file fits (RamaLama and Ollama show them as they are)
NOT_GGUF = "Repository is not GGUF or is not compatible with llama.cpp"
NO_TAG = 'The specified tag is not available in the repository. Please use another tag or "latest"'


@dataclass(frozen=True)
class GgufChoice:
    """The GGUF a quant tag names in a repo: its (first) file, and a projector beside it."""

    model: str
    mmproj: str | None = None


def is_model_gguf(path: str) -> bool:
    """A ``.gguf`` that is a model, not a projector, an importance matrix or a draft head."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(s in name for s in _SIDECARS)


def _split(path: str) -> tuple[str, int, int]:
    """``(name without .gguf and split suffix, part, parts)`` of a GGUF path."""
    stem = path.removesuffix(".gguf")
    m = _SPLIT.match(stem)
    return (m[1], int(m[2]), int(m[3])) if m else (stem, 1, 1)


def quant_bits(path: str) -> int:
    """The bits a file name's quant tag says (``Q4_K_M`` → 4, ``F16`` → 16; 0: none)."""
    m = _QUANT_TAG.search(_split(path)[0])
    digits = re.search(r"[0-9]+", m[1]) if m else None
    return int(digits[0]) if digits else 0


def choose_gguf(paths: Sequence[str], tag: str) -> GgufChoice | None:
    """The GGUF that ``tag`` names among ``paths`` (the hub's listing order), as the hub and
    llama.cpp choose it: the tag matched case-insensitively against file names (``<tag>.`` or
    ``<tag>-``), a split model by its first part; ``latest`` (or no tag) is Q4_K_M, then Q8_0,
    then the first model GGUF. None when nothing fits."""
    models = [p for p in paths if is_model_gguf(p) and _split(p)[1] == 1]
    latest = tag.lower() in ("", "latest")
    for quant in DEFAULT_QUANTS if latest else (tag,):
        pattern = re.compile(re.escape(quant) + r"[.-]", re.IGNORECASE)
        found = next((p for p in models if pattern.search(p)), None)
        if found is not None:
            return GgufChoice(found, best_mmproj(paths, found))
    if latest and models:
        return GgufChoice(models[0], best_mmproj(paths, models[0]))
    return None


def best_mmproj(paths: Iterable[str], model: str) -> str | None:
    """The projector for ``model``, as llama.cpp picks it: an ``mmproj`` GGUF in the model's
    folder or one above it, the deepest first, then the nearest in quant bits."""
    folder = model.split("/")[:-1]
    bits = quant_bits(model)
    best: tuple[int, int] | None = None
    found = None
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        if not name.endswith(".gguf") or "mmproj" not in name:
            continue
        parent = p.split("/")[:-1]
        if parent != folder[: len(parent)]:
            continue
        rank = (-len(parent), abs(quant_bits(p) - bits))
        if best is None or rank < best:
            best, found = rank, p
    return found


def quant_tag(path: str) -> str:
    """A GGUF file name's quant tag, as ``-hf ORG/REPO:TAG`` names it (``""``: none)."""
    m = _QUANT_TAG.search(_split(path)[0].rsplit("/", 1)[-1])
    return m[1].upper() if m else ""


@dataclass(frozen=True)
class Usage:
    """What a repo page's "use it here" lines need to know of a repo's files."""

    #: the quant tag llama.cpp and RamaLama take by default (None: no GGUF; "": untagged)
    gguf_tag: str | None
    #: ONNX weights that transformers.js loads
    onnx: bool


def usage(paths: Sequence[str]) -> Usage:
    choice = choose_gguf(sorted(paths), "latest")
    onnx = any(p.endswith(".onnx") for p in paths)
    return Usage(quant_tag(choice.model) if choice is not None else None, onnx)


def refs_doc(snap: Snapshot, pull_requests: bool = False) -> dict[str, object]:
    """A repo's refs as the hub lists them: the branch the image was made from (and ``main``,
    which serve answers with the same image), at its commit; no tags or converts."""
    made_from = snap.labels.get(L.REF, "main")
    names = ["main"] + ([made_from] if made_from not in ("main", "") and "/" not in made_from
                        else [])  # fmt: skip
    branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": snap.commit} for n in names]
    doc: dict[str, object] = {"branches": branches, "converts": [], "tags": []}
    if pull_requests:
        doc["pullRequests"] = []
    return doc


#: the client families ``/metrics`` counts requests of, from the User-Agent (a fixed set: a
#: label per distinct User-Agent would grow without bound)
_FAMILIES = (
    ("llama-cpp", "llama.cpp"),
    ("hf_hub/", "huggingface_hub"),
    ("hf-hub/", "hf-hub-rust"),
    ("huggingface.js", "huggingface.js"),
    ("transformers.js", "transformers.js"),
    ("hf_xet", "hf_xet"),
    ("python-urllib", "python-urllib"),
    ("node", "node"),
    ("mozilla", "browser"),
)


def client_family(user_agent: str) -> str:
    """Which client sent a request, by its User-Agent: one of a few families, else ``other``."""
    agent = user_agent.lower()
    for marker, family in _FAMILIES:
        if marker in agent:
            return family
    return "other"


class Clients:
    """The routes of one `_Hub` that answer llama.cpp, RamaLama and huggingface.js."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.requests = Counter(
            "hf2oci_serve_client_requests", "Requests by client family (from the User-Agent: "
            "llama.cpp, huggingface_hub, hf-hub-rust, huggingface.js, transformers.js, hf_xet, "
            "python-urllib, node, browser, other)", ["client"], registry=hub.metrics.registry,
        )  # fmt: skip

    def seen(self, scope: Scope) -> None:
        """Count a request by the family of its client."""
        agent = next((v for k, v in scope.get("headers") or [] if k == b"user-agent"), b"")
        self.requests.labels(client_family(agent.decode("latin-1"))).inc()

    def routes(self) -> list[Route]:
        return [
            Route("/v2/{org}/{name}/manifests/{tag}", self.manifest, methods=["GET", "HEAD"]),
        ]

    async def refs(self, request: Request, repo_type: RepoType, repo_id: str) -> Response:
        """``GET /api/{type}s/{repo}/refs``: branches with their ``targetCommit``."""
        snap = await self.hub.call(self.hub.store.snapshot, repo_type, repo_id, "main")
        prs = request.query_params.get("include_prs", "").lower() in ("1", "true")
        return JSONResponse(refs_doc(snap, prs))

    async def raw(self, request: Request, snap: Snapshot, path: str, head: bool) -> Response:
        """``/{repo}/raw/{rev}/{path}``: a small file's bytes (as ``resolve`` gives them), an LFS
        file's pointer text (``version``, ``oid sha256:…``, ``size``), as text."""
        f = snap.files.get(path)
        if f is not None:
            await self.hub.call(f.ensure_hashes)  # an image before the file index: is it LFS?
        if f is None or not f.lfs:
            response = await self.hub._file(snap, path, request, head)
            if response.status_code < 300:
                response.headers["Content-Type"] = "text/plain; charset=utf-8"
            return response
        sha256 = _signed_sha256(snap, f)
        pointer = lfs_pointer(sha256, f.size)
        headers = {
            "X-Repo-Commit": snap.commit,
            "ETag": f'"{f.blob_id}"',
            "Content-Length": str(len(pointer)),
        }
        return Response(b"" if head else pointer, media_type="text/plain; charset=utf-8",
                        headers=headers)  # fmt: skip

    async def manifest(self, request: Request) -> Response:
        """``/v2/{org}/{repo}/manifests/{tag}``: the GGUF a quant tag names (``ggufFile``, with
        ``blobId`` = ``sha256:<its LFS sha256>``) and a projector beside it (``mmprojFile``)."""
        head = request.method == "HEAD"
        params = request.path_params
        try:
            repo_id = f"{params['org']}/{params['name']}"
            snap = await self.hub.call(self.hub.store.snapshot, "model", repo_id, "main")
            choice = choose_gguf(sorted(snap.files), params["tag"])
            if choice is None:
                why = NO_TAG if any(is_model_gguf(p) for p in snap.files) else NOT_GGUF
                raise ServeError(400, "BadRequest", why)
            doc: dict[str, object] = {
                "ggufFile": await self.hub.call(_manifest_file, snap, choice.model)
            }
            if choice.mmproj is not None:
                doc["mmprojFile"] = await self.hub.call(_manifest_file, snap, choice.mmproj)
            response = JSONResponse(doc)
            if head:
                return Response(status_code=200, headers=dict(response.headers))
            return response
        except ServeError as e:
            return _error(e, head)


def _signed_sha256(snap: Snapshot, f: RepoFile) -> str:
    """``f``'s sha256 (LFS, or computed for a small file), checked against the verified
    provenance's when serve verifies images: a hash the signature does not vouch for is
    never handed to a client that checks downloads against it."""
    if snap.signed is not None and f.path not in snap.signed:
        raise ServeError(403, "UnverifiedImage", f"{f.path} is not in the signed file list")
    if f.sha256 is not None:
        sha256 = f.sha256
    else:  # a small file the index records no sha256 for (rare for a GGUF)
        h = hashlib.sha256()
        for chunk in f.chunks():
            h.update(chunk)
        sha256 = h.hexdigest()
    signed = snap.signed[f.path].get("sha256") if snap.signed is not None else None
    if signed is not None and signed != sha256:
        raise ServeError(403, "UnverifiedImage", f"{f.path}: its hash is not the signed one")
    return sha256


def _manifest_file(snap: Snapshot, path: str) -> dict[str, object]:
    f = snap.files[path]
    f.ensure_hashes()
    return {"rfilename": path, "blobId": f"sha256:{_signed_sha256(snap, f)}", "size": f.size}
