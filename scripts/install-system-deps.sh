#!/usr/bin/env bash
# Installs the system packages the suite needs (redis-server, postfix, opendkim) from Debian's
# repositories, without starting any system service: the suite always runs its own private
# instances. Idempotent: does nothing when the binaries are already there.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -x /usr/sbin/postfix ] || need+=(postfix)
# OpenDKIM is the tests' independent DKIM verifier (its daemon is never started).
[ -x /usr/sbin/opendkim ] || need+=(opendkim)
# unshare (util-linux) runs that verifier without any network, so it cannot do DNS.
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: missing ${need[*]}; run as root or install them with apt" >&2
    exit 1
fi

echo "install-system-deps: installing ${need[*]}" >&2
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
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
command -v redis-server >/dev/null
[ -x /usr/sbin/postfix ]
[ -x /usr/sbin/opendkim ]
echo "install-system-deps: done" >&2
