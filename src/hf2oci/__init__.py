"""hf2oci: mirror Hugging Face models and datasets into OCI images."""

__version__ = "0.1.0"
