"""The waypoint: an L7 proxy per namespace (or Service), terminating HBONE."""
