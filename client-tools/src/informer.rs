//! Informer readiness (client-go's `cache.WaitForCacheSync`): whether a reflector's store holds
//! its first complete list, awaitable by any number of tasks at once.
//!
//! kube-runtime 5's `Store::wait_until_ready` keeps the waker of only one waiting task (its
//! one-shot receiver holds a single waker): with two reconciles waiting at once, one is never
//! woken, and since its object's slot stays busy its controller never syncs that object again.
//! Components await a [`Ready`] instead, fed by the reflector stream ([`readiness`] and
//! [`ReadySetter::observe`]).

/// Whether a reflector's first list is in its store, awaitable by any number of tasks at once.
///
/// Feed every event of the reflector stream to [`ReadySetter::observe`] (after the reflector
/// has applied it) and await [`Ready::wait`] instead.
#[derive(Clone)]
pub struct Ready(tokio::sync::watch::Receiver<bool>);

/// The writing side of [`Ready`].
#[derive(Clone)]
pub struct ReadySetter(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

/// A linked [`ReadySetter`] and [`Ready`], not ready yet.
pub fn readiness() -> (ReadySetter, Ready) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    (ReadySetter(std::sync::Arc::new(tx)), Ready(rx))
}

impl ReadySetter {
    /// Marks the store ready once the first list is complete (`InitDone`).
    pub fn observe<K>(&self, ev: &kube::runtime::watcher::Event<K>) {
        if matches!(ev, kube::runtime::watcher::Event::InitDone) {
            self.0.send_replace(true);
        }
    }
}

impl Ready {
    /// Waits until the store holds its first complete list; `false` if the reflector is gone.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|ready| *ready).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::watcher::Event;

    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_is_in() {
        let (setter, ready) = readiness();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = ready.clone();
                tokio::spawn(async move { r.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        setter.observe::<Pod>(&Event::Init);
        setter.observe::<Pod>(&Event::InitApply(Pod::default()));
        assert!(!*ready.0.borrow(), "not ready before InitDone");
        setter.observe::<Pod>(&Event::InitDone);
        for w in waiters {
            let woke = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
            assert!(matches!(woke, Ok(Ok(true))), "a waiter was not woken");
        }
    }
}
