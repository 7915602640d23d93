# syntax=docker/dockerfile:1
#
# tailrouter container image for routers (MikroTik RouterOS containers and the like).
#
# Multi-platform, cross-compiled on the build machine's own platform (no emulation):
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t REPO/tailrouter:TAG --push .
#
# Each platform gets the rootfs `cargo xtask image` makes (the static musl binary with exactly the
# tag set of the TAGS build argument, xz-packed behind its launcher, and the CA roots), so this
# image and the xtask's archive hold the same files. docs/packaging.md explains every stage and each choice made here;
# xtask/tests/packaging.rs checks this file's structure.
#
# Platform -> Rust target (the only mapping; the image pipeline builds exactly these three):
#   linux/amd64  -> x86_64-unknown-linux-musl
#   linux/arm64  -> aarch64-unknown-linux-musl
#   linux/arm/v7 -> armv7-unknown-linux-musleabihf

# The Rust toolchain image; its Debian release supplies clang and llvm-ar for the C and assembly
# code of dependencies (ring). Pin it with --build-arg RUST_IMAGE=... for reproducible builds.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

# ---------------------------------------------------------------------------------------------
# toolchain: the build machine's Rust plus clang (C compiler for every target) and llvm-ar.
# The linker is rust-lld, which ships with Rust; musl targets bring their own libc and start
# files, so no per-target C toolchain or sysroot is needed.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS toolchain
# rust-src: `cargo xtask image` builds std from source for size (docs/sizes.md).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm xz-utils ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add rust-src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# manifests: the workspace reduced to its Cargo manifests, lock file and .cargo config, with
# empty stub sources. It is rebuilt on every source change, but its output only changes when a
# manifest does, so the dependency layer below stays cached while code is edited.
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock ! -path './.cargo/*' -delete \
 && find . -name Cargo.toml ! -path ./Cargo.toml | while read -r m; do \
      d="$(dirname "$m")"; mkdir -p "$d/src"; : > "$d/src/lib.rs"; echo 'fn main() {}' > "$d/src/main.rs"; \
    done

# ---------------------------------------------------------------------------------------------
# deps: every crate of Cargo.lock, for every target, downloaded once and shared by all platforms.
FROM toolchain AS deps
COPY --from=manifests /src/ /src/
# The stub sources go again: the real ones are copied in by the build stage.
# Then std's own dependencies, for the std-from-source build of each target.
RUN cargo fetch --locked \
 && for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf; do \
      RUSTC_BOOTSTRAP=1 cargo fetch --locked -Z build-std=std,panic_abort --target "$t" || exit 1; \
    done \
 && find /src -mindepth 1 -delete

# ---------------------------------------------------------------------------------------------
# build: the combined binary for TARGETPLATFORM, through the xtask, offline.
FROM deps AS build
ARG TARGETPLATFORM
ARG TARGETARCH
ARG TARGETVARIANT
ARG BUILDPLATFORM
RUN case "${TARGETPLATFORM}" in \
      linux/amd64) echo x86_64-unknown-linux-musl ;; \
      linux/arm64|linux/arm64/v8) echo aarch64-unknown-linux-musl ;; \
      linux/arm/v7) echo armv7-unknown-linux-musleabihf ;; \
      *) echo "tailrouter: no Rust target for platform ${TARGETPLATFORM}" >&2; exit 1 ;; \
    esac > /etc/rust-target \
 && rustup target add "$(cat /etc/rust-target)"
COPY . /src/
# The tag set, exactly as `cargo xtask image` takes it. The default is what `cargo xtask image`
# builds: the router set with its jobs (subnet routes and exit node, offered and used), the
# PeerAPI server so an exit node serves its users' DNS, and the `sh` personality. Not iptables:
# that back-end runs iptables binaries, which the image lacks.
ARG TAGS="--min --add=osrouter,dns,netstack,advertiseroutes,advertiseexitnode,peerapiserver,useroutes,useexitnode,shell"
# The commit the binary reports in --version (the build context has no .git).
ARG COMMIT=""
# TAGS is split into words on purpose (SC2086).
# hadolint ignore=SC2086
RUN --mount=type=cache,id=tailrouter-target-${TARGETARCH}${TARGETVARIANT},target=/src/target \
    set -eu; \
    RUST_TARGET="$(cat /etc/rust-target)"; \
    t_lower="$(echo "$RUST_TARGET" | tr '-' '_')"; \
    t_upper="$(echo "$t_lower" | tr '[:lower:]' '[:upper:]')"; \
    export "CC_${t_lower}=clang" "AR_${t_lower}=llvm-ar" "CARGO_TARGET_${t_upper}_LINKER=rust-lld"; \
    if [ -n "$COMMIT" ]; then export TAILROUTER_COMMIT="$COMMIT"; fi; \
    export CARGO_NET_OFFLINE=true; \
    cargo xtask image ${TAGS} --target "${RUST_TARGET}" --out /out/tailrouter.tar --rootfs /rootfs; \
    if llvm-readelf --program-headers /rootfs/usr/local/bin/tailrouter | grep -q INTERP; then \
      echo "tailrouter: /usr/local/bin/tailrouter is dynamically linked" >&2; exit 1; \
    fi; \
    for name in containerboot tailscale tailscaled; do \
      test "$(readlink "/rootfs/usr/local/bin/$name")" = tailrouter; \
    done; \
    if [ "$TARGETPLATFORM" = "$BUILDPLATFORM" ]; then /rootfs/usr/local/bin/tailscaled --version; fi

# ---------------------------------------------------------------------------------------------
# image: nothing but the binary, its three names (containerboot, tailscale, tailscaled) and
# /bin/sh (its `sh` personality, for RouterOS /container/shell), CA roots and the directories
# it uses.
FROM scratch AS image
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-anchors.bin
LABEL org.opencontainers.image.title="tailrouter" \
      org.opencontainers.image.description="Tailscale node for routers (combined tailscale + tailscaled)" \
      org.opencontainers.image.licenses="BSD-3-Clause"
# Node state (keys, login) must survive container re-creation: mount it from the router's disk.
VOLUME ["/var/lib/tailscale"]
# containerboot: the daemon configured by TS_* environment variables (RouterOS /container/envs),
# with `tailscale up` run in the same process; docs/container.md lists the variables. It takes
# no arguments, so there is no CMD: daemon flags go in TS_TAILSCALED_EXTRA_ARGS, `up` flags in
# TS_EXTRA_ARGS. `--entrypoint /usr/local/bin/tailscaled` runs the plain daemon instead.
ENTRYPOINT ["/usr/local/bin/containerboot"]
