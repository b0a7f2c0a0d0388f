# tether-relay as a small, non-root container image.
#   docker build -f packaging/relay.Dockerfile -t tether-relay .
#   docker run -p 8443:8443 -e TETHER_RELAY_PRODUCER_SECRET=... -e TETHER_RELAY_VIEWER_SECRET=... tether-relay
# Every flag has a TETHER_RELAY_* variable (README "Running a relay"); secrets only from the
# environment or mounted files (TETHER_RELAY_*_SECRET_FILE), never the command line.

# The /view page (web/), bundled from npm packages; the relay embeds web/dist when it is built.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY web/package.json web/package-lock.json web/build.mjs web/
COPY web/src web/src
COPY scripts/build-web.sh scripts/
RUN scripts/build-web.sh

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
COPY --from=web /src/web/dist web/dist
RUN scripts/build-relay.sh && cp target/release/tether-relay /tether-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tether
COPY --from=build /tether-relay /usr/local/bin/tether-relay
USER tether
ENV TETHER_RELAY_BIND=0.0.0.0:8443
EXPOSE 8443
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8443/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tether-relay"]
