#!/usr/bin/env bash
# `make demo`: synthetic data -> inspect -> manifest (-> ingest -> serve, as those land).
set -euo pipefail
cd "$(dirname "$0")/.."
SC=.venv/bin/sweepcat
rm -rf demo && mkdir -p demo
$SC demo-data demo/data
$SC inspect demo/data/NiPS3_batched -o demo/nips3.yml
$SC manifest demo/nips3.yml -o demo/manifests
echo
echo "manifests are in demo/manifests:"
ls -l demo/manifests
