# fhir-hub: one image for every service (API, Celery worker and beat, MLLP listener).
#
#   docker build -t fhir-hub .
#   docker run -p 8080:8080 fhir-hub                      # embedded SQLite under /app/data
#   docker run -p 8080:8080 -e HUB_DATABASE_URL=postgresql+psycopg://user:pw@host:5432/db fhir-hub
#   docker run fhir-hub worker                            # the other services: another command
#
# The default command applies pending Alembic migrations, then serves on 0.0.0.0:8080.
# `docker run fhir-hub db upgrade` runs the migrations alone. docker-compose.yml runs them all.

# --- build: install the package and its runtime dependencies into a venv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# Only what `pip install .` needs (README.md is the project's declared readme), and the lock
# file, so that the image runs the versions `make test` and CI ran.
COPY pyproject.toml README.md requirements.lock ./
COPY hub ./hub
COPY adapters ./adapters
# A regular (non-editable) install without the dev extras, pinned by the lock file.
RUN pip install -c requirements.lock .

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:$PATH" \
    HUB_HOST=0.0.0.0 \
    HUB_PORT=8080 \
    HUB_MLLP_HOST=0.0.0.0 \
    HUB_MIGRATIONS_DIR=/app/alembic \
    HUB_MAPPINGS_DIR=/app/mappings

RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid hub --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin hub

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The installed package carries the code and the R4 definitions it ships (package data), not
# the migration scripts or the feed mappings: HUB_MIGRATIONS_DIR and HUB_MAPPINGS_DIR point here.
COPY alembic ./alembic
COPY mappings ./mappings
# The default SQLite store is ./data/hub.db, so the unprivileged user must own /app/data.
RUN mkdir -p /app/data && chown hub:hub /app/data

USER 10001:10001

# The FHIR API, and MLLP (`hub serve` listens on both unless HUB_MLLP_ENABLED=false; `hub mllp`).
EXPOSE 8080 2575

# No curl in slim images: ask /healthz with the standard library (urlopen raises on non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:${HUB_PORT:-8080}/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"

ENTRYPOINT ["hub"]
CMD ["serve", "--migrate"]
