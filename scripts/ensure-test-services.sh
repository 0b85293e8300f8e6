#!/usr/bin/env bash
# The test suite talks to real servers. Make sure their programs exist: PostgreSQL (server binaries),
# Mosquitto, Debian's Chromium for the dashboard's browser tests, and pg_auto_failover for the database failover
# test. Root installs them with apt-get; a normal user with passwordless sudo too;
# otherwise we say what is missing (the suite then uses pip-installed PostgreSQL and skips what it cannot run).
set -uo pipefail
pg_major() { ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sed -E 's#.*/postgresql/([0-9]+)/bin/initdb#\1#' | sort -n | tail -1; }
want() {
  missing=()
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  [ -x /usr/bin/chromium ] || missing+=(chromium)  # tests/dashboard/test_dashboard_browser.py (Playwright drives it)
  # tests/test_db_failover.py: the failover manager, built for the installed PostgreSQL major version
  local major; major=$(pg_major)
  if [ -n "$major" ] && ! command -v pg_autoctl >/dev/null 2>&1; then missing+=("postgresql-$major-auto-failover"); fi
}
want
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "note: missing ${missing[*]} and no root: install them with apt-get for the full suite" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: missing ${missing[*]} and no apt-get: install them for the full suite" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
for round in 1 2; do  # the second round: pg_auto_failover once PostgreSQL's version is known
  [ ${#missing[@]} -eq 0 ] && break
  echo "installing ${missing[*]} with apt-get" >&2
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "note: could not install ${missing[*]}; the tests that need them are skipped" >&2
  want
done
# Debian starts mosquitto and postgresql as services on install where it can; the suite starts its own anyway.
exit 0
