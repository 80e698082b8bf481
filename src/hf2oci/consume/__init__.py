"""The consumers: extract, the runtime images' entrypoint, Kubernetes manifests, the hub
server."""
