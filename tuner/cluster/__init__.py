"""The cluster: Ray Jobs, results in object storage, database URLs, and secrets kept out of what
is printed, logged or stored."""
