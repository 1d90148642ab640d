"""flowlord: a file-driven workflow scheduler."""

__version__ = "0.1.0"
