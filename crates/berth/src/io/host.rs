//! Host figures for /health: disk of the state/backup filesystem, memory, load.

use std::path::Path;

use berth_core::snapshot::Resources;

pub fn sample(dir: &Path) -> Resources {
    let mut r = Resources::default();
    if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
        let frag = st.fragment_size();
        let total = st.blocks() * frag;
        let free = st.blocks_available() * frag;
        let used = total.saturating_sub(st.blocks_free() * frag);
        r.disk_free_bytes = free;
        // Used as df counts it: of the space non-root users could have.
        let usable = used + free;
        r.disk_used_ratio = if usable > 0 {
            ((used as f64 / usable as f64) * 1000.0).round() / 1000.0
        } else {
            0.0
        };
    }
    if let Ok(m) = std::fs::read_to_string("/proc/meminfo") {
        r.mem_available_bytes = m
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        r.load1 = l
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
    }
    r
}
