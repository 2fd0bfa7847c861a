"""action100m: the Action100M data pipeline (hierarchical action annotations for videos)."""

__version__ = "0.1.0"
