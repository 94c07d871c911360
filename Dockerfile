# gridflow image: the `gridflow` binary, the shipped pipelines, contracts and environment
# configurations (config/{dev,recette,prod}.toml), run as a non-root user.
#
#   docker build -t gridflow:dev .
#   docker run --rm -p 8080:8080 -p 9090:9090 gridflow:dev                 # dev, embedded broker
#   docker run --rm -e GRIDFLOW_ENV=prod -e KAFKA_BROKERS=... -e KAFKA_USERNAME=... \
#     -e OTEL_EXPORTER_OTLP_ENDPOINT=... -v "$PWD/secrets:/run/secrets:ro" \
#     -v "$PWD/pipelines:/etc/gridflow/pipelines:ro" gridflow:dev
#
# Mount points (each replaces what the image ships):
#   /etc/gridflow/pipelines     pipeline files (hot-reloaded: a mounted directory or a
#                               Kubernetes ConfigMap volume is watched)
#   /etc/gridflow/contracts     event contracts
#   /etc/gridflow/config        runtime configurations, one per GRIDFLOW_ENV
#   /etc/gridflow/gridflow.toml a configuration of your own: set GRIDFLOW_CONFIG to it
#   /var/lib/gridflow/dead-letters  dead-letter and fallback files (writable; a volume)
#   /run/secrets/kafka-password the SASL password of config/{recette,prod}.toml
# See docker/entrypoint.sh for GRIDFLOW_ENV and GRIDFLOW_CONFIG.

# ---- builder -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# librdkafka is compiled by rdkafka-sys (make, a C/C++ compiler, OpenSSL and zlib headers:
# all in the rust image, which is built on buildpack-deps).
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY runtime ./runtime
RUN cargo build --release --locked --bin gridflow \
    && install -D -m 0755 target/release/gridflow /out/gridflow

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
# What the binary links besides libc: libssl3/libcrypto (Kafka TLS, SASL SCRAM, HTTPS),
# zlib (compression). ca-certificates: the system CA store (the default ssl.ca.location of
# config/{recette,prod}.toml). curl: the HEALTHCHECK.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libssl3 zlib1g curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gridflow \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin gridflow \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/gridflow /var/lib/gridflow/dead-letters

COPY --from=builder /out/gridflow /usr/local/bin/gridflow
COPY docker/entrypoint.sh /usr/local/bin/gridflow-entrypoint
COPY config /etc/gridflow/config
COPY pipelines /etc/gridflow/pipelines
COPY contracts /etc/gridflow/contracts

WORKDIR /etc/gridflow
ENV GRIDFLOW_ENV=dev \
    GRIDFLOW_DEAD_LETTERS_DIR=/var/lib/gridflow/dead-letters \
    GRIDFLOW_HEALTH_URL=http://127.0.0.1:9090/health/live
# The admin token (POST /admin/reload): mount it and set GRIDFLOW_ADMIN_TOKEN_FILE (recette
# and prod read /run/secrets/gridflow-admin/token by default), or pass GRIDFLOW_ADMIN_TOKEN.
# Without one, only loopback clients may reload (docs/operations/security.md).
USER 10001:10001
EXPOSE 8080 9090
# Liveness only: readiness (/health/ready) depends on Kafka and is for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "$GRIDFLOW_HEALTH_URL" || exit 1
# SIGTERM drains (docs/operations/shutdown.md): give `docker stop -t` enough time.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gridflow-entrypoint"]
CMD ["run"]
