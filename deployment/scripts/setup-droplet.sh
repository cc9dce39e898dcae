#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu droplet for berth: Docker from the distribution, a
# firewall that lets in SSH only, /etc/berth with config and generated secrets, the berth
# binary and its systemd unit; then starts berth and waits for /health.
# Idempotent: running it again changes nothing and never overwrites existing secrets.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: setup-droplet.sh [--dry-run] [--binary PATH] [--config PATH] [--token TOKEN]
                        [--ssh-port PORT]

  --dry-run       print what would be done, change nothing
  --binary PATH   the berth binary to install (default: ./berth or target/release/berth)
  --config PATH   the berth.toml to install if /etc/berth/berth.toml does not exist
                  (default: config/berth.toml next to this script's repository)
  --token TOKEN   the Telegram bot token (asked for if missing and not already set)
  --ssh-port PORT the one inbound port the firewall lets in (default: 22)
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dry_run=0
binary=""
config="$repo/config/berth.toml"
token="${TELEGRAM_BOT_TOKEN:-}"
ssh_port=22
etc=/etc/berth

while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --binary) binary="$2"; shift ;;
        --config) config="$2"; shift ;;
        --token) token="$2"; shift ;;
        --ssh-port) ssh_port="$2"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

say() { printf '==> %s\n' "$*"; }
run() {
    if ((dry_run)); then
        printf '[dry-run] %s\n' "$*"
    else
        "$@"
    fi
}

if ((!dry_run)) && [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo $0)" >&2
    exit 1
fi

if [ -z "$binary" ]; then
    for b in ./berth "$repo/target/release/berth" "$repo/target/debug/berth"; do
        if [ -x "$b" ]; then binary=$b; break; fi
    done
fi
[ -n "$binary" ] || { echo "no berth binary found: build it (cargo build --release) or pass --binary" >&2; exit 1; }

# A Docker engine already answering on its socket (installed some other way) is kept.
engine_answers() {
    command -v curl > /dev/null \
        && curl -fsS --max-time 5 --unix-socket /run/docker.sock -o /dev/null http://localhost/_ping 2> /dev/null
}

say "packages: Docker, ufw and curl from the distribution"
need=()
command -v curl > /dev/null || need+=(curl)
command -v ufw > /dev/null || need+=(ufw)
engine_answers || command -v dockerd > /dev/null || need+=(docker.io)
if ((${#need[@]})); then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
else
    echo "already installed"
fi
if engine_answers; then
    echo "the Docker engine answers"
else
    run systemctl enable --now docker
fi

say "firewall: deny incoming except SSH ($ssh_port/tcp)"
if ufw status 2> /dev/null | grep -q "Status: active" \
    && ufw status | grep -qE "^$ssh_port/tcp +ALLOW"; then
    echo "already active"
else
    run ufw default deny incoming
    run ufw default allow outgoing
    run ufw allow "$ssh_port/tcp"
    run ufw --force enable
fi

say "$etc: config and secrets"
run install -d -m 0700 "$etc"
if [ -e "$etc/berth.toml" ]; then
    echo "$etc/berth.toml exists: kept"
else
    run install -m 0600 "$config" "$etc/berth.toml"
fi
if [ -e "$etc/redis.conf" ]; then
    echo "$etc/redis.conf exists: kept"
else
    run install -m 0644 "$repo/deployment/redis/redis.conf" "$etc/redis.conf"
fi
if [ -e "$etc/berth.env" ]; then
    echo "$etc/berth.env exists: secrets kept"
else
    if [ -z "$token" ] && ((!dry_run)); then
        read -r -p "Telegram bot token (from @BotFather): " token
    fi
    pg=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
    if ((dry_run)); then
        echo "[dry-run] write $etc/berth.env (0600) from deployment/.env.production.template with a generated POSTGRES_PASSWORD"
    else
        umask 077
        sed -e "s|^TELEGRAM_BOT_TOKEN=.*|TELEGRAM_BOT_TOKEN=$token|" \
            -e "s|^POSTGRES_PASSWORD=.*|POSTGRES_PASSWORD=$pg|" \
            "$repo/deployment/.env.production.template" > "$etc/berth.env"
        chmod 0600 "$etc/berth.env"
    fi
fi

say "berth binary and systemd unit"
if [ -x /usr/bin/berth ] && cmp -s "$binary" /usr/bin/berth; then
    echo "/usr/bin/berth is up to date"
else
    run install -m 0755 "$binary" /usr/bin/berth
fi
# Shell completions and the man page, from the binary's own CLI definition.
install_generated() { # DEST COMMAND...
    local dest=$1 tmp
    shift
    tmp=$(mktemp)
    "$binary" "$@" > "$tmp"
    if cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        run install -D -m 0644 "$tmp" "$dest"
        rm -f "$tmp"
    fi
}
install_generated /usr/share/bash-completion/completions/berth completions bash
install_generated /usr/local/share/man/man1/berth.1 man
if cmp -s "$repo/systemd/berth.service" /etc/systemd/system/berth.service 2> /dev/null; then
    echo "unit is up to date"
else
    run install -m 0644 "$repo/systemd/berth.service" /etc/systemd/system/berth.service
    run systemctl daemon-reload
fi
run berth check -c "$etc/berth.toml"
run systemctl enable --now berth

say "waiting for /health"
if ((!dry_run)); then
    listen=$(sed -n 's/^health_listen *= *"\(.*\)"/\1/p' "$etc/berth.toml")
    listen=${listen:-127.0.0.1:7878}
    for _ in $(seq 1 120); do
        if curl -fsS "http://$listen/health" > /dev/null 2>&1; then
            say "berth is up and every service is healthy"
            break
        fi
        sleep 2
    done
    curl -fsS "http://$listen/health" > /dev/null || { echo "not healthy yet: berth status; journalctl -u berth" >&2; exit 1; }
fi

cat <<'NEXT'

Next steps:
  berth status                  services, health, backups
  journalctl -u berth -f        berth's log
  berth logs bot -n 50          the bot's log
  berth backup                  a backup now (scheduled daily at 03:30 by default)
  edit /etc/berth/berth.toml, then: systemctl reload berth
NEXT
