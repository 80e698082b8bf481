"""Trust: what signs the images hf2oci publishes, and what checks them before use."""
