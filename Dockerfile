# syntax=docker/dockerfile:1
# meterstream: Kafka usage records into Stripe Billing meters (see README.md, "Deploying").
#
#   docker build -t meterstream:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Two stages: the builder installs the dependencies and the package into a virtualenv at
# /opt/meterstream; the final image copies only that virtualenv (pip and setuptools
# removed). Every dependency ships manylinux wheels (confluent-kafka bundles librdkafka),
# so neither stage needs a compiler and the final image has none.
#
# The base is any Debian-based image with Python 3.11+ as `python3` and its venv module:
# the official image by default (pin it by digest in a release pipeline:
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...), or e.g. Debian's own
# python3 + python3-venv (the test suite builds on one, docs/image.md).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# Build-time only, never in the final image: a private package index, or the CA bundle of
# a TLS-intercepting proxy (with the file mounted into the build), e.g.
#   --build-arg PIP_INDEX_URL=https://pypi.example.com/simple
#   --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
RUN python3 -m venv /opt/meterstream
WORKDIR /src
# 1. Dependencies only, from pyproject.toml alone: this layer stays cached across code edits.
COPY pyproject.toml ./
RUN /opt/meterstream/bin/python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && /opt/meterstream/bin/python -m pip install --no-cache-dir \
        --only-binary=:all: --requirement requirements.txt
# 2. The package itself (small, rebuilt on every code change), then the installers go:
#    nothing in the final image can install anything.
COPY README.md ./
COPY connector ./connector
RUN /opt/meterstream/bin/python -m pip install --no-cache-dir --no-deps . \
    && /opt/meterstream/bin/python -m pip uninstall --yes setuptools pip

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="meterstream" \
      org.opencontainers.image.description="Streams usage records from Kafka into Stripe Billing meters: every record billed once, none lost, bad records dead-lettered." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/meterstream/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid (10001, outside the distribution's range) so Kubernetes can verify
# runAsNonRoot; no home and no shell. The default config is empty: every setting comes
# from the defaults and METERSTREAM_* variables until a real file is mounted over it.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin meterstream \
    && mkdir -p /etc/meterstream \
    && printf '%s\n' '# Mount your meterstream.yaml here (README "Configuration").' '{}' \
        > /etc/meterstream/meterstream.yaml
# Owned by root and compiled at install time: uid 10001 reads it, never writes it, so the
# container runs with a read-only root filesystem.
COPY --from=builder /opt/meterstream /opt/meterstream
USER 10001:10001
# /metrics, /livez and /readyz (config metrics.port).
EXPOSE 9464
ENTRYPOINT ["meterstream"]
CMD ["run", "--config", "/etc/meterstream/meterstream.yaml"]
