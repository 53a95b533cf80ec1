# fhir-hub: the FHIR R4 REST server.
#
#   docker build -t fhir-hub .
#   docker run -p 8080:8080 fhir-hub                      # embedded SQLite under /app/data
#   docker run -p 8080:8080 -e HUB_DATABASE_URL=postgresql+psycopg://user:pw@host:5432/db fhir-hub
#
# The default command applies pending Alembic migrations, then serves on 0.0.0.0:8080.
# `docker run fhir-hub db upgrade` runs the migrations alone.

# --- build: install the package and its runtime dependencies into a venv -------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# Only what `pip install .` needs (README.md is the project's declared readme).
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY adapters ./adapters
# A regular (non-editable) install without the dev extras.
RUN pip install .

# --- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:$PATH" \
    HUB_HOST=0.0.0.0 \
    HUB_PORT=8080 \
    HUB_MIGRATIONS_DIR=/app/alembic

RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid hub --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin hub

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# The installed package does not carry the migration scripts: HUB_MIGRATIONS_DIR points here.
COPY alembic ./alembic
# The default SQLite store is ./data/hub.db, so the unprivileged user must own /app/data.
RUN mkdir -p /app/data && chown hub:hub /app/data

USER 10001:10001

EXPOSE 8080

# No curl in slim images: ask /healthz with the standard library (urlopen raises on non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:${HUB_PORT:-8080}/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"

ENTRYPOINT ["hub"]
CMD ["serve", "--migrate"]
