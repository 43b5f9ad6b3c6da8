#!/usr/bin/env bash
# docker-entrypoint.sh of Lotse's postgres image (Debian 12's PostgreSQL), after the Docker Hub
# image's: honours POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB, POSTGRES_INITDB_ARGS,
# POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD, PGDATA (and the *_FILE variants), runs
# /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz on an empty data directory, reuses an
# existing one. Started as root it owns the data directory to postgres (UID 999) and drops to it.
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR from $VAR or the file named by $VAR_FILE
file_env() {
  local var=$1 fileVar="${1}_FILE" def=${2:-} val
  if [ -n "${!var:-}" ] && [ -n "${!fileVar:-}" ]; then
    echo "error: both $var and $fileVar are set (but are exclusive)" >&2
    exit 1
  fi
  val=$def
  if [ -n "${!var:-}" ]; then val=${!var}; elif [ -n "${!fileVar:-}" ]; then val=$(<"${!fileVar}"); fi
  export "$var"="$val"
  unset "$fileVar"
}

# an arbitrary UID (runAsUser other than 999) without a passwd entry: initdb and postgres look up
# their user, so give them one through nss_wrapper as the official image does
nss_wrap() {
  if ! getent passwd "$(id -u)" >/dev/null 2>&1 && [ -e /usr/lib/x86_64-linux-gnu/libnss_wrapper.so ]; then
    NSS_WRAPPER_PASSWD=$(mktemp) NSS_WRAPPER_GROUP=$(mktemp)
    export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libnss_wrapper.so NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
    printf 'postgres:x:%s:%s:PostgreSQL:%s:/bin/false\n' "$(id -u)" "$(id -g)" "$PGDATA" >"$NSS_WRAPPER_PASSWD"
    printf 'postgres:x:%s:\n' "$(id -g)" >"$NSS_WRAPPER_GROUP"
  fi
}
nss_unwrap() {
  if [ -n "${NSS_WRAPPER_PASSWD:-}" ]; then
    rm -f "$NSS_WRAPPER_PASSWD" "$NSS_WRAPPER_GROUP"
    unset LD_PRELOAD NSS_WRAPPER_PASSWD NSS_WRAPPER_GROUP
  fi
}

psql_init() { # psql as the initial superuser over the local socket
  PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

run_initdb_d() {
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
      *.sql) echo "$0: running $f"; psql_init --dbname "$POSTGRES_DB" -f "$f"; echo ;;
      *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | psql_init --dbname "$POSTGRES_DB"; echo ;;
      *.sql.xz) echo "$0: running $f"; xzcat "$f" | psql_init --dbname "$POSTGRES_DB"; echo ;;
      *) if [ -e "$f" ]; then echo "$0: ignoring $f"; fi ;;
    esac
  done
}

if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && ! [[ " $* " =~ \ (-C|--describe-config|-V|--version|--help|-\?)\  ]]; then
  : "${PGDATA:=/var/lib/postgresql/data}"
  export PGDATA
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres: '{}' +
    chown postgres: /var/run/postgresql
    chmod 700 "$PGDATA" || :
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
  fi
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA" 2>/dev/null || :
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
      {
        echo 'Error: Database is uninitialized and superuser password is not specified.'
        echo '       You must specify POSTGRES_PASSWORD to a non-empty value for the'
        echo '       superuser. For example, "-e POSTGRES_PASSWORD=password" on "docker run".'
        echo
        echo '       You may also use "POSTGRES_HOST_AUTH_METHOD=trust" to allow all'
        echo '       connections without a password. This is *not* recommended.'
      } >&2
      exit 1
    fi
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
      POSTGRES_INITDB_ARGS="$POSTGRES_INITDB_ARGS --waldir $POSTGRES_INITDB_WALDIR"
    fi
    nss_wrap
    # shellcheck disable=SC2086
    if [ -n "$POSTGRES_PASSWORD" ]; then
      initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
    else
      initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS
    fi
    nss_unwrap
    auth=${POSTGRES_HOST_AUTH_METHOD:-$(postgres -C password_encryption -D "$PGDATA" 2>/dev/null || echo scram-sha-256)}
    printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
    # a temporary server on the local socket only, for POSTGRES_DB and the init scripts
    PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
    export PGPASSWORD=$POSTGRES_PASSWORD
    if [ "$POSTGRES_DB" != postgres ] &&
      [ -z "$(psql_init --dbname postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$POSTGRES_DB'")" ]; then
      psql_init --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db" ;'
    fi
    run_initdb_d
    PGUSER=$POSTGRES_USER pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    echo
    echo 'PostgreSQL init process complete; ready for start up.'
    echo
  else
    echo
    echo 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
    echo
  fi
fi

exec "$@"
