"""sweepcat's Python client: search by parameter, locate, read (numpy, pandas, xarray, PyTorch)."""

from .catalog import Catalog, Dataset, Result, open

__all__ = ["open", "Catalog", "Dataset", "Result"]
