"""weftctl: the one command a person runs to drive weft."""
