# A small image with just the `conduit` binary. Build and run:
#
#     docker build -t conduit .
#     docker run -e CONDUIT_SERVER_NAME=example.org -v conduit-data:/var/lib/conduit -p 6167:6167 conduit
#
# No config file is needed: CONDUIT_* environment variables configure the server (see
# conduit.toml.example for every key). To use a file anyway, mount it and set
# CONDUIT_CONFIG=/path/in/container.toml.

# ---- Build stage ----------------------------------------------------------------------
# Cargo.toml asks for Rust 1.93 or newer; rust:1 is the latest stable release.
FROM rust:1-bookworm AS builder
WORKDIR /build

# Build the dependencies first, against placeholder sources, so that changing our own code
# does not rebuild them (Docker reuses this layer while Cargo.toml and Cargo.lock are
# unchanged).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Now the real sources. `touch` makes sure Cargo sees them as newer than the placeholders.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/conduit /usr/local/bin/conduit

# ---- Run stage ------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for outgoing HTTPS (federation, later).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed uid/gid, so the owner of a bind-mounted data
# directory is predictable (chown 1000:1000 it on the host).
RUN groupadd --gid 1000 conduit \
    && useradd --uid 1000 --gid conduit --no-create-home --home-dir /var/lib/conduit \
        --shell /usr/sbin/nologin conduit \
    && mkdir -p /var/lib/conduit \
    && chown conduit:conduit /var/lib/conduit

COPY --from=builder /usr/local/bin/conduit /usr/local/bin/conduit

# Defaults for a container: data in the volume, listen on all interfaces of the container.
ENV CONDUIT_DATABASE_PATH=/var/lib/conduit \
    CONDUIT_ADDRESS=0.0.0.0 \
    CONDUIT_PORT=6167

# Declared after the chown above, so a new named volume starts out owned by `conduit`.
VOLUME /var/lib/conduit
EXPOSE 6167

USER conduit
WORKDIR /var/lib/conduit

# `docker stop` sends SIGTERM: the server finishes open requests and flushes the database.
# Arguments after the image name go to conduit, e.g. `user list`.
ENTRYPOINT ["/usr/local/bin/conduit"]
