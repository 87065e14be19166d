"""raymedia: distributed batch scoring of media recommendations on Ray."""

__version__ = "0.1.0"
