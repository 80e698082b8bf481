"""What the hub's other clients ask of ``serve``, besides huggingface_hub's routes: a repo's
``refs`` (llama.cpp's ``-hf`` reads the ``targetCommit`` of a branch), an LFS file's ``raw``
pointer (huggingface.js's ``fileExists``; RamaLama reads the sha256 from it), and the GGUF
manifest ``/v2/{org}/{repo}/manifests/{tag}`` that RamaLama and llama.cpp before March 2026
read, with the quant chosen as ``gguf.py`` chooses it. Every
answer reads the same store, through the same token gate, ``--verify-key`` policy and metrics
as the rest of serve."""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hf2oci import labels as L
from hf2oci.consume.serve.answers import error
from hf2oci.consume.serve.files import RepoFile, lfs_pointer
from hf2oci.consume.serve.gguf import NO_TAG, NOT_GGUF, choose_gguf, is_model_gguf
from hf2oci.consume.serve.store import Snapshot
from hf2oci.consume.serve.streaming import Downloads
from hf2oci.errors import ServeError
from hf2oci.spec import RepoType


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


class Clients:
    """The routes that answer llama.cpp, RamaLama and huggingface.js, over serve's downloads."""

    def __init__(self, downloads: Downloads) -> None:
        self.downloads = downloads
        self.call, self.store = downloads.call, downloads.store

    def routes(self) -> list[Route]:
        return [
            Route("/v2/{org}/{name}/manifests/{tag}", self.manifest, methods=["GET", "HEAD"]),
        ]

    async def refs(self, request: Request, repo_type: RepoType, repo_id: str) -> Response:
        """``GET /api/{type}s/{repo}/refs``: branches with their ``targetCommit``."""
        snap = await self.call(self.store.snapshot, repo_type, repo_id, "main")
        prs = request.query_params.get("include_prs", "").lower() in ("1", "true")
        return JSONResponse(refs_doc(snap, prs))

    async def pointer(self, snap: Snapshot, path: str, head: bool) -> Response | None:
        """``/{repo}/raw/{rev}/{path}`` of an LFS file: its pointer text (``version``,
        ``oid sha256:…``, ``size``); None for a small file (its bytes, as ``resolve`` gives
        them) or one not there."""
        f = snap.files.get(path)
        if f is None:
            return None
        await self.call(f.ensure_hashes)  # an image before the file index: is it LFS?
        if not f.lfs:
            return None
        sha256 = await self.call(_signed_sha256, snap, f)
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
            snap = await self.call(self.store.snapshot, "model", repo_id, "main")
            choice = choose_gguf(sorted(snap.files), params["tag"])
            if choice is None:
                why = NO_TAG if any(is_model_gguf(p) for p in snap.files) else NOT_GGUF
                raise ServeError(400, "BadRequest", why)
            doc: dict[str, object] = {
                "ggufFile": await self.call(_manifest_file, snap, choice.model)
            }
            if choice.mmproj is not None:
                doc["mmprojFile"] = await self.call(_manifest_file, snap, choice.mmproj)
            response = JSONResponse(doc)
            if head:
                return Response(status_code=200, headers=dict(response.headers))
            return response
        except ServeError as e:
            return error(e, head)


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
