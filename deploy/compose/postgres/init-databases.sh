#!/usr/bin/env bash
# One database per service, each owned by a role of the same name (run once, by the
# postgres image's entrypoint, when the data volume is new).
#   CHANGAI_DATABASES    space-separated names, e.g. "membership training funding notifier reform"
#   CHANGAI_DB_PASSWORD  the password of those roles
set -euo pipefail
: "${CHANGAI_DATABASES:?set CHANGAI_DATABASES}"
: "${CHANGAI_DB_PASSWORD:?set CHANGAI_DB_PASSWORD}"

for db in $CHANGAI_DATABASES; do
  echo "changai: creating role and database ${db}"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v db="$db" -v password="$CHANGAI_DB_PASSWORD" <<'SQL'
CREATE ROLE :"db" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"db";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
done
