# unifeed as a container image: `docker build -t unifeed .`, then
# `docker run --rm unifeed combine --help`. See docs/deploy.md.

# Build the wheels (unifeed's and its dependencies') in a throw-away stage, so the final
# image has no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY unifeed ./unifeed
# With the `serve` extra (Starlette, uvicorn, websockets, redis, psycopg) for `unifeed serve`.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[serve]'

FROM python:3.11-slim
# `docker build --build-arg VERSION=$(unifeed --version | cut -d" " -f2)
#  --build-arg SOURCE_URL=<repository URL> .` fills the version and source labels.
ARG VERSION=unknown
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="unifeed" \
      org.opencontainers.image.description="Merge airborne and surface flight-tracking feeds from Kafka into one unified feed ordered by timestamp" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Only the wheels built above: no index is consulted, so the image holds exactly what was
# built. confluent-kafka and msgspec come as manylinux wheels with librdkafka inside:
# nothing to compile, no system packages to add.
COPY --from=build /wheels /wheels
# The same extras as built: without `serve`, `unifeed serve` could not start.
RUN pip install --no-cache-dir --no-index --find-links /wheels 'unifeed[serve]' \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin unifeed
USER unifeed
WORKDIR /home/unifeed
# Prometheus metrics of combine, mappings and ingest with --metrics-port 9100
# (--metrics-host 0.0.0.0 so that they are reachable from outside the container);
# `unifeed serve` answers on 8080 (--port), its own /healthz and /metrics included.
EXPOSE 9100 8080
# Healthy while the metrics endpoint answers; `unifeed serve` is probed on its /healthz
# instead (compose.yaml), and a one-off command (load, dump, --help) disables it (`--no-healthcheck`, or `healthcheck: disable: true` in compose).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=3)"]
ENTRYPOINT ["unifeed"]
CMD ["--help"]
