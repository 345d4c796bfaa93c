//! Expiry of captured inputs: objects in the store last written before a cut-off are deleted.
//! An input captured again is written again (content-addressed, same key), so it stays as long
//! as its latest capture: each object listed as old is looked at again just before it is
//! deleted, and kept when it was written since (a capture of the same bytes meanwhile), so a
//! long listing does not delete what was captured while it ran.

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};

/// Objects looked at again, then deleted, in one batch (S3 deletes up to 1,000 in one request).
const DELETING_AT_ONCE: usize = 1000;
/// Objects looked at again at once.
const LOOKING_AT_ONCE: usize = 16;

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Objects listed under the prefix.
    pub listed: u64,
    /// Objects deleted (bytes and metadata files alike).
    pub deleted: u64,
    /// Objects listed as old but written again before their turn came: kept.
    pub rewritten: u64,
}

/// Deletes the objects under `prefix` last modified before `before`.
pub async fn expire_captures(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<Expired, object_store::Error> {
    let (listed, old) = old_objects(store, prefix, before).await?;
    let (deleted, rewritten) = delete_still_old(store, old, before).await?;
    Ok(Expired { listed, deleted, rewritten })
}

/// How many objects are under `prefix`, and those last modified before `before`.
async fn old_objects(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<(u64, Vec<ObjectMeta>), object_store::Error> {
    let mut listed = 0u64;
    let mut old = Vec::new();
    let mut objects = store.list(Some(prefix));
    while let Some(meta) = objects.next().await {
        let meta = meta?;
        listed += 1;
        if meta.last_modified < before {
            old.push(meta);
        }
    }
    Ok((listed, old))
}

/// Deletes each of `old` still last modified before `before` when looked at again, a chunk at
/// a time (looked at, then deleted in one batch where the store takes batches, as S3 does);
/// returns how many were deleted and how many were written since they were listed. An object
/// that cannot be looked at or deleted is left for the next pass (logged), not the end of this one.
async fn delete_still_old(
    store: &dyn ObjectStore,
    old: Vec<ObjectMeta>,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<(u64, u64), object_store::Error> {
    let (mut deleted, mut rewritten) = (0u64, 0u64);
    for chunk in old.chunks(DELETING_AT_ONCE) {
        // Boxed: a future borrowing the store inside a stream adapter is not Send for every
        // lifetime the compiler asks for.
        type Looked<'a> = (&'a ObjectMeta, Result<ObjectMeta, object_store::Error>);
        let heads: Vec<futures::future::BoxFuture<'_, Looked<'_>>> = chunk
            .iter()
            .map(|listed| Box::pin(async move { (listed, store.head(&listed.location).await) }) as _)
            .collect();
        let looked = futures::stream::iter(heads).buffer_unordered(LOOKING_AT_ONCE).collect::<Vec<_>>().await;
        let mut still_old = Vec::new();
        for (listed, now) in looked {
            match now {
                Ok(now) if now.last_modified >= before => rewritten += 1,
                Ok(_) => still_old.push(listed.location.clone()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(object = %listed.location, error = %e, "cannot look at an expired capture; next pass")
                }
            }
        }
        let mut deleting = store.delete_stream(futures::stream::iter(still_old.into_iter().map(Ok)).boxed());
        while let Some(done) = deleting.next().await {
            match done {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => tracing::warn!(error = %e, "cannot delete an expired capture; next pass"),
            }
        }
    }
    Ok((deleted, rewritten))
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
        assert_eq!(expired, Expired { listed: 2, deleted: 1, rewritten: 0 });
        assert!(!dir.path().join("captures/m/aaa").exists(), "old capture deleted");
        assert!(dir.path().join("captures/m/predictions/1.json").exists(), "new metadata kept");
        assert!(dir.path().join("elsewhere/m/bbb").exists(), "outside the prefix: untouched");
        // Nothing left to do: a second pass deletes nothing.
        assert_eq!(expire_captures(&store, &prefix, cut_off).await.unwrap().deleted, 0);
    }

    #[tokio::test]
    async fn an_input_captured_again_while_the_listing_ran_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let prefix = ObjectPath::from("captures");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10 * 86_400);
        for key in ["captures/m/aaa", "captures/m/bbb"] {
            store.put(&ObjectPath::from(key), PutPayload::from_static(b"x")).await.unwrap();
            std::fs::File::options().write(true).open(dir.path().join(key)).unwrap().set_modified(old).unwrap();
        }
        let cut_off = chrono::Utc::now() - chrono::Duration::days(7);
        let (listed, candidates) = old_objects(&store, &prefix, cut_off).await.unwrap();
        assert_eq!((listed, candidates.len()), (2, 2));
        // The same bytes captured again (same key) after the listing, before the deletion.
        store.put(&ObjectPath::from("captures/m/aaa"), PutPayload::from_static(b"x")).await.unwrap();
        let (deleted, rewritten) = delete_still_old(&store, candidates, cut_off).await.unwrap();
        assert_eq!((deleted, rewritten), (1, 1));
        assert!(dir.path().join("captures/m/aaa").exists(), "captured again: kept");
        assert!(!dir.path().join("captures/m/bbb").exists(), "still old: deleted");
    }
}
