//! Task change notifications for WatchTask: one Redis subscription per watched task, shared by every
//! stream watching it, dropped when the last one ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast;

/// Per channel: the sender that wakes its watchers, and how many watchers there are.
type Channels = HashMap<String, (broadcast::Sender<()>, usize)>;

/// Fans Redis task events out to watchers.
#[derive(Clone)]
pub struct WatchHub {
    subscriber: SubscriberClient,
    prefix: String,
    channels: Arc<Mutex<Channels>>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A watcher's registration; unsubscribes when the last watcher of a task drops it.
pub struct Watch {
    hub: WatchHub,
    channel: String,
    /// Fires on every change of the task.
    pub changes: broadcast::Receiver<()>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl WatchHub {
    /// A hub over `subscriber`; `prefix` is the event channel prefix of the namespace.
    pub fn new(subscriber: SubscriberClient, prefix: String) -> Self {
        let hub = Self {
            subscriber,
            prefix,
            channels: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(dispatch(hub.clone()));
        hub
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts watching task `id`. The subscription is confirmed by Redis before this returns, so a change
    /// made after it cannot be missed.
    pub async fn watch(&self, id: &str) -> Result<Watch, fred::error::Error> {
        let channel = format!("{}{id}", self.prefix);
        let (changes, first) = {
            let mut map = self.map();
            let entry = map
                .entry(channel.clone())
                .or_insert_with(|| (broadcast::channel(16).0, 0));
            entry.1 += 1;
            (entry.0.subscribe(), entry.1 == 1)
        };
        let watch = Watch {
            hub: self.clone(),
            channel: channel.clone(),
            changes,
        };
        if first {
            self.subscriber.subscribe(channel).await?;
        }
        Ok(watch)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let last = {
            let mut map = self.hub.map();
            match map.get_mut(&self.channel) {
                Some(entry) if entry.1 <= 1 => {
                    map.remove(&self.channel);
                    true
                }
                Some(entry) => {
                    entry.1 -= 1;
                    false
                }
                None => false,
            }
        };
        if last {
            let subscriber = self.hub.subscriber.clone();
            let channel = self.channel.clone();
            tokio::spawn(async move {
                let _ = subscriber.unsubscribe(channel).await;
            });
        }
    }
}

async fn dispatch(hub: WatchHub) {
    let mut rx = hub.subscriber.message_rx();
    loop {
        match rx.recv().await {
            Ok(msg) => {
                if let Some((tx, _)) = hub.map().get(&*msg.channel) {
                    let _ = tx.send(());
                }
            }
            // Missed messages: wake every watcher; each re-reads its task.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for (tx, _) in hub.map().values() {
                    let _ = tx.send(());
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
