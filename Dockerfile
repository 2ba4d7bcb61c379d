# syntax=docker/dockerfile:1.7
# The image of every service, one Dockerfile: the SERVICE build argument picks which. Build from the
# repository root (skaffold.yaml does, for all five):
#   docker build --build-arg SERVICE=gateway --build-arg VERSION=0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/abc-inc/timesheets-gateway:0.1.0 .
# Runtime dependencies come from uv.lock (exact versions and hashes); the final image holds the
# Python runtime, the locked virtualenv, the service's package and the shared kit (svckit) — no
# compiler, no package manager cache, no uv, no tests or test helpers (testkit/ is never copied, and
# .dockerignore keeps it out of the context). The gateway's image adds the built SPA; BuildKit builds
# the node stage for the gateway only (no other target depends on it). Images run as a numeric
# non-root user and need no writable path but /tmp (the chart mounts an emptyDir there and makes the
# root filesystem read-only). The Debian base carries the system CA bundle
# (/etc/ssl/certs/ca-certificates.crt): DB_SSLROOTCERT=system (sslrootcert=system) trusts it.

ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm
# gateway, identity, timesheets, approvals or audit
ARG SERVICE
ARG VERSION=0.0.0-dev
ARG REVISION=unknown

# --- the SPA (static files only; node and node_modules stay in this stage) ---
FROM docker.io/library/node:20.19-bookworm-slim AS spa
WORKDIR /spa
COPY spa/package.json spa/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY spa/ ./
RUN npm run build

# --- build: the locked runtime dependencies into /opt/venv, the code into /opt/app ---
FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --no-editable
COPY services/kit/svckit /opt/app/svckit
COPY services/${SERVICE}/${SERVICE} /opt/app/${SERVICE}
RUN test -n "${SERVICE}" && python -m compileall -q /opt/app

# --- runtime: what every service's image shares ---
FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build --chown=0:0 /opt/venv /opt/venv
COPY --from=build --chown=0:0 /opt/app /opt/app
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND_HOST=0.0.0.0
WORKDIR /opt/app

# --- one stage per service: its ports, its entry point (and the gateway's SPA) ---
FROM runtime AS service-gateway
COPY --from=spa --chown=0:0 /spa/dist /opt/app/spa/dist
ENV PORT=8080 \
    METRICS_PORT=9080 \
    SPA_DIST_DIR=/opt/app/spa/dist
EXPOSE 8080 9080
ENTRYPOINT ["python", "-m", "gateway"]

FROM runtime AS service-identity
ENV PORT=9000 \
    METRICS_PORT=9010
EXPOSE 9000 9010
ENTRYPOINT ["python", "-m", "identity"]

FROM runtime AS service-timesheets
ENV PORT=8101 \
    METRICS_PORT=9101
EXPOSE 8101 9101
ENTRYPOINT ["python", "-m", "timesheets"]

FROM runtime AS service-approvals
ENV PORT=8102 \
    METRICS_PORT=9102
EXPOSE 8102 9102
ENTRYPOINT ["python", "-m", "approvals"]

FROM runtime AS service-audit
ENV PORT=8103 \
    METRICS_PORT=9103
EXPOSE 8103 9103
ENTRYPOINT ["python", "-m", "audit"]

# --- the image: the chosen service's stage, labelled ---
# (a stage of this file named by SERVICE, which hadolint takes for an untagged image)
# hadolint ignore=DL3006
FROM service-${SERVICE}
ARG SERVICE
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="timesheets-${SERVICE}" \
      org.opencontainers.image.description="Timesheets platform: the ${SERVICE} service" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/abc-inc/timesheets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="ABC Inc."
USER 10001:10001
