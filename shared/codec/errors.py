"""The codec's error type."""


class CodecError(ValueError):
    """A value PostgreSQL sent that does not read as its declared type."""
