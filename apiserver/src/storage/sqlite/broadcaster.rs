//! Live events and watches: the in-process broadcaster the writer publishes to, and the watch
//! stream that replays history and then follows it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tracing::warn;

use super::read_pool::{REPLAY_PAGE, ReadPool};
use crate::storage::{Event, Result, Revision, StorageError};

/// How many live events a watcher may have buffered before it is dropped.
pub(super) const WATCH_BUFFER: usize = 10_000;

/// Fans committed events out to watchers. Publishing never blocks: a full subscriber is dropped.
#[derive(Default)]
pub(super) struct Broadcaster {
    subscribers: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    prefix: String,
    tx: mpsc::Sender<Event>,
    /// Set when this subscriber was dropped for falling behind.
    lagged: Arc<AtomicBool>,
}

impl Broadcaster {
    fn subscribers(&self) -> MutexGuard<'_, Vec<Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn subscribe(&self, prefix: &str) -> (mpsc::Receiver<Event>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        self.subscribers().push(Subscriber {
            prefix: prefix.to_owned(),
            tx,
            lagged: lagged.clone(),
        });
        (rx, lagged)
    }

    pub(super) fn publish(&self, event: &Event) {
        self.subscribers().retain(|s| {
            if !event.kv.key.starts_with(s.prefix.as_str()) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(prefix = %s.prefix, revision = event.revision(), "dropping watcher that fell behind");
                    s.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    pub(super) fn close_all(&self) {
        self.subscribers().clear();
    }
}

/// The watch protocol: replay history from the table, then follow live events.
pub(super) enum WatchState {
    /// Reading history pages after `last`; `buffered` holds the current page.
    Replaying {
        buffered: VecDeque<Event>,
        last: Revision,
        exhausted: bool,
    },
    /// Forwarding live events, skipping those at or below `last` (already replayed).
    Live { last: Revision },
    /// The stream has ended.
    Done,
}

pub(super) struct SqliteWatch {
    pub(super) readers: Arc<ReadPool>,
    pub(super) prefix: String,
    pub(super) rx: mpsc::Receiver<Event>,
    pub(super) lagged: Arc<AtomicBool>,
    pub(super) state: WatchState,
}

impl SqliteWatch {
    pub(super) async fn next_event(&mut self) -> Option<Result<Event>> {
        loop {
            match &mut self.state {
                WatchState::Replaying {
                    buffered,
                    last,
                    exhausted,
                } => {
                    if let Some(event) = buffered.pop_front() {
                        return Some(Ok(event));
                    }
                    if *exhausted {
                        self.state = WatchState::Live { last: *last };
                        continue;
                    }
                    match self.readers.replay_page(self.prefix.clone(), *last).await {
                        Ok(page) => {
                            *exhausted = page.len() < REPLAY_PAGE;
                            if let Some(event) = page.last() {
                                *last = event.revision();
                            }
                            buffered.extend(page);
                        }
                        Err(e) => {
                            self.state = WatchState::Done;
                            return Some(Err(e));
                        }
                    }
                }
                WatchState::Live { last } => match self.rx.recv().await {
                    Some(event) if event.revision() <= *last => continue,
                    Some(event) => {
                        *last = event.revision();
                        return Some(Ok(event));
                    }
                    None => {
                        self.state = WatchState::Done;
                        if self.lagged.load(Ordering::Acquire) {
                            return Some(Err(StorageError::Backend(format!(
                                "watch on {} fell more than {WATCH_BUFFER} events behind and was dropped; re-list",
                                self.prefix
                            ))));
                        }
                        return Some(Err(StorageError::Backend("sqlite storage closed".into())));
                    }
                },
                WatchState::Done => return None,
            }
        }
    }
}
