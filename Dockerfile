# unifeed as a container image: `docker build -t unifeed .`, then
# `docker run --rm unifeed combine --help`. See docs/deploy.md.

# Build a wheel in a throw-away stage, so the final image has no build tools.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY unifeed ./unifeed
# With the `serve` extra (Starlette, uvicorn, websockets, redis, psycopg) for `unifeed serve`.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[serve]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# confluent-kafka and msgspec come as manylinux wheels with librdkafka inside:
# nothing to compile, no system packages to add.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin unifeed
USER unifeed
WORKDIR /home/unifeed
ENTRYPOINT ["unifeed"]
CMD ["--help"]
