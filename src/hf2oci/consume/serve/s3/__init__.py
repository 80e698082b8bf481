"""The S3 API over serve's store (``hf2oci serve --s3-port``): path-style buckets ``models``
and ``datasets``, keys ``ORG/NAME/PATH``, so weight streamers (run:ai's, vLLM's
``--load-format runai_streamer``) read files straight out of registry layer blobs: ``request``
reads what a request asks, ``app`` answers it, ``listing`` pages keys, ``sigv4`` checks
signatures, ``documents`` writes S3's XML."""

from hf2oci.consume.serve.s3.app import BUCKETS, create_s3_app

__all__ = ["BUCKETS", "create_s3_app"]
