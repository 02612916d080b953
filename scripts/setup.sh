#!/usr/bin/env bash
# Installs what tracer needs on a fresh Debian machine, idempotently: what the main job
# (scripts/run.sh: build the agent, run the demo) needs; with --tests, also what the tests need
# (scripts/test.sh). Toolchains are pinned; see docs in README.md.
set -euo pipefail
tests=0
[ "${1:-}" = "--tests" ] && tests=1

NIGHTLY=nightly-2026-06-25
STABLE=1.99.0
BPF_LINKER_VERSION=0.13
CARGO_FUZZ_VERSION=0.13.1
# Helm renders deploy/helm/tracer in the deployment tests (tests/tests/deploy.rs). It is built
# from its Go module at this version; the module's checksum is pinned too (and Go checks every
# dependency against the module's go.sum).
HELM_VERSION=v3.22.0
HELM_MODULE_SUM=h1:n1if5iQgHYsujPAcO5oonH/KiSNUmqmUF0iGVjSF3AU=

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
# The agent's build (bpf-linker against LLVM 22), the demo (Redis; curl reads Jaeger's API).
apt_main=(llvm-22-dev libpolly-22-dev libzstd-dev g++ curl redis-server)
# The tests: servers and clients they trace, the VM tier (qemu, busybox, virtiofsd's build), tools.
apt_tests=(iproute2 nginx-light wrk openjdk-17-jdk-headless libcap2-bin tmux bpftool qemu-system-x86 busybox-static
  libseccomp-dev libcap-ng-dev xz-utils postgresql mariadb-server memcached nats-server rabbitmq-server maven
  dnsmasq-base)
pkgs=("${apt_main[@]}")
((tests)) && pkgs+=("${apt_tests[@]}")
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null 2>&1; then
  log "installing rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain none
fi
export PATH="$HOME/.cargo/bin:$PATH"

rustup toolchain list | grep -q "^${STABLE}-" || { log "rust $STABLE"; rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt; }
rustup toolchain list | grep -q "^${NIGHTLY}-" || { log "rust $NIGHTLY"; rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src; }
rustup component list --toolchain "$NIGHTLY" --installed | grep -q rust-src || rustup component add rust-src --toolchain "$NIGHTLY"

if ! bpf-linker --version 2>/dev/null | grep -q "bpf-linker ${BPF_LINKER_VERSION}"; then
  log "bpf-linker ${BPF_LINKER_VERSION} against LLVM 22"
  PATH=/usr/lib/llvm-22/bin:$PATH LLVM_PREFIX=/usr/lib/llvm-22 \
    cargo "+${STABLE}" install bpf-linker --version "~${BPF_LINKER_VERSION}" --locked \
      --no-default-features --features llvm-22
fi

# The demo's Python service counts its calls in Redis.
python3 -c 'import redis' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'redis==8.1.0'

if ((tests)); then
  # The fuzz targets (`cargo xtask fuzz`, part of `cargo xtask test`) build with the nightly above.
  if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz ${CARGO_FUZZ_VERSION}"; then
    log "cargo-fuzz ${CARGO_FUZZ_VERSION}"
    cargo "+${STABLE}" install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
  fi

  if ! helm version --template '{{.Version}}' 2>/dev/null | grep -q "^${HELM_VERSION%.*}"; then
    log "helm ${HELM_VERSION} (built from its Go module)"
    export PATH="$PATH:/usr/local/go/bin"
    sum=$(cd /tmp && go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/^\t"Sum": "\(.*\)",$/\1/p')
    [ "$sum" = "$HELM_MODULE_SUM" ] || { echo "[setup] helm module checksum mismatch: got '$sum'" >&2; exit 1; }
    (cd /tmp && GOBIN=/usr/local/bin GOFLAGS=-buildvcs=false go install "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
  fi

  # Test fixtures: Go and Node ship with the machine; Java comes from apt above when missing.
  command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || { echo "[setup] java missing" >&2; exit 1; }
  # The SDK-instrumented caller of the connected-traces tests.
  python3 -c 'import opentelemetry.sdk' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'opentelemetry-sdk>=1.20,<2'
  # The database and messaging tests' clients (tests/tests/e2e_db.rs, e2e_messaging.rs), pinned.
  python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'psycopg==3.3.9'
  python3 -c 'import pymysql, pymemcache' 2>/dev/null ||
    python3 -m pip install -q --root-user-action=ignore 'PyMySQL==1.2.4' 'pymemcache==4.0.0'
  python3 -c 'import nats' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'nats-py==2.16.0'
  python3 -c 'import pika' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'pika==1.3.2'
  # The Kafka tests (tests/tests/e2e_kafka.rs): kafka-python, and Apache Kafka's broker from
  # Maven Central (tests/fixtures/java/kafka-broker/pom.xml), its jars copied once.
  python3 -c 'import kafka, sys; sys.exit(kafka.__version__ != "2.0.2")' 2>/dev/null ||
    python3 -m pip install -q --root-user-action=ignore 'kafka-python==2.0.2'
  KAFKA_DIR=/opt/tracer-tests/kafka-4.1.1
  if [ ! -f "$KAFKA_DIR/kafka_2.13-4.1.1.jar" ]; then
    log "kafka 4.1.1 (Maven Central) into $KAFKA_DIR"
    mkdir -p "$KAFKA_DIR"
    (cd "$(dirname "$0")/../tests/fixtures/java/kafka-broker" &&
      mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_DIR")
  fi
  # The gRPC client and server of the HTTP/2 tests (tests/tests/e2e_http2.rs), pinned.
  python3 -c 'import grpc' 2>/dev/null || python3 -m pip install -q --root-user-action=ignore 'grpcio==1.84.0'
  # Node's: @grpc/grpc-js for tests/fixtures/node/grpc_echo.js, at the version its package.json
  # pins and with the dependencies its package-lock.json pins, into that directory.
  (cd "$(dirname "$0")/../tests/fixtures/node" &&
    node -e 'const want = require("./package.json").dependencies["@grpc/grpc-js"];
      process.exit(require("./node_modules/@grpc/grpc-js/package.json").version === want ? 0 : 1)' 2>/dev/null ||
    { log "@grpc/grpc-js (npm ci) into tests/fixtures/node"; npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null; })
fi
# nginx-light's, redis-server's, postgresql's, mariadb-server's, memcached's, nats-server's and
# rabbitmq-server's packages start daemons; the tests run their own instances.
systemctl disable --now nginx redis-server postgresql mariadb memcached nats-server rabbitmq-server >/dev/null 2>&1 ||
  true

mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/fs/bpf 2>/dev/null || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
log "ready"
