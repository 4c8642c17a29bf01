"""Run sweepcat's benchmarks and print a Markdown table per benchmark.

    python -m bench.run               # all benchmarks
    python -m bench.run manifest      # one of them
    python -m bench.run --repeat 9 manifest

Seed-scale data is written once into bench/_data (or $SWEEPCAT_BENCH_DATA).
Results are saved as JSON in bench/results/ and pasted into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = {"manifest": "bench.bench_manifest", "catalog": "bench.bench_catalog", "register": "bench.bench_register",
           "search": "bench.bench_search", "boundary": "bench.bench_boundary",
           "ingest": "bench.bench_ingest", "counts": "bench.bench_counts", "reads": "bench.bench_reads",
           "explorer": "bench.bench_explorer"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*",
                        help=f"benchmarks to run (default all): {', '.join(BENCHES)}")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per figure (default 5)")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        result = importlib.import_module(BENCHES[name]).run(repeat=args.repeat)
        path = result.save()
        print(f"\n## {name}  ({result.when}, {result.machine['cpus']} cpus)\n")
        print(result.table())
        print(f"\n(saved {path})")


if __name__ == "__main__":
    main()
