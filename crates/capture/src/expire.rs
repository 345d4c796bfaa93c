//! Expiry of captured inputs: objects in the store last written before a cut-off are deleted.
//! An input captured again is written again (content-addressed, same key), so it stays as long
//! as its latest capture.

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Objects deleted (bytes and metadata files alike).
    pub deleted: u64,
}

/// Deletes the objects under `prefix` last modified before `before`.
pub async fn expire_captures(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<Expired, object_store::Error> {
    let mut listed = 0u64;
    let mut old = Vec::new();
    let mut objects = store.list(Some(prefix));
    while let Some(meta) = objects.next().await {
        let meta = meta?;
        listed += 1;
        if meta.last_modified < before {
            old.push(meta.location);
        }
    }
    let locations = futures::stream::iter(old.into_iter().map(Ok)).boxed();
    let deleted = store.delete_stream(locations).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await?;
    Ok(Expired { listed, deleted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;
    use object_store::local::LocalFileSystem;

    #[tokio::test]
    async fn only_objects_older_than_the_cut_off_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let prefix = ObjectPath::from("captures");
        for key in ["captures/m/aaa", "captures/m/predictions/1.json", "elsewhere/m/bbb"] {
            store.put(&ObjectPath::from(key), PutPayload::from_static(b"x")).await.unwrap();
        }
        // Age two of them by their modification time, as a store reports it.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
        for key in ["captures/m/aaa", "elsewhere/m/bbb"] {
            std::fs::File::options().write(true).open(dir.path().join(key)).unwrap().set_modified(old).unwrap();
        }
        let cut_off = chrono::Utc::now() - chrono::Duration::days(7);
        let expired = expire_captures(&store, &prefix, cut_off).await.unwrap();
        assert_eq!(expired, Expired { listed: 2, deleted: 1 });
        assert!(!dir.path().join("captures/m/aaa").exists(), "old capture deleted");
        assert!(dir.path().join("captures/m/predictions/1.json").exists(), "new metadata kept");
        assert!(dir.path().join("elsewhere/m/bbb").exists(), "outside the prefix: untouched");
        // Nothing left to do: a second pass deletes nothing.
        assert_eq!(expire_captures(&store, &prefix, cut_off).await.unwrap().deleted, 0);
    }
}
