#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu droplet for berth: Docker from the distribution, a
# firewall that lets in SSH only (on the port sshd really uses), /etc/berth with config
# and generated secrets, the berth binary and its systemd unit; then starts berth and
# waits for /health.
# Idempotent: running it again changes nothing and never overwrites a secret it finds.
# Every input is checked before anything on the machine changes.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: setup-droplet.sh [--dry-run] [--binary PATH] [--config PATH]
                        [--token-file FILE|-] [--ssh-port PORT]

  --dry-run          print what would be done, change nothing
  --binary PATH      the berth binary to install (default: ./berth or target/release/berth)
  --config PATH      the berth.toml to install if /etc/berth/berth.toml does not exist
                     (default: config/berth.toml next to this script's repository)
  --token-file FILE  read the Telegram bot token from FILE (- for standard input);
                     without it the token comes from $TELEGRAM_BOT_TOKEN or is asked
                     for without echo (only when /etc/berth/berth.env lacks one)
  --ssh-port PORT    also let PORT in; the ports sshd listens on (sshd -T) always are
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dry_run=0
binary=""
config="$repo/config/berth.toml"
token_file=""
token="${TELEGRAM_BOT_TOKEN:-}"
extra_ssh_port=""
etc=/etc/berth
env_file="$etc/berth.env"

die() { printf 'setup-droplet.sh: %s\n' "$*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --binary) binary="${2:?--binary needs a path}"; shift ;;
        --config) config="${2:?--config needs a path}"; shift ;;
        --token-file) token_file="${2:?--token-file needs a file or -}"; shift ;;
        --token | --token=*)
            die "--token would put the token in ps and the shell's history: use --token-file FILE, --token-file - (standard input), or answer the prompt" ;;
        --ssh-port) extra_ssh_port="${2:?--ssh-port needs a port}"; shift ;;
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

# --- inputs, all checked before anything changes -------------------------------------

if [ -n "$extra_ssh_port" ]; then
    if ! [[ $extra_ssh_port =~ ^[0-9]{1,5}$ ]] || ((10#$extra_ssh_port < 1 || 10#$extra_ssh_port > 65535)); then
        die "--ssh-port: $extra_ssh_port is not a port (1-65535)"
    fi
    extra_ssh_port=$((10#$extra_ssh_port))
fi

if [ -z "$binary" ]; then
    for b in ./berth "$repo/target/release/berth" "$repo/target/debug/berth"; do
        if [ -x "$b" ]; then binary=$b; break; fi
    done
fi
[ -n "$binary" ] || { echo "no berth binary found: build it (cargo build --release) or pass --binary" >&2; exit 1; }
[ -e "$etc/berth.toml" ] || [ -r "$config" ] || die "--config: cannot read $config"

# The value of KEY in an env file (last one wins, as berth reads it), quotes removed.
env_value() { # FILE KEY
    local line value=""
    [ -r "$1" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%$'\r'}
        if [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?$2[[:space:]]*=(.*)$ ]]; then
            value=${BASH_REMATCH[2]}
            value=${value#"${value%%[![:space:]]*}"}
            value=${value%"${value##*[![:space:]]}"}
            if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
                value=${BASH_REMATCH[1]}
            fi
        fi
    done < "$1"
    printf '%s' "$value"
}

# Telegram's tokens are "<bot id>:<secret>", the secret in the URL-safe base64 alphabet.
# Anything else would break the env file or the bot, so it is refused, never "fixed".
# The token itself is never printed.
check_token() {
    local t=$1
    [ -n "$t" ] || die "the bot token is empty"
    [[ $t =~ ^[0-9]{1,20}:[A-Za-z0-9_-]{20,100}$ ]] && return 0
    [[ $t == *:* ]] || die "the bot token has no ':' (it looks like 123456789:AAE...; from @BotFather)"
    [[ ${t%%:*} =~ ^[0-9]{1,20}$ ]] || die "the bot token must start with the bot's numeric id and ':'"
    [[ ${t#*:} =~ ^[A-Za-z0-9_-]*$ ]] \
        || die "the bot token has characters other than A-Z a-z 0-9 _ - after the ':' (a space, quote, \\, | or & that crept in?)"
    t=${t#*:}
    die "the bot token's part after ':' has ${#t} characters: a bot token's has 20 to 100 (35 today)"
}

# The secrets berth.env must hold: the token is asked for, the rest are generated.
generated=(POSTGRES_PASSWORD REDIS_PASSWORD)
need_token=0
[ -n "$(env_value "$env_file" TELEGRAM_BOT_TOKEN)" ] || need_token=1
if ((need_token)); then
    if [ -n "$token_file" ]; then
        if [ "$token_file" = - ]; then
            token=$(cat)
        else
            [ -r "$token_file" ] || die "--token-file: cannot read $token_file"
            token=$(cat -- "$token_file")
        fi
        # A file made with echo ends in a newline (or CR LF); nothing else is trimmed.
        token=${token%$'\n'}
        token=${token%$'\r'}
    elif [ -z "$token" ] && ((!dry_run)); then
        [ -t 0 ] || die "no bot token: pass --token-file FILE (or - with the token on standard input)"
        read -r -s -p "Telegram bot token (from @BotFather; not shown): " token
        echo
    fi
    if ((!dry_run)) || [ -n "$token" ]; then
        check_token "$token"
    fi
fi

# The TCP ports sshd accepts connections on: its effective config first, then its
# listening sockets. The firewall must never be enabled without them.
# Every source is asked, and none may stop the others (each pipeline ends in `|| true`:
# under `set -e` a failing `sshd -T` would otherwise end the whole list).
sshd_ports() {
    local sshd
    sshd=$(command -v sshd || echo /usr/sbin/sshd)
    if [ -x "$sshd" ]; then
        "$sshd" -T 2> /dev/null | awk '$1 == "port" { print $2 }' || true
    fi
    if command -v ss > /dev/null; then
        ss -Htlnp 2> /dev/null | awk '/"sshd"/ { n = split($4, a, ":"); print a[n] }' || true
    fi
    # Socket-activated sshd (Ubuntu 22.10+): the socket unit, when it is the one in use,
    # holds the port.
    if command -v systemctl > /dev/null && systemctl is-active --quiet ssh.socket 2> /dev/null; then
        systemctl show -p Listen --value ssh.socket 2> /dev/null \
            | grep -oE '[0-9]+ \(Stream\)' | grep -oE '^[0-9]+' || true
    fi
    # The session this script runs in, if it came over SSH: its server port.
    if [ -n "${SSH_CONNECTION:-}" ]; then
        awk '{ print $4 }' <<< "$SSH_CONNECTION" || true
    fi
}
mapfile -t ssh_ports < <({ sshd_ports; [ -z "$extra_ssh_port" ] || echo "$extra_ssh_port"; } | grep -E '^[0-9]+$' | sort -un || true)
if ((${#ssh_ports[@]} == 0)); then
    if ((dry_run)); then
        echo "warning: could not find the port SSH listens on (sshd -T, ss, ssh.socket, SSH_CONNECTION); a real run stops here without --ssh-port" >&2
        ssh_ports=(22)
    else
        die "could not find the port SSH listens on (sshd -T, ss, ssh.socket, SSH_CONNECTION): pass --ssh-port PORT, or the firewall could lock you out"
    fi
fi

# --- the machine -----------------------------------------------------------------------

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

say "firewall: deny incoming except SSH (${ssh_ports[*]/%//tcp})"
missing=()
status=$(ufw status 2> /dev/null || true)
for p in "${ssh_ports[@]}"; do
    grep -qE "^$p/tcp +ALLOW" <<< "$status" || missing+=("$p")
done
if grep -q "Status: active" <<< "$status" && ((${#missing[@]} == 0)); then
    echo "already active"
else
    # The SSH ports go in before the firewall comes up: never a moment without them.
    for p in "${missing[@]}"; do
        run ufw allow "$p/tcp"
    done
    if ! grep -q "Status: active" <<< "$status"; then
        run ufw default deny incoming
        run ufw default allow outgoing
        run ufw --force enable
    fi
fi
echo "note: ports Docker publishes bypass ufw; berth's config publishes none by default (berth check warns when one is)"

say "$etc: config and secrets"
run install -d -m 0700 "$etc"
if [ -e "$etc/berth.toml" ]; then
    echo "$etc/berth.toml exists: kept"
    if ! grep -q 'REDIS_PASSWORD' "$etc/berth.toml"; then
        echo "warning: $etc/berth.toml gives Redis no password (any local user can reach it over the Docker network): see config/berth.toml's [services.redis] and deployment/redis/redis.conf, which use REDIS_PASSWORD from $env_file" >&2
    fi
else
    run install -m 0600 "$config" "$etc/berth.toml"
fi
if [ -e "$etc/redis.conf" ]; then
    echo "$etc/redis.conf exists: kept"
else
    run install -m 0644 "$repo/deployment/redis/redis.conf" "$etc/redis.conf"
fi

# berth.env: the existing file's lines are kept; empty or missing secrets are filled in.
# It is written whole to a temporary file next to it and renamed over, so a failure at
# any point leaves the old file (or none), never half of one.
declare -A fill=()
((need_token)) && fill[TELEGRAM_BOT_TOKEN]=$token
for k in "${generated[@]}"; do
    [ -n "$(env_value "$env_file" "$k")" ] || fill[$k]=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
done
render_env() { # SOURCE: prints SOURCE with the secrets in fill set
    local line key done_keys=" "
    while IFS= read -r line || [ -n "$line" ]; do
        if [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*= ]] \
            && [ -n "${fill[${BASH_REMATCH[2]}]+set}" ]; then
            key=${BASH_REMATCH[2]}
            # Only the last line of a key counts; earlier ones are left as they are.
            if [ -z "$(env_value <(printf '%s\n' "$line") "$key")" ]; then
                printf '%s=%s\n' "$key" "${fill[$key]}"
                done_keys+="$key "
                continue
            fi
        fi
        printf '%s\n' "$line"
    done < "$1"
    for key in "${!fill[@]}"; do
        [[ $done_keys == *" $key "* ]] || printf '%s=%s\n' "$key" "${fill[$key]}"
    done
}
if ((${#fill[@]} == 0)); then
    echo "$env_file exists: secrets kept"
elif ((dry_run)); then
    echo "[dry-run] write $env_file (0600) with: ${!fill[*]}"
else
    source_env="$repo/deployment/.env.production.template"
    [ -e "$env_file" ] && source_env=$env_file
    tmp=$(mktemp "$etc/.berth.env.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    render_env "$source_env" > "$tmp"
    chmod 0600 "$tmp"
    sync "$tmp"
    mv -f "$tmp" "$env_file"
    trap - EXIT
    echo "$env_file: wrote ${!fill[*]}"
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
