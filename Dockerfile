# patchbay's container image: a build stage with the Rust toolchain, and a runtime stage on
# debian:bookworm-slim that adds libopus0 and nothing else.
#
#   docker build -t patchbay .
#   docker run --network host -v patchbay-data:/var/lib/patchbay \
#     -e PATCHBAY_PUBLIC_IP=203.0.113.7 patchbay
#
# Host networking is the simple way for media: the image listens on many UDP ports (one per
# media shard, and the RTP range of phones). See docs/deploy.md.
#
# Kept plain on purpose: tests/packaging.sh runs the runtime stage's steps on the host (build,
# install into a scratch root, start with the CMD and ENV below, call /readyz), so what the
# image holds is checked where the image itself cannot be built.

FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --locked --release --bin patchbay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/patchbay patchbay \
    && install -d -o patchbay -g patchbay -m 0700 /var/lib/patchbay
COPY --from=build /src/target/release/patchbay /usr/local/bin/patchbay
ENV PATCHBAY_LISTEN=0.0.0.0:8080
ENV PATCHBAY_DATA_DIR=/var/lib/patchbay
ENV PATCHBAY_MEDIA_LISTEN=0.0.0.0:3478
ENV PATCHBAY_SIP_LISTEN=0.0.0.0:5060
ENV PATCHBAY_RTP_PORTS=20000-20999
# No `dev` account (its password would go to the container's log): `patchbay account create`.
ENV PATCHBAY_DEV_ACCOUNT=false
USER patchbay
VOLUME /var/lib/patchbay
# HTTP (REST, device WebSocket), media (shard i on 3478 + i, UDP, and TCP for ICE over TCP;
# one shard per core, 8 listed here), SIP, phones' RTP (PATCHBAY_RTP_PORTS above, which narrows
# the binary's default 20000-29999). tests/packaging.sh checks these against the ENV lines.
EXPOSE 8080/tcp 3478-3485/udp 3478-3485/tcp 5060/udp 5060/tcp 20000-20999/udp
CMD ["patchbay", "serve"]
