"""The Hub API's JSON documents, as the hub writes them: the repo list, repo info (siblings,
card data), tree pages (``Link: rel="next"``) and paths-info, with each file's hashes and, for
files announced over Xet, its Xet hash. They run in worker threads: they may read the storage."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hf2oci import labels as L
from hf2oci.consume.serve.files import RepoFile, lfs_pointer
from hf2oci.consume.serve.store import Snapshot, Store
from hf2oci.consume.serve.xet import XetSettings
from hf2oci.errors import ServeError
from hf2oci.spec import RepoType

#: tree entries per page (the hub pages its trees too; clients follow Link: rel="next")
PAGE = 1000


def listing(store: Store, repo_type: RepoType, search: str | None) -> Response:
    out = []
    for repo_id, image in store.listed(repo_type):
        if search and search.lower() not in repo_id.lower():
            continue
        labels = L.of_image(image)
        doc: dict[str, Any] = {"_id": repo_id, "id": repo_id, "sha": labels.get(L.REVISION),
               "lastModified": labels.get(L.CREATED), "private": False, "tags": []}  # fmt: skip
        if repo_type == "model":
            doc["modelId"] = repo_id
        out.append(doc)
    return JSONResponse(out)


def card(snap: Snapshot) -> dict[str, Any]:
    """The model card's front matter (README.md), when the image has it."""
    readme = snap.files.get("README.md")
    if readme is None or readme.size > 1 << 20:
        return {}
    text = b"".join(readme.chunks()).decode("utf-8", "replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        doc = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return doc if isinstance(doc, dict) else {}


def file_doc(f: RepoFile, *, key: str) -> dict[str, Any]:
    f.ensure_hashes()
    doc: dict[str, Any] = {key: f.path, "size": f.size, "blobId": f.blob_id}
    if f.sha256:
        pointer = len(lfs_pointer(f.sha256, f.size))
        doc["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": pointer}
    return doc


def info(snap: Snapshot, blobs: bool) -> dict[str, Any]:
    front = card(snap)
    siblings = [
        file_doc(snap.files[p], key="rfilename") if blobs else {"rfilename": p}
        for p in sorted(snap.files)
    ]
    tags = front.get("tags") if isinstance(front.get("tags"), list) else []
    doc: dict[str, Any] = {
        "_id": snap.repo_id,
        "id": snap.repo_id,
        "sha": snap.commit,
        "lastModified": snap.last_modified,
        "createdAt": snap.last_modified,
        "private": False,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "siblings": siblings,
    }
    if front:
        doc["cardData"] = front
    if snap.repo_type == "model":
        doc["modelId"] = snap.repo_id
        for key in ("library_name", "pipeline_tag"):
            if isinstance(front.get(key), str):
                doc[key] = front[key]
    return doc


def tree_entry(snap: Snapshot, path: str, dirs: set[str], xet: XetSettings) -> dict[str, Any]:
    if path in dirs:
        oid = hashlib.sha1(f"{snap.commit}:{path}".encode(), usedforsecurity=False).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}
    f = snap.files[path]
    doc = file_doc(f, key="path")
    entry: dict[str, Any] = {"type": "file", "oid": doc["blobId"], "size": f.size, "path": path}
    if "lfs" in doc:
        lfs = doc["lfs"]
        entry["lfs"] = {
            "oid": lfs["sha256"],
            "size": lfs["size"],
            "pointerSize": lfs["pointerSize"],
        }
        announced = xet.announced(f)
        if announced is not None:  # a client with hf_xet then skips the HEAD
            entry["xetHash"] = announced
    return entry


def dirs_of(snap: Snapshot) -> set[str]:
    out: set[str] = set()
    for p in snap.files:
        parts = p.split("/")
        out.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return out


def tree_page(snap: Snapshot, path: str, request: Request, xet: XetSettings) -> Response:
    path = path.strip("/")
    dirs = dirs_of(snap)
    if path and path not in dirs:
        if path in snap.files:
            return JSONResponse([tree_entry(snap, path, dirs, xet)])
        raise ServeError(404, "EntryNotFound", f"{path} not found", commit=snap.commit)
    recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
    prefix = f"{path}/" if path else ""
    names = sorted(
        n
        for n in (*snap.files, *dirs)
        if n.startswith(prefix) and (recursive or "/" not in n[len(prefix) :])
    )
    try:
        cursor = max(0, int(request.query_params.get("cursor", "0")))
    except ValueError:
        cursor = 0
    page = names[cursor : cursor + PAGE]
    headers = {}
    if cursor + PAGE < len(names):
        query = {**dict(request.query_params), "cursor": str(cursor + PAGE)}
        headers["Link"] = f'<{request.url.replace(query=urlencode(query))}>; rel="next"'
    return JSONResponse([tree_entry(snap, n, dirs, xet) for n in page], headers=headers)


def paths_info(snap: Snapshot, paths: list[str], xet: XetSettings) -> list[dict[str, Any]]:
    dirs = dirs_of(snap)
    return [tree_entry(snap, p, dirs, xet) for p in paths if p in snap.files or p in dirs]
