#!/usr/bin/env bash
# Sets up a fresh machine (idempotent) and runs every test: unit, golden and end-to-end (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
exec cargo xtask test "$@"
