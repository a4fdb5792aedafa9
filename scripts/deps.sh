# Installs what kiln needs on a Debian machine, skipping what is already
# there. Sourced by the other scripts.
set -euo pipefail

# dosfstools, mtools, systemd-boot-efi: the EFI system partition of bootable disks;
# ovmf, qemu-system-x86, fdisk (sfdisk): the tests that boot them and read their tables,
# and the vm instance driver (with dosfstools and mtools for its config drive).
KILN_DEBIAN_PACKAGES=(git libc6-dev bubblewrap busybox-static util-linux curl mmdebstrap skopeo umoci e2fsprogs qemu-utils zstd python3-venv podman docker-registry apache2-utils openssl dosfstools mtools systemd-boot-efi ovmf qemu-system-x86 fdisk)

# Pinned: a newer cfn-lint may add checks; bump it with the golden files.
KILN_CFN_LINT_VERSION=1.51.0
KILN_PARLIAMENT_VERSION=1.6.4
KILN_CHECKOV_VERSION=3.3.30

kiln_install_deps() {
    kiln_apt_install "${KILN_DEBIAN_PACKAGES[@]}"
    kiln_check_toolchain
}

# Prints those of the given Debian packages that are not installed.
kiln_apt_missing() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

# Installs those of the given Debian packages that are missing. apt may
# remove one of them to make room for another: a machine with a newer
# qemu-utils from backports loses it when Debian's qemu-system-x86 comes
# in. What went is installed again, at the version that fits the rest.
kiln_apt_install() {
    local missing sudo="" round
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    missing=$(kiln_apt_missing "$@")
    [ -n "$missing" ] || return 0
    $sudo apt-get update -qq
    for round in 1 2; do
        echo "installing Debian packages: $(echo $missing)" >&2
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
        missing=$(kiln_apt_missing "$@")
        [ -n "$missing" ] || return 0
    done
    echo "error: apt-get could not install these Debian packages beside the others: $(echo $missing)" >&2
    return 1
}

# cargo, with clippy and rustfmt for the test command.
kiln_check_toolchain() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo is not installed; install a Rust toolchain (rustup) first" >&2
        return 1
    fi
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
}

# cargo-nextest runs the test suites side by side (.config/nextest.toml).
kiln_install_nextest() {
    command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
}

# cfn-lint, parliament and checkov check every template and role `kiln
# synth aws` writes; only the tests need them, so the demo does not wait
# for them. They live in their own virtual environment: checkov pins
# boto3, which would otherwise downgrade what the system's Python tools
# (awscli) need.
kiln_install_lint_tools() {
    local venv="${KILN_LINT_VENV:-/opt/kiln-lint}" tool sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! command -v cfn-lint >/dev/null 2>&1 || ! command -v parliament >/dev/null 2>&1 \
        || ! command -v checkov >/dev/null 2>&1; then
        echo "installing cfn-lint, parliament and checkov from PyPI into $venv" >&2
        $sudo python3 -m venv "$venv"
        $sudo "$venv/bin/pip" install -q "cfn-lint==$KILN_CFN_LINT_VERSION" \
            "parliament==$KILN_PARLIAMENT_VERSION" "checkov==$KILN_CHECKOV_VERSION"
        for tool in cfn-lint parliament checkov; do
            command -v "$tool" >/dev/null 2>&1 || $sudo ln -sf "$venv/bin/$tool" "/usr/local/bin/$tool"
        done
    fi
}

# The console's and API's test tools: Debian's chromium and its driver for
# the browser test (never a downloaded browser), schemathesis to drive every
# operation of the OpenAPI document, and the Prometheus client library's
# text-format parser for /metrics. Pinned, in their own virtual environment.
KILN_SCHEMATHESIS_VERSION=4.32.5
KILN_PROMETHEUS_CLIENT_VERSION=0.26.0
KILN_API_VENV="${KILN_API_VENV:-/opt/kiln-api-test}"

kiln_install_console_test_tools() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    kiln_apt_install chromium chromium-driver
    if [ "$("$KILN_API_VENV/bin/python" -c "from importlib.metadata import version as v; \
print(v('schemathesis'), v('prometheus-client'))" 2>/dev/null)" \
        != "$KILN_SCHEMATHESIS_VERSION $KILN_PROMETHEUS_CLIENT_VERSION" ]; then
        echo "installing schemathesis and prometheus-client from PyPI into $KILN_API_VENV" >&2
        $sudo python3 -m venv "$KILN_API_VENV"
        $sudo "$KILN_API_VENV/bin/pip" install -q "schemathesis==$KILN_SCHEMATHESIS_VERSION" \
            "prometheus-client==$KILN_PROMETHEUS_CLIENT_VERSION"
    fi
}

# Pinned: the AWS target's tests run against this moto server; a newer one
# may emulate more (or differently), so bump it with crates/kiln-aws/tests.
KILN_MOTO_VERSION=5.2.5

# moto in server mode, for crates/kiln-aws/tests/moto.rs. Its own virtual
# environment: moto needs a newer boto3 than checkov pins in /opt/kiln-lint.
kiln_install_moto() {
    local venv="${KILN_MOTO_VENV:-/opt/kiln-moto}" sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! "$venv/bin/moto_server" --help >/dev/null 2>&1 \
        || [ "$("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$KILN_MOTO_VERSION" ]; then
        echo "installing moto[server]==$KILN_MOTO_VERSION from PyPI into $venv" >&2
        $sudo python3 -m venv "$venv"
        $sudo "$venv/bin/pip" install -q "moto[server]==$KILN_MOTO_VERSION"
    fi
}
