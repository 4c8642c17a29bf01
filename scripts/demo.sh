#!/usr/bin/env bash
# `make demo`: synthetic data -> inspect -> manifest -> ingest -> serve (Ctrl-C stops the server).
set -euo pipefail
cd "$(dirname "$0")/.."
SC=.venv/bin/sweepcat
PORT="${SWEEPCAT_DEMO_PORT:-8000}"
# Re-runnable: nothing under demo/ is deleted (the tour writes there too). Files are replaced whole,
# the same seeds give the same data, and ingest adds only what is missing.
mkdir -p demo
$SC demo-data demo/data
for ds in NiPS3_batched NiPS3_per_artifact NiPS3_per_entity; do
  $SC inspect demo/data/$ds -o demo/$ds.yml --no-tree
  $SC manifest demo/$ds.yml -o demo/manifests
done
$SC ingest demo/manifests --catalog demo/sweepcat.db
echo
exec $SC serve --catalog demo/sweepcat.db --port "$PORT"
