"""sweepcat: make simulation parameter sweeps searchable and servable through Tiled."""

__version__ = "0.1.0"
