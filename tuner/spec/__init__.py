"""The spec: what a user writes (the job spec, search spaces, plug-in files), validated before
anything starts."""
