//! Client-side encryption of off-site copies (`[backup.offsite] encryption_key`): the age
//! format with an X25519 key, so `age -d -i KEYFILE` opens a copy without berth too.
//!
//! Both directions stream through a bounded channel between the async side (the HTTP
//! body) and a thread of tokio's blocking pool (file reads, the cipher): no plaintext
//! temp file, memory flat. An S3 PUT needs its length up front, and an age file's length
//! follows from the plaintext's ([`encrypted_len`]), so nothing is encrypted twice.

use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use age::secrecy::ExposeSecret as _;
use anyhow::{Context as _, bail};
use tokio::sync::mpsc;

/// What travels between the blocking side and the HTTP body: chunks, or why it stopped.
pub type Chunk = io::Result<Vec<u8>>;

/// Chunks queued between the two sides (each up to [`SEND_AT`] bytes).
const QUEUED: usize = 8;
/// The writer hands on what it has once it holds this much.
const SEND_AT: usize = 256 * 1024;
/// age's STREAM: 64 KiB of plaintext per chunk, each sealed with a 16-byte tag.
const CHUNK: u64 = 64 * 1024;
const TAG: u64 = 16;

/// An age X25519 identity (`AGE-SECRET-KEY-1…`). Its `Debug` prints the public side only.
#[derive(Clone)]
pub struct Key(age::x25519::Identity);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.recipient())
    }
}

impl Key {
    /// The key of `backup.offsite.encryption_key` (validated by the config already; the
    /// error never quotes the value).
    pub fn parse(secret: &str) -> anyhow::Result<Key> {
        secret.trim().parse().map(Key).map_err(|why| {
            anyhow::anyhow!("backup.offsite.encryption_key: not an age secret key ({why})")
        })
    }

    /// A new key: (secret `AGE-SECRET-KEY-1…`, public `age1…`).
    pub fn generate() -> (String, String) {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        (id.to_string().expose_secret().to_string(), public)
    }

    /// The public side (`age1…`): what a copy's metadata names, not a secret.
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }
}

/// The size of an age payload (after header and nonce) for `len` plaintext bytes: one
/// tagged chunk per 64 KiB; the last chunk may be full, and is empty only when the whole
/// plaintext is.
pub fn payload_len(len: u64) -> u64 {
    len + TAG * len.div_ceil(CHUNK).max(1)
}

/// Hands what is written to the channel, [`SEND_AT`] bytes at a time; counts it all.
struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    buf: Vec<u8>,
    written: Arc<AtomicU64>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SEND_AT));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        self.written.fetch_add(b.len() as u64, Ordering::Relaxed);
        if self.buf.len() >= SEND_AT {
            self.send()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Encrypts the `len` bytes of `file` to `key` as they are sent. Returns the exact length
/// of the result and its chunks; a failure arrives as an `Err` chunk (so an upload fails
/// rather than completes short). The work runs on the blocking pool and stops when the
/// receiver is dropped.
pub fn encrypt(
    file: std::fs::File,
    len: u64,
    key: &Key,
) -> anyhow::Result<(u64, mpsc::Receiver<Chunk>)> {
    let (tx, rx) = mpsc::channel(QUEUED);
    let written = Arc::new(AtomicU64::new(0));
    let recipient = key.0.to_public();
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .context("setting up the encryption")?;
    // Header and nonce only: they stay in the writer's buffer (no send, so no blocking
    // here on the async side).
    let stream = enc
        .wrap_output(ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(SEND_AT),
            written: written.clone(),
        })
        .context("writing the age header")?;
    let total = written.load(Ordering::Relaxed) + payload_len(len);
    tokio::task::spawn_blocking(move || {
        let run = || -> io::Result<()> {
            let mut stream = stream;
            let copied = io::copy(&mut file.take(len), &mut stream)?;
            if copied != len {
                return Err(io::Error::other(format!(
                    "the file shrank while it was read ({copied} of {len} bytes)"
                )));
            }
            let mut out = stream.finish()?;
            out.flush()?;
            let n = written.load(Ordering::Relaxed);
            if n != total {
                return Err(io::Error::other(format!(
                    "age wrote {n} bytes where {total} were announced"
                )));
            }
            Ok(())
        };
        if let Err(e) = run() {
            // The receiver may be gone already (the request failed first).
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok((total, rx))
}

/// A blocking reader over chunks that arrive from a download.
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Chunk>) -> Self {
        ChannelReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => {
                    self.cur = chunk?;
                    self.pos = 0;
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The plaintext of an age file read from `input`, decrypted with `key` (blocking).
/// `recipient` is what the copy's metadata says it was encrypted to, for the error when
/// the key is another one.
pub fn decrypt<'a, R: Read + 'a>(
    input: R,
    key: &Key,
    recipient: Option<&str>,
) -> anyhow::Result<Box<dyn Read + 'a>> {
    let d = age::Decryptor::new_buffered(BufReader::new(input))
        .map_err(|e| anyhow::anyhow!("not an age file: {e}"))?;
    match d.decrypt(std::iter::once(&key.0 as &dyn age::Identity)) {
        Ok(r) => Ok(Box::new(r)),
        Err(age::DecryptError::NoMatchingKeys) => bail!(
            "this copy was encrypted to {}, and the configured encryption_key is {}: set the key it was made with",
            recipient.unwrap_or("another key"),
            key.recipient()
        ),
        Err(e) => bail!("decrypting: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn encrypt_bytes(plain: &[u8], key: &Key) -> (u64, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.dump");
        std::fs::write(&path, plain).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let (total, mut rx) = encrypt(f, plain.len() as u64, key).expect("encrypt");
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.extend(c.expect("chunk"));
        }
        (total, out)
    }

    fn decrypt_bytes(cipher: Vec<u8>, key: &Key) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        decrypt(&cipher[..], key, Some("age1theotherone"))?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Issue 16, item 7: the announced length is the length (chunk edges included), the
    /// copy reads back byte for byte, and nothing of the plaintext shows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encryption_streams_with_its_exact_length_and_round_trips() {
        let (secret, public) = Key::generate();
        let key = Key::parse(&secret).expect("key");
        assert_eq!(key.recipient(), public);
        assert!(!format!("{key:?}").contains(&secret));
        for len in [0usize, 1, 65_535, 65_536, 65_537, 3 * 65_536, 700_001] {
            let mut plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            if len >= 5 {
                plain[..5].copy_from_slice(b"PGDMP");
            }
            let (total, cipher) = encrypt_bytes(&plain, &key).await;
            assert_eq!(cipher.len() as u64, total, "{len} bytes");
            assert!(cipher.starts_with(b"age-encryption.org/v1\n"), "{len}");
            assert!(
                !cipher.windows(5).any(|w| w == b"PGDMP"),
                "{len}: plaintext in the copy"
            );
            assert_eq!(
                decrypt_bytes(cipher, &key).expect("decrypt"),
                plain,
                "{len}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_key_or_a_damaged_copy_is_an_error_that_says_so() {
        let key = Key::parse(&Key::generate().0).expect("key");
        let other = Key::parse(&Key::generate().0).expect("key");
        let plain = vec![7u8; 100_000];
        let (_, cipher) = encrypt_bytes(&plain, &key).await;
        let e = decrypt_bytes(cipher.clone(), &other).expect_err("wrong key");
        let e = format!("{e:#}");
        assert!(e.contains("encrypted to age1theotherone"), "{e}");
        assert!(e.contains(&other.recipient()), "{e}");

        let mut cut = cipher.clone();
        cut.truncate(cipher.len() - 100);
        assert!(decrypt_bytes(cut, &key).is_err(), "a truncated copy");
        let mut flipped = cipher;
        let n = flipped.len();
        flipped[n - 50] ^= 1;
        assert!(decrypt_bytes(flipped, &key).is_err(), "a changed byte");
        let e = decrypt_bytes(b"PGDMP plain dump".to_vec(), &key).expect_err("plain");
        assert!(format!("{e:#}").contains("not an age file"), "{e:#}");
    }

    /// A key `berth offsite keygen` prints is one the config accepts, and the redaction
    /// list holds it.
    #[test]
    fn generated_keys_pass_validation_and_are_redacted() {
        let (secret, _) = Key::generate();
        let src = r#"
[supervisor]
project = "p"
health_listen = "127.0.0.1:7878"
state_dir = "/var/lib/berth"

[services.postgres]
image = "postgres:16"

[backup]
service = "postgres"

[backup.offsite]
endpoint = "https://fra1.digitaloceanspaces.com"
bucket = "b"
access_key = "${K}"
secret_key = "${K}"
encryption_key = "${BACKUP_ENCRYPTION_KEY}"
"#;
        let lookup = |k: &str| match k {
            "K" => Some("access-1234".to_string()),
            "BACKUP_ENCRYPTION_KEY" => Some(secret.clone()),
            _ => None,
        };
        let cfg =
            berth_config::parse_str(std::path::Path::new("/etc/berth/berth.toml"), src, &lookup)
                .expect("config");
        let k = cfg
            .backup
            .as_ref()
            .and_then(|b| b.offsite.as_ref())
            .and_then(|o| o.encryption_key.as_ref())
            .expect("key");
        assert_eq!(k.value, secret);
        assert!(Key::parse(&k.value).is_ok());
        let secrets = berth_core::secrets::secrets(&cfg);
        assert!(secrets.contains(&secret), "the key is scrubbed");
        assert_eq!(
            berth_core::secrets::scrub(&format!("key={secret}"), &secrets),
            "key=***"
        );
    }
}
