# syntax=docker/dockerfile:1
# Vigil's image: every role of the `vigil` command line (`vigil up`, or one role per container
# as docker-compose.yml runs them). Slim Python, the project and its runtime dependencies only
# (no dev extras), run as a user without privileges. Healthchecks are per service in
# docker-compose.yml: the roles serve different things.
#
#   docker build -t vigil .
#   docker run --rm vigil --help

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY alertmanager/ alertmanager/
COPY api/ api/
COPY detector/ detector/
COPY eventlog/ eventlog/
COPY responder/ responder/
COPY vigil/ vigil/
# A wheel of the project and of each dependency, so the final image holds no source tree nor
# build tools.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIGIL_DATA_DIR=/var/lib/vigil \
    VIGIL_HTTP_HOST=0.0.0.0 \
    VIGIL_HTTP_PORT=8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels vigil \
    && groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --home-dir /var/lib/vigil --shell /usr/sbin/nologin vigil \
    && mkdir -p /var/lib/vigil \
    && chown vigil:vigil /var/lib/vigil
# The sample configuration (deploy/): relative paths such as VIGIL_RULES=deploy/rules.yaml
# resolve from the working directory, as they do in a checkout.
WORKDIR /opt/vigil
COPY deploy/ deploy/
USER vigil:vigil
EXPOSE 8080
ENTRYPOINT ["vigil"]
CMD ["up"]
