//! `berth ssh-command`: the one command an `authorized_keys` forced command lets a CI
//! key run, parsed from `SSH_ORIGINAL_COMMAND` without a shell. Only `deploy`,
//! `rollback`, `status` and `logs` with arguments of a known shape pass; anything else
//! (shell syntax, other subcommands, options that would change the config or follow
//! output forever) is refused before anything runs.

use std::fmt;

/// What the key may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Deploy {
        service: String,
        image: String,
        backup: bool,
    },
    Rollback {
        service: String,
    },
    Status {
        json: bool,
    },
    Logs {
        service: String,
        lines: u64,
    },
}

/// Why a command was refused: one line, safe to show (it quotes no input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Lines `logs` shows when not told, and the most it shows.
const LOG_LINES: u64 = 100;
const MAX_LOG_LINES: u64 = 10_000;
const MAX_COMMAND: usize = 512;

/// Parses `SSH_ORIGINAL_COMMAND` (None: an interactive login, refused).
pub fn parse(command: Option<&str>) -> Result<Allowed, Refused> {
    let Some(command) = command else {
        return Err(Refused(
            "no command: this key runs deploy, rollback, status or logs only",
        ));
    };
    if command.len() > MAX_COMMAND {
        return Err(Refused("the command is too long"));
    }
    // Words are split on spaces only: no quoting, globbing, variables or separators
    // exist here, so anything that looks like them is refused rather than guessed at.
    if !command
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" ._:/@+=-".contains(&b))
    {
        return Err(Refused(
            "only letters, digits, spaces and . _ : / @ + = - are allowed (no shell syntax)",
        ));
    }
    let mut words: Vec<&str> = command.split(' ').filter(|w| !w.is_empty()).collect();
    if words.first() == Some(&"berth") {
        words.remove(0);
    }
    match words.as_slice() {
        ["deploy", rest @ ..] => {
            let (flags, args) = split_flags(rest);
            let backup = match flags.as_slice() {
                [] => true,
                ["--no-backup"] => false,
                _ => return Err(Refused("deploy takes only --no-backup")),
            };
            let [service, image] = args.as_slice() else {
                return Err(Refused("usage: deploy SERVICE IMAGE [--no-backup]"));
            };
            Ok(Allowed::Deploy {
                service: service_name(service)?,
                image: image_ref(image)?,
                backup,
            })
        }
        ["rollback", rest @ ..] => {
            let (flags, args) = split_flags(rest);
            if !flags.is_empty() {
                return Err(Refused(
                    "rollback takes no options here (--restore-db needs a person)",
                ));
            }
            let [service] = args.as_slice() else {
                return Err(Refused("usage: rollback SERVICE"));
            };
            Ok(Allowed::Rollback {
                service: service_name(service)?,
            })
        }
        ["status"] => Ok(Allowed::Status { json: false }),
        ["status", "--json"] => Ok(Allowed::Status { json: true }),
        ["status", ..] => Err(Refused("status takes only --json")),
        ["logs", service] => Ok(Allowed::Logs {
            service: service_name(service)?,
            lines: LOG_LINES,
        }),
        ["logs", service, "-n" | "--lines", n] => Ok(Allowed::Logs {
            service: service_name(service)?,
            lines: match n.parse::<u64>() {
                Ok(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
                _ => return Err(Refused("logs -n takes a number from 1 to 10000")),
            },
        }),
        ["logs", ..] => Err(Refused("usage: logs SERVICE [-n LINES]")),
        [] => Err(Refused(
            "no command: this key runs deploy, rollback, status or logs only",
        )),
        _ => Err(Refused(
            "this key runs deploy, rollback, status or logs only",
        )),
    }
}

fn split_flags<'a>(words: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    words.iter().partition(|w| w.starts_with('-'))
}

/// A service name as the config allows them.
fn service_name(s: &str) -> Result<String, Refused> {
    let ok = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(Refused("not a service name"))
    }
}

/// An image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, lowercase path.
fn image_ref(s: &str) -> Result<String, Refused> {
    const BAD: Refused = Refused("not an image reference (registry/name:tag)");
    // An image id (or its prefix) would name whatever image the host has.
    let bare = s.split([':', '@']).next().unwrap_or(s);
    if s.starts_with("sha256:") || (bare.len() >= 12 && bare.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Refused(
            "an image id is not allowed here: name the image (registry/name:tag)",
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let hex = d.strip_prefix("sha256:").ok_or(BAD)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BAD);
        }
    }
    // A tag is after the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(BAD);
        }
    }
    let mut parts = name.split('/').peekable();
    let mut first = true;
    while let Some(p) = parts.next() {
        // The first part may be a registry host (with a port); the rest are path parts.
        let registry =
            first && parts.peek().is_some() && (p.contains(['.', ':']) || p == "localhost");
        first = false;
        let ok = if registry {
            let (host, port) = p.split_once(':').unwrap_or((p, "0"));
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !host.starts_with(['.', '-'])
                && port.parse::<u16>().is_ok()
        } else {
            !p.is_empty()
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if !ok {
            return Err(BAD);
        }
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(service: &str, image: &str, backup: bool) -> Allowed {
        Allowed::Deploy {
            service: service.into(),
            image: image.into(),
            backup,
        }
    }

    #[test]
    fn allowed_commands() {
        let cases: Vec<(&str, Allowed)> = vec![
            (
                "deploy bot ghcr.io/me/bot:1.5.0",
                deploy("bot", "ghcr.io/me/bot:1.5.0", true),
            ),
            (
                "berth deploy bot ghcr.io/me/bot:1.5.0",
                deploy("bot", "ghcr.io/me/bot:1.5.0", true),
            ),
            (
                "deploy bot registry.digitalocean.com/team/bot:v2 --no-backup",
                deploy("bot", "registry.digitalocean.com/team/bot:v2", false),
            ),
            (
                "deploy bot localhost:5000/bot",
                deploy("bot", "localhost:5000/bot", true),
            ),
            (
                "deploy bot ghcr.io/me/bot@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                deploy(
                    "bot",
                    "ghcr.io/me/bot@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                    true,
                ),
            ),
            ("  deploy   bot   bot:2  ", deploy("bot", "bot:2", true)),
            (
                "rollback bot",
                Allowed::Rollback {
                    service: "bot".into(),
                },
            ),
            ("status", Allowed::Status { json: false }),
            ("status --json", Allowed::Status { json: true }),
            (
                "logs bot",
                Allowed::Logs {
                    service: "bot".into(),
                    lines: 100,
                },
            ),
            (
                "logs bot -n 50",
                Allowed::Logs {
                    service: "bot".into(),
                    lines: 50,
                },
            ),
        ];
        for (cmd, want) in cases {
            assert_eq!(parse(Some(cmd)), Ok(want), "{cmd:?}");
        }
    }

    /// Hostile SSH_ORIGINAL_COMMAND values: each refused, with no part of it echoed.
    #[test]
    fn everything_else_is_refused() {
        let long = format!("deploy bot {}", "a".repeat(600));
        let cases: Vec<Option<&str>> = vec![
            None,
            Some(""),
            Some("   "),
            Some("deploy bot bot:2; rm -rf /"),
            Some("deploy bot bot:2 && reboot"),
            Some("deploy bot bot:2 || true"),
            Some("deploy bot $(reboot)"),
            Some("deploy bot `reboot`"),
            Some("deploy bot bot:2\nreboot"),
            Some("deploy bot bot:2\rreboot"),
            Some("deploy\tbot\tbot:2"),
            Some("deploy bot bot:2 | sh"),
            Some("deploy bot bot:2 > /etc/passwd"),
            Some("deploy bot 'bot:2'"),
            Some("deploy bot \"bot:2\""),
            Some("deploy bot ${IMAGE}"),
            Some("deploy bot ~/bot"),
            Some("deploy bot *"),
            Some("deploy --config=/etc/shadow bot bot:2"),
            Some("deploy bot bot:2 --config=/tmp/evil.toml"),
            Some("deploy bot bot:2 -c /tmp/evil.toml"),
            Some("deploy -c=/tmp/x bot bot:2"),
            Some("status --config=/etc/shadow"),
            Some("status -c /tmp/evil.toml"),
            Some("logs bot -f"),
            Some("logs bot --follow"),
            Some("logs bot -n 99999999"),
            Some("logs bot -n -5"),
            Some("logs --config=/etc/shadow bot"),
            Some("logs ../../etc bot"),
            Some("rollback bot --restore-db --yes"),
            Some("rollback bot extra"),
            Some("deploy bot"),
            Some("deploy Bot bot:2"),
            Some("deploy -bot bot:2"),
            Some("deploy bot -bot:2"),
            Some("deploy bot Bot:2"),
            Some("deploy bot bot:-2"),
            Some("deploy bot bot:"),
            Some("deploy bot //bot"),
            Some("deploy bot bot@sha256:xyz"),
            Some(
                "deploy bot sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            Some("deploy bot 0123456789ab"),
            Some("restore latest --yes"),
            Some("backup"),
            Some("rotate-secret POSTGRES_PASSWORD"),
            Some("run"),
            Some("stop bot"),
            Some("import-compose /etc/shadow -o /root/.ssh/authorized_keys"),
            Some("sh"),
            Some("bash -c id"),
            Some("berth"),
            Some("berth berth status"),
            Some("scp -t /tmp"),
            Some("rsync --server . /"),
            Some(long.as_str()),
        ];
        for cmd in cases {
            let r = parse(cmd);
            assert!(r.is_err(), "{cmd:?} passed: {r:?}");
        }
    }
}
