"""One ingest, alone in its process (for bench_ingest's peak-memory figure):

    python -m bench.ingest_child MANIFEST_DIR CATALOG
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(manifests: str, catalog: str) -> None:
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import read_manifests

    d = Path(manifests)
    m = read_manifests(d / "NiPS3_batched_hamiltonians.parquet", d / "NiPS3_batched_artifacts.parquet")
    result = ingest(m, catalog)
    print(result, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
