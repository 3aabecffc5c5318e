# forwardd: a durable Fluentd forward-protocol receiver.
#   docker build -t forwardd .
#   docker run -p 24224:24224 -p 24224:24224/udp -v forwardd-data:/var/lib/forwardd forwardd
# The full image has gcc for the C JSON lines transcoder (forwardd/outputs/_jsonl.c); the build fails
# here rather than ship an image that silently takes the 5x slower Python path.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY forwardd ./forwardd
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && pip install --no-cache-dir --no-deps /wheels/forwardd-*.whl \
    && python -c "import forwardd.outputs._jsonl"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/forwardd forwardd \
    && mkdir -p /var/lib/forwardd /etc/forwardd && chown forwardd /var/lib/forwardd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY conf/ /etc/forwardd/
ENV FORWARDD_DATA_DIR=/var/lib/forwardd \
    MALLOC_TRIM_THRESHOLD_=134217728
USER forwardd
WORKDIR /var/lib/forwardd
VOLUME ["/var/lib/forwardd"]
EXPOSE 24224/tcp 24224/udp
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python -c "import socket; socket.create_connection(('127.0.0.1', 24224), 2).close()"
STOPSIGNAL SIGTERM
ENTRYPOINT ["forwardd"]
CMD ["run"]
