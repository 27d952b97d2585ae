#!/usr/bin/env bash
# Installs the system packages the suite needs (redis-server, postfix, opendkim, kubectl,
# promtool, chromium) from the configured apt repositories, without starting any system service: the
# suite always runs its own private instances. Idempotent: does nothing when the binaries are already there.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/postfix ] || need+=(postfix)
# OpenDKIM is the tests' independent DKIM verifier (its daemon is never started).
[ -x /usr/sbin/opendkim ] || need+=(opendkim)
# unshare (util-linux) runs that verifier without any network, so it cannot do DNS.
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# Headless Chromium renders the local stack's webhook inbox page in the end-to-end tests.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# kubectl renders the Kustomize overlays for tests/deploy (`kubectl kustomize`, offline; its
# built-in Kustomize must be v5). Installed on its own below: Debian itself has no kubectl
# package, so a failure there must not keep the others from being installed.
need_kubectl=0
command -v kubectl >/dev/null 2>&1 || need_kubectl=1
# promtool checks the alert rules and the dashboard's queries. Only that one binary is taken
# out of Debian's prometheus package (installing the package would bring a server service).
need_promtool=0
command -v promtool >/dev/null 2>&1 || need_promtool=1
if [ ${#need[@]} -eq 0 ] && [ "$need_kubectl" -eq 0 ] && [ "$need_promtool" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    [ "$need_kubectl" -eq 0 ] || need+=(kubectl)
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
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
    echo "install-system-deps: installing ${need[*]}" >&2
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$need_kubectl" -eq 1 ]; then
    echo "install-system-deps: installing kubectl" >&2
    if ! apt-get install -y -qq --no-install-recommends kubectl >/dev/null; then
        echo "install-system-deps: no kubectl package in the configured apt repositories;" \
            "add the Kubernetes project's apt repository (or install kubectl >= 1.27) and" \
            "run again" >&2
        exit 1
    fi
fi
if [ "$need_promtool" -eq 1 ]; then
    echo "install-system-deps: installing promtool (from Debian's prometheus package)" >&2
    tmp=$(mktemp -d)
    chmod 755 "$tmp"  # apt's download user must be able to write there
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null && dpkg-deb -x prometheus_*.deb x)
    install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$tmp"
fi
command -v redis-server >/dev/null
command -v promtool >/dev/null
command -v chromium >/dev/null
[ -x /usr/sbin/postfix ]
[ -x /usr/sbin/opendkim ]
command -v kubectl >/dev/null
echo "install-system-deps: done" >&2
