#!/usr/bin/env bash
# The test suite starts a throwaway PostgreSQL cluster with initdb/pg_ctl: make sure they exist.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
echo "PostgreSQL server binaries not found: installing Debian's postgresql package" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: install PostgreSQL yourself (e.g. sudo apt-get install -y postgresql)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends postgresql
