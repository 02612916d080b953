#!/usr/bin/env bash
# Builds Jaeger v2 (the all-in-one `cmd/jaeger`) from the Go module proxy at a pinned version and
# checksum, once, into target/jaeger/<version>/jaeger, and prints that path. The demo
# (`cargo xtask demo`) and the export tests (tests/src/jaeger.rs) run it. Takes a few minutes the
# first time; concurrent callers wait for one build.
set -euo pipefail
VERSION=v1.75.0
# The module's checksum (go.sum), pinned like Helm's in scripts/setup.sh; Go checks every
# dependency against the module's own go.sum.
MODULE_SUM='h1:OWj6uKRJ8QaH+AVypRwqINGi3Q/WOchbEfp53FJK0Xk='
MODULE=github.com/jaegertracing/jaeger

root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/target/jaeger/$VERSION"
bin="$dir/jaeger"
mkdir -p "$dir/module"
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$bin" ]; then
  export PATH="$PATH:/usr/local/go/bin" GOFLAGS=-buildvcs=false
  echo "building Jaeger $VERSION from the Go module proxy (once; cached in $dir)" >&2
  cd "$dir/module"
  printf 'module tracerjaeger\n\ngo 1.24\n' > go.mod
  rm -f go.sum
  go get -tool "$MODULE/cmd/jaeger@$VERSION" >&2
  grep -qxF "$MODULE $VERSION $MODULE_SUM" go.sum || {
    echo "$MODULE@$VERSION does not have the pinned checksum $MODULE_SUM" >&2
    exit 1
  }
  go build -o "$dir/jaeger.tmp" "$MODULE/cmd/jaeger" >&2
  mv "$dir/jaeger.tmp" "$bin"
fi
echo "$bin"
