"""The package version, in one place (read by hatch for the distribution too)."""

__version__ = "0.1.0"
