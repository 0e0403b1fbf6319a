#!/bin/sh
# Helper for the pogo-vault pod (ConfigMap pogo-vault-scripts), run from the vault's own
# image as the vault's own user (uid 10001).
#
#   pod.sh prepare   init container: copy the private keys into place, then make sure the
#                    database exists (see INIT_IF_MISSING below), then exit
#   pod.sh keys      init container with the vault in PostgreSQL (postgres/ overlay): copy
#                    the private keys into place, then exit (there is no database file)
#   pod.sh watch     sidecar: when the server certificate, the client CA, the CRL or the
#                    policy change, copy the certificate and key again and send SIGHUP to
#                    pogo-vault
#
# Why copy the keys: kubelet writes Secret files as root with the volume's defaultMode, and
# with the pod's fsGroup set it adds group read (0400 becomes 0440). pogo-vault refuses a
# private key that group or others can read, and without fsGroup a non-root process cannot
# read the root-owned file at all. So the keys are copied, by the vault's user, into an
# in-memory emptyDir (never on disk) with mode 0400.
set -eu
umask 077

KEYS=${KEYS_DIR:-/run/pogo-vault/keys}
MASTER_KEY=${MASTER_KEY_SOURCE:-/secrets/master-key/master.key}
SERVER_TLS=${SERVER_TLS_SOURCE:-/secrets/server-tls}
WATCH=${WATCH_PATHS:-/secrets/server-tls /etc/pogo-vault/config /etc/pogo-vault/client-ca}
INTERVAL=${WATCH_INTERVAL_SECONDS:-20}
DB=${POGO_VAULT_DB:-/var/lib/pogo-vault/vault.db}
AUDIT_DB=${POGO_VAULT_AUDIT_DB:-/var/lib/pogo-vault/vault-audit.db}

log() { printf '%s pod.sh: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Copies $1 to $2 with mode 0400, replacing $2 atomically (rename in the same directory).
put() {
    rm -f "$2.new"
    cp "$1" "$2.new"
    chmod 0400 "$2.new"
    mv -f "$2.new" "$2"
}

# Copies the server certificate and key, both from the same revision of the Secret
# (kubelet swaps the ..data link atomically when cert-manager renews it).
copy_server_tls() {
    rev=$(readlink -f "$SERVER_TLS/..data")
    put "$rev/tls.crt" "$KEYS/tls.crt"
    put "$rev/tls.key" "$KEYS/tls.key"
}

# A digest of every watched file's content (the ..data and ..<timestamp> entries kubelet
# keeps beside the files are skipped).
fingerprint() {
    # shellcheck disable=SC2086 # WATCH is a space-separated list of paths
    find -L $WATCH -type f ! -path '*/..*' | LC_ALL=C sort | while read -r f; do
        sha256sum "$f"
    done | sha256sum
}

# The pid of pogo-vault in the pod's shared process namespace.
vault_pid() {
    for d in /proc/[0-9]*; do
        if [ "$(cat "$d/comm" 2>/dev/null)" = pogo-vault ]; then
            echo "${d#/proc/}"
            return 0
        fi
    done
    return 1
}

keys() {
    install -d -m 0700 "$KEYS"
    put "$MASTER_KEY" "$KEYS/master.key"
    copy_server_tls
    log "keys copied to $KEYS (mode 0400)"
}

prepare() {
    keys
    # Databases restored by Litestream come back with mode 0644.
    for f in "$DB" "$AUDIT_DB"; do
        if [ -e "$f" ]; then chmod 0600 "$f"; fi
    done
    # A missing database means either the very first start, or a lost volume: then it must
    # be restored (deploy/HA.md), not silently replaced by an empty vault whose callers
    # would all get NOT_FOUND, or by a new audit log that starts again at sequence 1. So
    # nothing is created unless asked for.
    if [ "${INIT_IF_MISSING:-false}" = true ]; then
        if [ ! -e "$DB" ]; then
            log "no database at $DB: creating a new vault (INIT_IF_MISSING=true); set it back to false"
            POGO_VAULT_MASTER_KEY_FILE="$KEYS/master.key" pogo-vault --db "$DB" init
        fi
        return 0
    fi
    if [ ! -e "$DB" ]; then
        log "no database at $DB: restore it (deploy/HA.md), or for the very first start set INIT_IF_MISSING=true on the prepare init container"
        exit 1
    fi
    if [ ! -e "$AUDIT_DB" ]; then
        log "no audit database at $AUDIT_DB beside an existing vault: restore it (deploy/HA.md); set INIT_IF_MISSING=true only if a new audit log is really meant"
        exit 1
    fi
}

watch() {
    trap 'exit 0' TERM INT
    last=$(fingerprint)
    log "watching $WATCH every ${INTERVAL}s"
    while :; do
        sleep "$INTERVAL" &
        wait $! || true
        now=$(fingerprint) || continue
        [ "$now" = "$last" ] && continue
        if ! copy_server_tls; then
            log "change seen, but the server certificate could not be copied yet; retrying"
            continue
        fi
        if pid=$(vault_pid) && kill -HUP "$pid"; then
            last=$now
            log "change seen: server certificate and key copied, SIGHUP sent to pogo-vault (pid $pid); its log tells whether the reload was accepted"
        else
            log "change seen, but pogo-vault is not running; retrying"
        fi
    done
}

case "${1:-}" in
    prepare) prepare ;;
    keys) keys ;;
    watch) watch ;;
    *)
        echo "usage: pod.sh prepare|keys|watch" >&2
        exit 2
        ;;
esac
