"""The S3 API's XML documents: listings, buckets, and errors (S3's ``<Error>`` shape, with the
codes clients map to their typed errors)."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import quote

from hf2oci.consume.serve.s3.listing import Item, Page

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class S3Error(Exception):
    """A request the S3 face refuses: HTTP ``status``, S3's ``code``, and what it was about
    (``Key``, ``BucketName``… elements of the error document)."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None,
        **fields: str,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.retry_after, self.fields = status, code, retry_after, fields


def _doc(root: ET.Element) -> bytes:
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return _DECLARATION + text


def _add(parent: ET.Element, name: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, name)
    if text is not None:
        value = str(text).lower() if isinstance(text, bool) else str(text)
        child.text = _NOT_XML.sub("\ufffd", value)  # XML 1.0 cannot hold them, even escaped
    return child


def error(e: S3Error, request_id: str) -> bytes:
    root = ET.Element("Error")
    _add(root, "Code", e.code)
    _add(root, "Message", str(e))
    for name, value in e.fields.items():
        _add(root, name, value)
    _add(root, "RequestId", request_id)
    return _doc(root)


def iso_time(stamp: str) -> str:
    """An image's creation time (RFC 3339) as S3 writes times: ``2024-05-01T12:00:00.000Z``."""
    return _parse(stamp).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def http_time(stamp: str) -> str:
    """The same time as an HTTP date (``Last-Modified``)."""
    return _parse(stamp).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _parse(stamp: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def listing(
    page: Page,
    *,
    version: int,
    bucket: str,
    prefix: str,
    delimiter: str,
    max_keys: int,
    url_encoded: bool,
    continuation: str | None = None,
    start_after: str | None = None,
    marker: str | None = None,
) -> bytes:
    """A ListObjectsV2 (``version`` 2) or ListObjects (1) answer. With ``url_encoded``
    (``encoding-type=url``) keys and prefixes are percent-encoded (``+`` as ``%2B``: boto3
    decodes them with ``unquote_plus``)."""

    def text(value: str) -> str:
        return quote(value, safe="/") if url_encoded else value

    root = ET.Element("ListBucketResult", xmlns=NS)
    _add(root, "Name", bucket)
    _add(root, "Prefix", text(prefix))
    if delimiter:
        _add(root, "Delimiter", text(delimiter))
    _add(root, "MaxKeys", max_keys)
    if url_encoded:
        _add(root, "EncodingType", "url")
    _add(root, "IsTruncated", page.next is not None)
    if version == 2:
        _add(root, "KeyCount", len(page.items))
        if continuation is not None:
            _add(root, "ContinuationToken", continuation)
        if start_after:
            _add(root, "StartAfter", text(start_after))
        if page.next is not None:
            _add(root, "NextContinuationToken", page.next.token())
    else:
        _add(root, "Marker", text(marker or ""))
        if page.next is not None and delimiter:  # S3 gives it only with a delimiter
            _add(root, "NextMarker", text(page.next.key))
    for item in page.items:
        if item.file is None:
            continue
        _contents(_add(root, "Contents"), item, text(item.key))
    for item in page.items:
        if item.file is None:
            _add(_add(root, "CommonPrefixes"), "Prefix", text(item.key))
    return _doc(root)


def _contents(parent: ET.Element, item: Item, key: str) -> None:
    f, snap = item.file, item.snapshot
    assert f is not None and snap is not None
    _add(parent, "Key", key)
    _add(parent, "LastModified", iso_time(snap.last_modified))
    known = f.sha256 or f.blob_id  # an image made before the file index: not hashed to list it
    if known:
        _add(parent, "ETag", f'"{known}"')
    _add(parent, "Size", f.size)
    _add(parent, "StorageClass", "STANDARD")


def buckets(names: Sequence[str], created: str) -> bytes:
    root = ET.Element("ListAllMyBucketsResult", xmlns=NS)
    owner = _add(root, "Owner")
    _add(owner, "ID", "hf2oci")
    _add(owner, "DisplayName", "hf2oci")
    listed = _add(root, "Buckets")
    for name in names:
        bucket = _add(listed, "Bucket")
        _add(bucket, "Name", name)
        _add(bucket, "CreationDate", created)
    return _doc(root)


def location() -> bytes:
    """GetBucketLocation: empty, which S3 clients read as us-east-1."""
    return _doc(ET.Element("LocationConstraint", xmlns=NS))
