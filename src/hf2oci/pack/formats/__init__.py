"""Artifact formats: a repo's file set → an ``Image`` ready for any sink."""
