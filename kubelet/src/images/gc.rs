//! Image garbage collection, as the kubelet's image GC manager does it: when the image
//! filesystem's usage reaches `--image-gc-high-threshold` percent, unused images are removed,
//! least recently used first, until usage is down to `--image-gc-low-threshold`. Images used by
//! any container (running or not) and the sandbox image are never removed.
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::SystemTime;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

/// Capacity and available bytes of the filesystem holding `path`.
pub fn fs_usage(path: &Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = st.f_frsize.max(1);
    Ok((st.f_blocks * frsize, st.f_bavail * frsize))
}

/// Bytes to free so that usage falls to `low` percent; 0 while usage is below `high` percent.
pub fn amount_to_free(capacity: u64, available: u64, high: u8, low: u8) -> u64 {
    if capacity == 0 {
        return 0;
    }
    let used = capacity.saturating_sub(available);
    let usage_percent = used.saturating_mul(100) / capacity;
    if usage_percent < u64::from(high) {
        return 0;
    }
    (capacity.saturating_mul(u64::from(100 - low.min(100))) / 100).saturating_sub(available)
}

/// An image as GC sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Image id (`sha256:…`).
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// When a container last used it (or when it was first seen).
    pub last_used: SystemTime,
}

/// The images to remove, oldest use first, until `to_free` bytes are reached; and how many bytes
/// they hold.
pub fn select(mut candidates: Vec<Candidate>, to_free: u64) -> (Vec<Candidate>, u64) {
    candidates.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(b.size.cmp(&a.size)));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in candidates {
        if freed >= to_free {
            break;
        }
        freed += c.size;
        out.push(c);
    }
    (out, freed)
}

/// One GC pass. `last_used` is the kubelet's memory of image use (updated here for images in use
/// and for images seen the first time). Returns an error message worded as Kubernetes' when the
/// pass could not free enough.
pub async fn collect(
    cri: &crate::runtime::Cri,
    image_fs: &Path,
    high: u8,
    low: u8,
    pinned: &[String],
    last_used: &std::sync::Mutex<HashMap<String, SystemTime>>,
) -> Result<u64, GcError> {
    let (capacity, available) =
        fs_usage(image_fs).map_err(|e| GcError::Stats(format!("{}: {e}", image_fs.display())))?;
    let to_free = amount_to_free(capacity, available, high, low);
    if to_free > 0 {
        tracing::info!(
            used_percent = (capacity - available.min(capacity)) * 100 / capacity.max(1),
            high,
            to_free,
            "image filesystem past the high threshold: collecting unused images"
        );
    }
    let mut is = cri.img.clone();
    let mut rt = cri.rt.clone();
    let images = is
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .map_err(|e| GcError::Stats(format!("list images: {}", e.message())))?
        .into_inner()
        .images;
    let in_use: HashSet<String> = rt
        .list_containers(cri::ListContainersRequest { filter: None })
        .await
        .map_err(|e| GcError::Stats(format!("list containers: {}", e.message())))?
        .into_inner()
        .containers
        .into_iter()
        .flat_map(|c| [c.image_ref, c.image.map(|i| i.image).unwrap_or_default()])
        .collect();
    let now = SystemTime::now();
    let candidates: Vec<Candidate> = {
        let mut lu = last_used.lock().unwrap_or_else(|p| p.into_inner());
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        lu.retain(|id, _| present.contains(id.as_str()));
        images
            .iter()
            .filter_map(|i| {
                let used = in_use.contains(&i.id) || i.repo_tags.iter().any(|t| in_use.contains(t));
                if used {
                    lu.insert(i.id.clone(), now);
                }
                let seen = *lu.entry(i.id.clone()).or_insert(now);
                let is_pinned = i.pinned || i.repo_tags.iter().any(|t| pinned.contains(t));
                (!used && !is_pinned).then(|| Candidate {
                    id: i.id.clone(),
                    size: i.size,
                    last_used: seen,
                })
            })
            .collect()
    };
    if to_free == 0 {
        return Ok(0);
    }
    let (chosen, _) = select(candidates, to_free);
    let mut freed = 0;
    for c in chosen {
        match is
            .remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: c.id.clone(),
                    ..Default::default()
                }),
            })
            .await
        {
            Ok(_) => {
                tracing::info!(image = %c.id, size = c.size, "image GC removed unused image");
                last_used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&c.id);
                freed += c.size;
            }
            Err(e) => {
                tracing::warn!(image = %c.id, error = %e.message(), "image GC: remove failed")
            }
        }
    }
    if freed < to_free {
        return Err(GcError::NotEnough { to_free, freed });
    }
    Ok(freed)
}

/// Why a GC pass failed.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The image filesystem or the runtime could not be read.
    #[error("failed to get image stats: {0}")]
    Stats(String),
    /// Not enough unused images.
    #[error(
        "Failed to garbage collect required amount of images. Attempted to free {to_free} bytes, but only found {freed} bytes eligible to free."
    )]
    NotEnough {
        /// Bytes to free.
        to_free: u64,
        /// Bytes freed.
        freed: u64,
    },
}

/// Records an event about the Node (`kubectl describe node`), from the kubelet.
pub async fn node_event(client: &kube::Client, node: &str, type_: &str, reason: &str, msg: &str) {
    let now = Time(jiff::Timestamp::now());
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{node}.{:x}",
                jiff::Timestamp::now().as_nanosecond()
            )),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            uid: Some(node.into()),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(msg.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(node.into()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::debug!(error = %e, reason, "node event not recorded");
    }
    tracing::info!(node, reason, msg, "node event");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn thresholds_decide_how_much_to_free() {
        // 1000 bytes, 100 available: 90 % used ≥ 85 → free down to 80 % (200 available).
        assert_eq!(amount_to_free(1000, 100, 85, 80), 100);
        // 84 % used: nothing.
        assert_eq!(amount_to_free(1000, 160, 85, 80), 0);
        assert_eq!(amount_to_free(0, 0, 85, 80), 0);
    }

    #[test]
    fn oldest_use_first_until_enough() {
        let t = SystemTime::UNIX_EPOCH;
        let c = |id: &str, size, secs| Candidate {
            id: id.into(),
            size,
            last_used: t + Duration::from_secs(secs),
        };
        let (chosen, freed) = select(
            vec![c("new", 50, 30), c("old", 40, 10), c("mid", 30, 20)],
            60,
        );
        assert_eq!(
            chosen.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["old", "mid"]
        );
        assert_eq!(freed, 70);
        let (chosen, freed) = select(vec![c("a", 10, 1)], 100);
        assert_eq!((chosen.len(), freed), (1, 10));
    }

    #[test]
    fn statvfs_of_a_real_filesystem() {
        let (cap, avail) = fs_usage(Path::new("/")).unwrap_or((0, 0));
        assert!(cap > 0 && avail <= cap);
    }
}
