//! The doorbell's PostgreSQL adapter (see `control::doorbell`): rings go out with `NOTIFY` on
//! one channel, from one task that owns its connection (so one process's rings arrive in the
//! order it rang), and come in through a `LISTEN`ing task that hands them to control. Each
//! ring names the process that rang, so a process ignores its own.
//!
//! A ring is a doorbell, not the state: when the listener loses its connection (it reconnects
//! by itself) rings sent meanwhile are lost, so control resynchronizes after every reconnection,
//! and every [`RESYNC_EVERY`] in any case (a ring that could not be sent).
#![allow(clippy::disallowed_methods)] // the runtime owns the tasks and the clock

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use crate::control::{Control, Doorbell, Ring};

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "patchbay_doorbell";

/// How often a process re-reads what its devices depend on, rung or not.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How many times a ring that cannot be sent is tried again (a second apart) before it is left
/// to the periodic resync.
const SEND_TRIES: u32 = 10;

/// The sending side, as control holds it.
struct PgDoorbell {
    rings: mpsc::UnboundedSender<Ring>,
}

impl Doorbell for PgDoorbell {
    fn ring(&self, ring: Ring) {
        let _ = self.rings.send(ring);
    }
}

/// Attaches a PostgreSQL doorbell to `control` for the database at `url`, and starts its
/// sender and its listener. Fails if the listener cannot connect at start.
pub async fn spawn(control: Control, url: &str) -> anyhow::Result<()> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy(url)?;
    let (tx, rx) = mpsc::unbounded_channel();
    if !control.attach_doorbell(Arc::new(PgDoorbell { rings: tx })) {
        anyhow::bail!("a doorbell is attached to control already");
    }
    let me = control.instance().to_owned();
    tokio::spawn(send(pool, me.clone(), rx));
    tokio::spawn(listen(control, listener, me));
    Ok(())
}

/// `<process> <ring>`: what goes in a notification.
fn payload(instance: &str, ring: &Ring) -> String {
    format!("{instance} {}", ring.encode())
}

async fn send(pool: sqlx::PgPool, me: String, mut rings: mpsc::UnboundedReceiver<Ring>) {
    while let Some(ring) = rings.recv().await {
        let text = payload(&me, &ring);
        for attempt in 1..=SEND_TRIES {
            match sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&text)
                .execute(&pool)
                .await
            {
                Ok(_) => break,
                Err(e) if attempt < SEND_TRIES => {
                    tracing::warn!(error = %e, ?ring, "cannot ring the other processes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?ring, "cannot ring the other processes; their next resync catches up");
                }
            }
        }
    }
}

/// What the reader task hears.
enum Heard {
    /// A notification's payload.
    Payload(String),
    /// The connection was lost (rings sent meanwhile are lost): resynchronize.
    Lost,
}

/// Reads notifications in a task of its own (receiving is never cancelled midway), and hands
/// them over in order.
async fn read(mut listener: PgListener, heard: mpsc::UnboundedSender<Heard>) {
    loop {
        let next = match listener.try_recv().await {
            Ok(Some(notification)) => Heard::Payload(notification.payload().to_owned()),
            // The next call reconnects.
            Ok(None) => Heard::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "the doorbell's listener cannot reconnect now");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Heard::Lost
            }
        };
        if heard.send(next).is_err() {
            return;
        }
    }
}

async fn listen(control: Control, listener: PgListener, me: String) {
    let (tx, mut heard) = mpsc::unbounded_channel();
    tokio::spawn(read(listener, tx));
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await; // the first tick is now: nothing to catch up with yet
    loop {
        tokio::select! {
            next = heard.recv() => match next {
                Some(Heard::Payload(text)) => {
                    let Some((from, ring)) = text.split_once(' ') else {
                        tracing::warn!(payload = text, "an unreadable doorbell ring");
                        continue;
                    };
                    if from == me {
                        continue;
                    }
                    match Ring::decode(ring) {
                        Ok(ring) => {
                            if let Err(e) = control.hear(ring.clone()).await {
                                // The store could not answer: the next resync re-reads.
                                tracing::warn!(error = %e, ?ring, "cannot act on a doorbell ring now");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "an unreadable doorbell ring"),
                    }
                }
                Some(Heard::Lost) => {
                    tracing::warn!("the doorbell's listener lost its connection; resynchronizing");
                    resync.reset_immediately();
                }
                None => return,
            },
            _ = resync.tick() => {
                if let Err(e) = control.resync().await {
                    tracing::warn!(error = %e, "cannot resynchronize with the other processes now");
                }
            }
        }
    }
}
