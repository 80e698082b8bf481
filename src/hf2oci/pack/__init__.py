"""Packing a repo into images: the plan, the pipeline and its stages, the image formats, where
images go, the layer cache."""
