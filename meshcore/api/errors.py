"""Errors of the wire format."""


class ConversionError(ValueError):
    """A message that does not make a valid value; says which resource and why."""
