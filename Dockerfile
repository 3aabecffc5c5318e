# forwardd: a durable Fluentd forward-protocol receiver.
#   docker build -t forwardd .
#   docker run -p 24224:24224 -p 24224:24224/udp -v forwardd-data:/var/lib/forwardd forwardd
#
# Build arguments, for hosts that cannot pull python:3.11 or reach the package index from a build container:
#   BASE        the runtime image: anything with python3 (>= 3.11) and its venv module, and useradd. Debian
#               bookworm's python3 + python3-venv will do (tests/docker/image.py builds one with debootstrap).
#   BUILD_BASE  the image that builds forwardd's wheel when deploy/docker/wheels/ holds none: it needs gcc and
#               the Python headers for the C extensions (python:3.11 has both).
#   EXTRAS      forwardd's optional dependencies to install (kafka: the Kafka output, http: the HTTP output).
# Offline: make the wheels on a host that can reach the index, then build without it:
#   python3 -m pip wheel --wheel-dir deploy/docker/wheels '.[kafka,http]'
#   docker build --network host --build-arg BASE=... --build-arg BUILD_BASE=... -t forwardd .
# The image refuses to build without the C extensions (the JSON lines transcoder outputs/_jsonl.c and the
# edge's entries/_entries.c) rather than ship one that silently takes the slower Python paths.
ARG BASE=python:3.11-slim
ARG BUILD_BASE=python:3.11

FROM ${BUILD_BASE} AS build
ARG EXTRAS=kafka,http
# The context in one step (.dockerignore keeps it to what is needed): on a storage driver without layers
# (vfs) every step of a build is a full copy of the image.
COPY . /src
# Wheels given (a forwardd wheel among them): install them without the index. Else build them here. What
# the image gets is laid out under /out, for one COPY.
RUN set -e; \
    python3 -m venv /opt/forwardd; \
    if ! ls /src/deploy/docker/wheels/forwardd-*.whl >/dev/null 2>&1; then \
        /opt/forwardd/bin/pip wheel --no-cache-dir --wheel-dir /src/deploy/docker/wheels \
            --find-links /src/deploy/docker/wheels "/src[${EXTRAS}]"; \
    fi; \
    /opt/forwardd/bin/pip install --no-cache-dir --no-index --find-links /src/deploy/docker/wheels \
        "forwardd[${EXTRAS}]"; \
    /opt/forwardd/bin/pip uninstall --quiet --yes pip setuptools; \
    mkdir -p /out/opt /out/etc /out/usr/local/bin; \
    mv /opt/forwardd /out/opt/forwardd; \
    cp -r /src/conf /out/etc/forwardd; \
    install -m 0755 /src/deploy/docker/healthcheck.py /out/usr/local/bin/forwardd-healthcheck

# Only the virtualenv goes into the image (no wheels, no pip): BASE must have the same python3 as BUILD_BASE
# at the same path (python:3.11-slim and python:3.11 do; the test uses one image for both).
FROM ${BASE}
COPY --from=build /out/ /
# The import runs on the runtime image's C library: an extension that does not load fails the build here.
RUN groupadd --system --gid 10001 forwardd \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/forwardd --shell /usr/sbin/nologin forwardd \
    && mkdir -p /var/lib/forwardd && chown forwardd:forwardd /var/lib/forwardd \
    && /opt/forwardd/bin/python -c "import forwardd.outputs._jsonl, forwardd.protocol._entries" \
    && /opt/forwardd/bin/forwardd version
ENV PATH=/opt/forwardd/bin:$PATH \
    FORWARDD_DATA_DIR=/var/lib/forwardd \
    MALLOC_TRIM_THRESHOLD_=134217728 \
    FORWARDD_HTTP_PORT=24220 \
    FORWARDD_HEALTH=http://127.0.0.1:24220/health
USER forwardd
WORKDIR /var/lib/forwardd
VOLUME ["/var/lib/forwardd"]
EXPOSE 24224/tcp 24224/udp
# What FORWARDD_HEALTH names answers (tcp://, unix:// or http://; see deploy/docker/healthcheck.py): by
# default the operators' endpoint's /health, which the built-in configuration serves on 127.0.0.1 because
# FORWARDD_HTTP_PORT is set. A configuration file of your own sets `http_server: {port: 24220}` (or points
# FORWARDD_HEALTH at a tcp:// or unix:// source).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "/usr/local/bin/forwardd-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["forwardd"]
CMD ["run"]
