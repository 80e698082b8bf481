"""OCI images: layers, manifests, registries and layouts (no Docker engine needed)."""
