//! The steps of an operation a client waits for (deploy, rollback, backup, restore), as
//! they happen: the operation's task says them with [`say`], and the admin socket streams
//! them to the client that asked. The sink is task-local, so operations take no extra
//! parameter and say nothing when nobody asked; sending never waits (a slow or vanished
//! client loses lines, never the operation). Every detail is scrubbed of secrets.

use std::future::Future;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// One step: what (`pull`, `backup`, `migrate`, `stop`, `start`, `health`...) and how far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub step: String,
    pub detail: String,
}

tokio::task_local! {
    static SINK: mpsc::Sender<Step>;
}

/// Says a step to whoever waits for this operation, if anyone does.
pub fn say(step: &str, detail: impl Into<String>) {
    let _ = SINK.try_with(|sink| {
        let _ = sink.try_send(Step {
            step: step.to_string(),
            detail: crate::redact::scrub(&detail.into()),
        });
    });
}

/// Runs `op` with its steps going to `sink`.
pub async fn scoped<F: Future>(sink: mpsc::Sender<Step>, op: F) -> F::Output {
    SINK.scope(sink, op).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_reach_the_sink_of_their_own_task_only() {
        let (tx, mut rx) = mpsc::channel(4);
        say("outside", "nobody listens");
        scoped(tx, async {
            say("backup", "1 MiB");
            // Full: dropped, never waited for.
            for i in 0..10 {
                say("health", format!("waiting {i} s"));
            }
        })
        .await;
        let first = rx.recv().await.expect("a step");
        assert_eq!(first.step, "backup");
        let mut n = 1;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 4, "the channel's size, the rest dropped");
    }
}
