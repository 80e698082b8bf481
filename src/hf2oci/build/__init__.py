"""Building images: the plan, the pipeline, the image formats, where images go, the layer
cache."""
