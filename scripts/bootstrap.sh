#!/usr/bin/env bash
# Set up everything meterstream's demo and tests need, idempotently:
#   .venv with meterstream, its test/dev extras and the local tooling in ./local
#   (reinstalled when pyproject.toml or local/pyproject.toml changes),
#   the Apache Kafka jars from Maven Central (cached in ~/.cache/meterstream),
#   the Apicurio Registry bundle from Maven Central (the local Schema Registry, cached there too),
#   helm and promtool built with Go (cached in ~/.cache/meterstream/bin), for the chart tests.
# Usage: scripts/bootstrap.sh [--no-helm]   (--no-helm skips both Go builds)
set -euo pipefail
cd "$(dirname "$0")/.."

want_helm=1
[[ "${1:-}" == "--no-helm" ]] && want_helm=0

HELM_VERSION="v3.19.5"
# promtool checks and unit-tests the chart's alerting rules; about ten minutes to build on
# two cores, once.
PROMTOOL_VERSION="v0.316.0"
CACHE="${METERSTREAM_CACHE:-$HOME/.cache/meterstream}"
PY="${PYTHON:-python3}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "bootstrap: '$1' is required but not installed: $2" >&2; exit 1; }; }
need "$PY" "install Python 3.11 or newer"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "bootstrap: Python >= 3.11 is required ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }

# 1. The virtualenv, reinstalled only when either pyproject.toml changes.
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.meterstream-installed"
digest=$(cat pyproject.toml local/pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$digest" ]]; then
  echo "bootstrap: installing meterstream and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # ./local first (without dependencies: its pin on meterstream is met by the next line), so
  # the `local` extra of '.[dev]' resolves to it and nothing of that name comes from PyPI.
  .venv/bin/python -m pip install --quiet --no-deps -e ./local
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$digest" > "$stamp"
fi

# 2. The Kafka broker jars (the local broker for tests, demo and benchmarks).
if [[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]]; then
  need java "install a JDK (17 or newer), e.g. apt-get install openjdk-17-jre-headless"
  need mvn "install Maven, e.g. apt-get install maven"
  .venv/bin/python -m meterstream_local.localkafka fetch
fi

# 3. The Apicurio Registry bundle (the local Schema Registry for tests, demo and benchmarks).
if [[ -z "${SCHEMA_REGISTRY_URL:-}" ]]; then
  need java "install a JDK (17 or newer), e.g. apt-get install openjdk-17-jre-headless"
  need mvn "install Maven, e.g. apt-get install maven"
  .venv/bin/python -m meterstream_local.registry fetch
fi

# 4. helm, built from source with Go at a pinned version.
if [[ $want_helm == 1 && ! -x "$CACHE/bin/helm" ]]; then
  need go "install Go to build helm (go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION)"
  echo "bootstrap: building helm $HELM_VERSION with Go (once; cached in $CACHE/bin)"
  mkdir -p "$CACHE/bin"
  GOBIN="$CACHE/bin" GOFLAGS=-buildvcs=false go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# 5. promtool (Prometheus's rule checker), built the same way.
if [[ $want_helm == 1 && ! -x "$CACHE/bin/promtool" ]]; then
  need go "install Go to build promtool (go install github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION)"
  echo "bootstrap: building promtool $PROMTOOL_VERSION with Go (once, about 10 minutes on 2 cores; cached in $CACHE/bin)"
  mkdir -p "$CACHE/bin"
  GOBIN="$CACHE/bin" GOFLAGS=-buildvcs=false go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
fi
echo "bootstrap: ready"
