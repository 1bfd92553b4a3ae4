"""Workload and node identity: SPIFFE IDs and the X.509 certificates that carry them."""
