#!/usr/bin/env bash
# Sets up a fresh machine (idempotent), builds the agent and runs it: on the bundled demo services
# when no arguments are given, else as `tracer run <arguments>`. Runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:/usr/local/go/bin:$PATH"
exec cargo xtask demo "$@"
