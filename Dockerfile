# syntax=docker/dockerfile:1
# meterstream: Kafka usage records into Stripe Billing meters (see README.md).
#
#   docker build -t meterstream:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Two stages: the builder turns the dependencies and the package into wheels; the final
# image installs only those wheels (bind-mounted, so they never become a layer). Every
# dependency ships manylinux wheels (confluent-kafka bundles librdkafka), so neither stage
# needs a compiler and the final image has none.
# Pin by digest in a release pipeline: --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# 1. Dependencies only, from pyproject.toml alone: this layer stays cached across code edits.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip wheel --wheel-dir /wheels --requirement requirements.txt
# 2. The package itself (small, rebuilt on every code change).
COPY README.md ./
COPY connector ./connector
RUN pip wheel --no-deps --wheel-dir /wheels .

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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid (10001, outside the distribution's range) so Kubernetes can verify
# runAsNonRoot; no home and no shell. The default config is empty: every setting comes
# from the defaults and METERSTREAM_* variables until a real file is mounted over it.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin meterstream \
    && mkdir -p /etc/meterstream \
    && printf '%s\n' '# Mount your meterstream.yaml here (README "Configuration").' '{}' \
        > /etc/meterstream/meterstream.yaml
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/meterstream-*.whl
USER 10001:10001
# /metrics, /livez and /readyz (config metrics.port).
EXPOSE 9464
ENTRYPOINT ["meterstream"]
CMD ["run", "--config", "/etc/meterstream/meterstream.yaml"]
