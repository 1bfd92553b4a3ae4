"""The per-node agent: enrolls pods into the mesh by keeping eBPF programs and maps current."""
