"""Small workloads (HTTP echo, TCP echo, load client) that run in lab pods to exercise the mesh."""
