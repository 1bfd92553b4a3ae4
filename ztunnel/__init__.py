"""The per-node L4 proxy: HBONE tunnels, L4 authorization and mTLS policy, TCP telemetry."""
