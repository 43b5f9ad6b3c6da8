//! Periodic compaction, the way kube-apiserver's compactor does it: each tick compacts to the
//! revision that was current at the previous tick, so at least one interval of history (the
//! window in which watchers can resume) always survives.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{Revision, Storage};

/// Starts a task that compacts `store` every `interval` (Kubernetes uses 5 minutes) to the
/// revision seen one tick earlier, always keeping at least the newest `keep` revisions.
/// Failures are logged and retried at the next tick; abort the handle to stop it.
pub fn spawn_compactor(store: Arc<dyn Storage>, interval: Duration, keep: i64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Revision> = None;
        loop {
            ticker.tick().await;
            let current = match store.current_revision().await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "compactor: reading current revision");
                    continue;
                }
            };
            if let Some(target) = compaction_target(previous, current, keep) {
                match store.compact(target).await {
                    Ok(()) => debug!(revision = target, "compactor: compacted"),
                    Err(e) => warn!(revision = target, error = %e, "compactor: compaction failed"),
                }
            }
            previous = Some(current);
        }
    })
}

/// The revision to compact to at a tick, if any.
fn compaction_target(previous: Option<Revision>, current: Revision, keep: i64) -> Option<Revision> {
    let target = previous?.min(current - keep.max(0));
    (target > 0).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStorage;

    #[test]
    fn target_lags_one_tick_and_keeps_revisions() {
        assert_eq!(compaction_target(None, 100, 0), None);
        assert_eq!(compaction_target(Some(80), 100, 0), Some(80));
        assert_eq!(compaction_target(Some(80), 100, 50), Some(50));
        assert_eq!(compaction_target(Some(3), 4, 10), None);
    }

    #[tokio::test]
    async fn compacts_to_previous_tick() {
        let store: Arc<dyn Storage> = Arc::new(SqliteStorage::open_temporary().expect("open"));
        let mut rev = store.create("/t/a", vec![0]).await.expect("create");
        let first = rev;
        let compactor = spawn_compactor(store.clone(), Duration::from_millis(50), 0);
        for i in 1..10u8 {
            rev = store.update("/t/a", rev, vec![i]).await.expect("update");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.compacted_revision().await.expect("compacted") <= first {
            assert!(
                tokio::time::Instant::now() < deadline,
                "compactor never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        compactor.abort();
        let kv = store.get("/t/a").await.expect("get").expect("present");
        assert_eq!(kv.mod_revision, rev);
    }
}
