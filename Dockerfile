# proxy-webhooks: the plugin and the demo programs, built in one Rust stage.
#
#   docker compose up --build          the whole demo (see docker-compose.yml)
#   docker build --target plugin .     an image holding only proxy_webhooks.wasm
#   docker build --target cli -t proxy-webhooks-cli .
#   docker run --rm -v "$PWD:/work" proxy-webhooks-cli rules openapi.yaml > rules.json
#                                      the command line, for teams without a Rust toolchain
#                                      (docs/openapi-rules.md)
#
# Stages: builder (Rust toolchain) → plugin (the .wasm, copied into a volume for Envoy), cli (the
# `proxy-webhooks` command line) and the slim runtime images demo-orders and demo-receiver.
# Envoy itself runs from the official image.

FROM rust:1-bookworm AS builder
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
# (No BuildKit cache mounts, so that the classic builder of docker-compose v1 builds it too.)
RUN cargo build --release --target wasm32-wasip1 -p proxy-webhooks \
 && cargo build --release -p devtools --bin demo-orders --bin demo-receiver \
 && cargo build --release -p proxy-webhooks-cli --bin proxy-webhooks \
 && mkdir -p /out \
 && cp target/wasm32-wasip1/release/proxy_webhooks.wasm \
       target/release/demo-orders target/release/demo-receiver target/release/proxy-webhooks /out/

# The plugin alone. Started as a one-shot service, it copies the .wasm into the volume it is given
# (default /plugin), so that the official Envoy image can mount it.
FROM busybox:1.36 AS plugin
COPY --from=builder /out/proxy_webhooks.wasm /proxy_webhooks.wasm
CMD ["sh", "-c", "cp /proxy_webhooks.wasm /plugin/proxy_webhooks.wasm && echo plugin copied"]

# The command line alone: `rules` and `check` on files in the mounted working directory.
FROM debian:bookworm-slim AS cli
COPY --from=builder /out/proxy-webhooks /usr/local/bin/proxy-webhooks
USER 65534
WORKDIR /work
ENTRYPOINT ["proxy-webhooks"]

FROM debian:bookworm-slim AS demo-orders
COPY --from=builder /out/demo-orders /usr/local/bin/demo-orders
USER 65534
EXPOSE 8080
ENTRYPOINT ["demo-orders", "--host", "0.0.0.0", "--port", "8080"]

FROM debian:bookworm-slim AS demo-receiver
COPY --from=builder /out/demo-receiver /usr/local/bin/demo-receiver
USER 65534
EXPOSE 9000
ENTRYPOINT ["demo-receiver", "--host", "0.0.0.0", "--port", "9000"]
