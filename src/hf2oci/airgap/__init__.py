"""Crossing an air gap: the inside says what it holds (``inventory``), the outside writes only the
rest (``bundle``), the inside checks every byte and publishes tags last (``load``), and old
revisions go (``prune``)."""
