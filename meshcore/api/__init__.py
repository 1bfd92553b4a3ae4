"""weft's gRPC API. `mesh_pb2` and `mesh_pb2_grpc` are generated from mesh.proto when weft
is installed (setup.py); run `scripts/setup.sh` (or `pip install -e .`) after editing it."""
