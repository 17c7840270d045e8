# One image for every process role: `api`, `ingest`, `scheduler`, `migrate` and
# the operator commands (`keys create`, `ledger verify`, `projections rebuild`, ...).
#
#   docker build -t trustledger .
#   docker run --rm trustledger --help
#
# docker-compose.yml runs the roles against PostgreSQL and NATS containers.

# ---- build: install the project into a virtualenv ----------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/trustledger

WORKDIR /src
# Exactly what the wheel is built from. migrations/ and schemas/ live at the top
# level but the wheel carries them as service/_bundled/ (hatch force-include in
# pyproject.toml): without them in the context the build fails, and without the
# migrations in the wheel no role could start. README.md is the package readme.
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
COPY migrations ./migrations
COPY schemas ./schemas
RUN /opt/trustledger/bin/pip install -c constraints.txt .

# ---- runtime ------------------------------------------------------------------------
FROM python:3.11-slim

# /var/lib/trustledger-nats: the NATS users folder (docker-compose.yml mounts a
# volume there, which takes this owner and mode when it is new).
RUN groupadd --system --gid 10001 trustledger \
 && useradd --system --uid 10001 --gid trustledger \
        --home-dir /var/lib/trustledger --create-home --shell /usr/sbin/nologin trustledger \
 && install -d -o trustledger -g trustledger -m 0700 /var/lib/trustledger-nats

# Same base image as the build stage, so the venv's interpreter links stay valid.
COPY --from=build /opt/trustledger /opt/trustledger

ENV PATH=/opt/trustledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRUSTLEDGER_DATA_DIR=/var/lib/trustledger

# Fail the build, not the first start, if the wheel lost its bundled files. Run
# from / so the check imports the installed package, not a source tree.
RUN cd / && python -c "import pathlib, service; b = pathlib.Path(service.__file__).parent / '_bundled'; assert (b / 'migrations' / '0001_ledger.sql').is_file(), b; assert (b / 'schemas' / 'event.schema.json').is_file(), b" \
 && trustledger --help >/dev/null

USER trustledger
WORKDIR /var/lib/trustledger

# The API role's port (`trustledger api --host 0.0.0.0 --port 8000`).
EXPOSE 8000

# PID 1 is trustledger itself (exec form): it handles SIGTERM from `docker stop`
# by finishing the ingest batch in flight and draining HTTP connections.
ENTRYPOINT ["trustledger"]
CMD ["--help"]
