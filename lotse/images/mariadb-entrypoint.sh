#!/usr/bin/env bash
# docker-entrypoint.sh of Lotse's mariadb image (Debian 12's MariaDB), after the Docker Hub
# image's: honours MARIADB_ROOT_PASSWORD, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD,
# MARIADB_RANDOM_ROOT_PASSWORD, MARIADB_ROOT_HOST, MARIADB_DATABASE, MARIADB_USER,
# MARIADB_PASSWORD (each also as MYSQL_*, and as *_FILE), runs /docker-entrypoint-initdb.d/*.sh,
# *.sql, *.sql.gz on an empty data directory, reuses an existing one. Started as root it owns the
# data directory to mysql (UID 999) and drops to it.
set -Eeo pipefail

# file_env VAR [DEFAULT]: MARIADB_X from $MARIADB_X, $MARIADB_X_FILE, $MYSQL_X or $MYSQL_X_FILE
file_env() {
  local var=$1 def=${2:-} mysql=${1/MARIADB_/MYSQL_} val=${2:-} v f
  for v in "$var" "$mysql"; do
    f="${v}_FILE"
    if [ -n "${!v:-}" ] && [ -n "${!f:-}" ]; then
      echo "error: both $v and $f are set (but are exclusive)" >&2
      exit 1
    fi
  done
  f="${var}_FILE"
  if [ -n "${!var:-}" ]; then val=${!var}
  elif [ -n "${!f:-}" ]; then val=$(<"${!f}")
  else
    f="${mysql}_FILE"
    if [ -n "${!mysql:-}" ]; then val=${!mysql}
    elif [ -n "${!f:-}" ]; then val=$(<"${!f}"); fi
  fi
  export "$var"="$val"
  unset "${var}_FILE" "${mysql}_FILE"
}

sql_escape() { sed -e "s/\\\\/\\\\\\\\/g" -e "s/'/\\\\'/g" <<<"$1"; }

SOCKET=/run/mysqld/mysqld.sock
mysql_client() { mariadb --protocol=socket -uroot -hlocalhost --socket="$SOCKET" "$@"; }

run_initdb_d() {
  local f
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh)
        if [ -x "$f" ]; then echo "$0: running $f"; "$f"; else echo "$0: sourcing $f"; . "$f"; fi ;;
      *.sql) echo "$0: running $f"; mysql_client ${MARIADB_DATABASE:+--database="$MARIADB_DATABASE"} <"$f"; echo ;;
      *.sql.gz) echo "$0: running $f"; gunzip -c "$f" | mysql_client ${MARIADB_DATABASE:+--database="$MARIADB_DATABASE"}; echo ;;
      *.sql.xz) echo "$0: running $f"; xzcat "$f" | mysql_client ${MARIADB_DATABASE:+--database="$MARIADB_DATABASE"}; echo ;;
      *) if [ -e "$f" ]; then echo "$0: ignoring $f"; fi ;;
    esac
  done
}

if [ "${1:0:1}" = '-' ]; then set -- mariadbd "$@"; fi

if { [ "$1" = mariadbd ] || [ "$1" = mysqld ]; } && ! [[ " $* " =~ \ (--help|--version|-V|-\?)\  ]]; then
  DATADIR=$("$@" --verbose --help 2>/dev/null | awk '$1 == "datadir" { print $2; exit }')
  DATADIR=${DATADIR:-/var/lib/mysql}
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATADIR" /run/mysqld
    find "$DATADIR" \! -user mysql -exec chown mysql: '{}' +
    chown mysql: /run/mysqld
    exec setpriv --reuid=mysql --regid=mysql --init-groups "${BASH_SOURCE[0]}" "$@"
  fi
  if [ ! -d "$DATADIR/mysql" ]; then
    file_env MARIADB_ROOT_PASSWORD
    file_env MARIADB_ROOT_HOST %
    file_env MARIADB_DATABASE
    file_env MARIADB_USER
    file_env MARIADB_PASSWORD
    file_env MARIADB_ALLOW_EMPTY_ROOT_PASSWORD
    file_env MARIADB_RANDOM_ROOT_PASSWORD
    if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] && [ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
      echo 'error: Database is uninitialized and password option is not specified' >&2
      echo '	You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD_HASH, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD' >&2
      exit 1
    fi
    if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
      MARIADB_ROOT_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '\n')
      echo "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
    fi
    if [ "$MARIADB_USER" = root ]; then
      echo 'error: MARIADB_USER="root", MARIADB_USER and MARIADB_PASSWORD are for configuring a regular user and cannot be used for the root user' >&2
      exit 1
    fi
    mkdir -p "$DATADIR"
    echo 'Initializing database files'
    mariadb-install-db --datadir="$DATADIR" --rpm --auth-root-authentication-method=normal \
      --skip-test-db --old-mode='UTF8_IS_UTF8MB3' --default-time-zone=SYSTEM --enforce-storage-engine= \
      --skip-log-bin --expire-logs-days=0 --loose-innodb_buffer_pool_load_at_startup=0 \
      --loose-innodb_buffer_pool_dump_at_shutdown=0 >/dev/null
    echo 'Database files initialized'
    # a temporary server without networking, for the users, the database and the init scripts
    "$@" --skip-networking --default-time-zone=SYSTEM --socket="$SOCKET" --wsrep_on=OFF \
      --expire-logs-days=0 --skip-slave-start --loose-innodb_buffer_pool_load_at_startup=0 &
    PID=$!
    for _ in $(seq 300); do
      mysql_client --database=mysql -e 'SELECT 1' >/dev/null 2>&1 && break
      kill -0 "$PID" 2>/dev/null || { echo 'error: the temporary server did not start' >&2; exit 1; }
      sleep 0.1
    done
    rootpw=$(sql_escape "$MARIADB_ROOT_PASSWORD")
    roothost=$(sql_escape "$MARIADB_ROOT_HOST")
    {
      echo 'SET @@SESSION.SQL_LOG_BIN=0; SET @@SESSION.SQL_MODE=REPLACE(@@SESSION.SQL_MODE, "NO_BACKSLASH_ESCAPES", "");'
      echo "DROP USER IF EXISTS root@'127.0.0.1', root@'::1';"
      echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@\\'', @@hostname,'\\'');"
      echo "SET PASSWORD FOR 'root'@'localhost'= PASSWORD('$rootpw');"
      if [ "$MARIADB_ROOT_HOST" != localhost ]; then
        echo "CREATE USER 'root'@'$roothost' IDENTIFIED BY '$rootpw';"
        echo "GRANT ALL ON *.* TO 'root'@'$roothost' WITH GRANT OPTION;"
        echo "GRANT PROXY ON ''@'%' TO 'root'@'$roothost' WITH GRANT OPTION;"
      fi
      if [ -n "$MARIADB_DATABASE" ]; then
        echo "CREATE DATABASE IF NOT EXISTS \`$(sql_escape "$MARIADB_DATABASE")\`;"
      fi
      if [ -n "$MARIADB_USER" ] && [ -n "$MARIADB_PASSWORD" ]; then
        u=$(sql_escape "$MARIADB_USER")
        echo "CREATE USER '$u'@'%' IDENTIFIED BY '$(sql_escape "$MARIADB_PASSWORD")';"
        if [ -n "$MARIADB_DATABASE" ]; then
          echo "GRANT ALL ON \`$(sql_escape "$MARIADB_DATABASE" | sed 's/_/\\_/g')\`.* TO '$u'@'%';"
        fi
      fi
    } | mysql_client --database=mysql --binary-mode
    # the scripts connect as root with the password, as in the official image
    export MYSQL_PWD=$MARIADB_ROOT_PASSWORD
    run_initdb_d
    unset MYSQL_PWD
    MYSQL_PWD=$MARIADB_ROOT_PASSWORD mariadb-admin --socket="$SOCKET" -uroot shutdown
    wait "$PID" || :
    echo
    echo 'MariaDB init process done. Ready for start up.'
    echo
  fi
fi

exec "$@"
