"""Code shared by weft's processes: the resource model, logging, and (later) identity and HBONE."""
