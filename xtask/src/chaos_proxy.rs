//! A unix-socket proxy in front of the Docker socket: berth talks to the engine through it,
//! and the chaos run cuts it (every connection closed, new ones refused) and restores it.
//! This stands in for a restart of dockerd, which the shared host's engine must not get.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One proxied connection: how many of its two directions have ended, and both ends.
type Conn = (Arc<AtomicUsize>, UnixStream, UnixStream);

pub struct Proxy {
    pub path: PathBuf,
    /// Both ends of every connection, with how many of its two directions have ended.
    conns: Arc<Mutex<Vec<Conn>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(path: PathBuf) -> anyhow::Result<Self> {
        let mut p = Proxy {
            path,
            conns: Default::default(),
            stop: Default::default(),
            thread: None,
        };
        p.restore()?;
        Ok(p)
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Closes the socket and every connection through it.
    pub fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        if let Ok(mut conns) = self.conns.lock() {
            for (_, c, s) in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Listens again.
    pub fn restore(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = stop.clone();
        let conns = self.conns.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = UnixStream::connect("/var/run/docker.sock") else {
                    continue;
                };
                let ended = Arc::new(AtomicUsize::new(0));
                let pipe = |mut a: UnixStream, mut b: UnixStream| {
                    let ended = ended.clone();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                        ended.fetch_add(1, Ordering::SeqCst);
                    });
                };
                if let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) {
                    if let Ok(mut all) = conns.lock() {
                        // Connections that ended leave the list (and close their copies).
                        all.retain(|(n, _, _)| n.load(Ordering::SeqCst) < 2);
                        all.push((ended.clone(), c3, s3));
                    }
                    pipe(client, s2);
                    pipe(server, c2);
                }
            }
        }));
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
