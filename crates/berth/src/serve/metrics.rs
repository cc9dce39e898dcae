//! `/metrics`: the snapshot in Prometheus text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use berth_core::snapshot::{Snapshot, State};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn service(name: &str) -> Labels {
    vec![("service".to_string(), name.to_string())]
}

fn unix_time(t: Option<std::time::SystemTime>) -> FloatGauge {
    let g = FloatGauge::default();
    if let Some(t) = t {
        g.set(
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
    }
    g
}

pub fn render(s: &Snapshot) -> String {
    let mut reg = Registry::default();
    let up = Family::<Labels, Gauge>::default();
    let healthy = Family::<Labels, Gauge>::default();
    let restarts = Family::<Labels, Counter>::default();
    let crashloop = Family::<Labels, Gauge>::default();
    let oom = Family::<Labels, Counter>::default();
    let probe = Family::<Labels, FloatGauge>::default();
    for (name, st) in &s.services {
        let l = service(name);
        up.get_or_create(&l)
            .set(i64::from(st.state == State::Running));
        healthy.get_or_create(&l).set(i64::from(st.is_healthy()));
        restarts.get_or_create(&l).inc_by(u64::from(st.restarts));
        crashloop.get_or_create(&l).set(i64::from(st.crashloop));
        oom.get_or_create(&l).inc_by(u64::from(st.oom_kills));
        if let Some(p) = &st.probe {
            probe.get_or_create(&l).set(p.latency_ms / 1000.0);
        }
    }
    reg.register(
        "berth_service_up",
        "Whether the service's container is running",
        up,
    );
    reg.register(
        "berth_service_healthy",
        "Whether the service passes its probe",
        healthy,
    );
    reg.register(
        "berth_service_restarts",
        "Restarts berth made of the service",
        restarts,
    );
    reg.register(
        "berth_service_crashloop",
        "Whether the service is crash-looping",
        crashloop,
    );
    reg.register(
        "berth_service_oom_kills",
        "Out-of-memory kills of the service's container",
        oom,
    );
    reg.register(
        "berth_probe_duration_seconds",
        "Duration of the service's last probe",
        probe,
    );
    reg.register(
        "berth_backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup (0: none yet)",
        unix_time(s.backup.last_ok_at),
    );
    if let Some(o) = &s.backup.offsite {
        reg.register(
            "berth_offsite_last_success_timestamp_seconds",
            "Unix time of the last successful off-site pass (0: none yet)",
            unix_time(o.last_ok_at),
        );
        let failing = Gauge::<i64>::default();
        failing.set(i64::from(o.last_error.is_some()));
        reg.register(
            "berth_offsite_failing",
            "Whether the last off-site pass failed",
            failing,
        );
        let pending = Gauge::<i64>::default();
        pending.set(o.pending as i64);
        reg.register(
            "berth_offsite_pending",
            "Local backups not yet copied off-site",
            pending,
        );
    }
    let sent = Family::<Labels, Counter>::default();
    let failures = Family::<Labels, Counter>::default();
    let channel_ok = Family::<Labels, Gauge>::default();
    for (name, c) in &s.alerts {
        let l = vec![("channel".to_string(), name.clone())];
        sent.get_or_create(&l).inc_by(c.sent);
        failures.get_or_create(&l).inc_by(c.failures);
        channel_ok.get_or_create(&l).set(i64::from(c.ok));
    }
    reg.register("berth_alerts_sent", "Alerts delivered, by channel", sent);
    reg.register(
        "berth_alert_delivery_failures",
        "Failed alert delivery attempts, by channel",
        failures,
    );
    reg.register(
        "berth_alert_channel_ok",
        "Whether the channel's last delivery went through",
        channel_ok,
    );
    let size = Gauge::<i64>::default();
    size.set(s.backup.last_size_bytes.unwrap_or(0) as i64);
    reg.register(
        "berth_backup_size_bytes",
        "Size of the last successful backup",
        size,
    );
    let generation = Gauge::<i64>::default();
    generation.set(s.config.generation as i64);
    reg.register(
        "berth_config_generation",
        "Config generation (1 at start, +1 per accepted reload)",
        generation,
    );
    let engine = Gauge::<i64>::default();
    engine.set(i64::from(s.engine_connected));
    reg.register(
        "berth_engine_connected",
        "Whether berth can reach the container engine",
        engine,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}
