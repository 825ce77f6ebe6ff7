#!/usr/bin/env bash
# Install what the tests need from Debian: the database servers the tests start
# (tests/dbservers.py), PostgreSQL and Redis; the `openssl` command the TLS tests make their
# certificates with; valgrind for `make test-memcheck`. With arguments (any of postgresql,
# redis-server, openssl, valgrind), only those. Does nothing when all are present. Otherwise
# installs them with apt-get, non-interactively, as root (or through `sudo -n`). The packages' own services are not started, and no default
# PostgreSQL cluster is created: the tests run throw-away servers of their own.
set -euo pipefail

have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_redis() { command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ]; }

wanted=" ${*:-postgresql redis-server openssl valgrind} "
packages=()
[[ $wanted != *" postgresql "* ]] || have_postgres || packages+=(postgresql)
[[ $wanted != *" redis-server "* ]] || have_redis || packages+=(redis-server)
[[ $wanted != *" openssl "* ]] || command -v openssl >/dev/null || packages+=(openssl)
[[ $wanted != *" valgrind "* ]] || command -v valgrind >/dev/null || packages+=(valgrind)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "services: ${packages[*]} missing and not root; install them with: apt-get install -y ${packages[*]}" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "services: ${packages[*]} missing and no apt-get to install them" >&2; exit 1; }

echo "services: installing ${packages[*]}"
cleanup=()
finish() { local f; for f in "${cleanup[@]}"; do "${as_root[@]}" rm -f "$f"; done; [ -z "${made_dir:-}" ] || "${as_root[@]}" rmdir --ignore-fail-on-non-empty "$made_dir"; }
trap finish EXIT

# Keep the packages' init scripts from starting a server: invoke-rc.d obeys policy-rc.d (exit 101 =
# action forbidden). Only installed for the duration of this script, and only if none exists.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod 755 /usr/sbin/policy-rc.d
    cleanup+=(/usr/sbin/policy-rc.d)
fi
# postgresql-common creates and starts a "main" cluster on install unless told not to
# (createcluster.d drop-ins are read by pg_createcluster; this one only lives during the install).
if [[ " ${packages[*]} " == *" postgresql "* ]]; then
    if [ ! -d /etc/postgresql-common/createcluster.d ]; then
        "${as_root[@]}" mkdir -p /etc/postgresql-common/createcluster.d
        made_dir=/etc/postgresql-common/createcluster.d
    fi
    echo 'create_main_cluster = false' | "${as_root[@]}" tee /etc/postgresql-common/createcluster.d/zz-ferroloop-tests.conf >/dev/null
    cleanup+=(/etc/postgresql-common/createcluster.d/zz-ferroloop-tests.conf)
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${packages[@]}"

[[ $wanted != *" postgresql "* ]] || have_postgres || { echo "services: postgresql installed but /usr/lib/postgresql/*/bin/postgres is missing" >&2; exit 1; }
[[ $wanted != *" redis-server "* ]] || have_redis || { echo "services: redis-server installed but not found" >&2; exit 1; }
[[ $wanted != *" valgrind "* ]] || command -v valgrind >/dev/null || { echo "services: valgrind installed but not found" >&2; exit 1; }
echo "services: ready (${packages[*]} installed)"
