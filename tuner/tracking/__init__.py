"""Tracking: what MLflow holds for a study, written from the driver and read back (runs, the
tag vocabulary, dataset inputs, the outage buffer)."""
