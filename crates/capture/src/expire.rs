//! Expiry of captured inputs: objects in the store last written before a cut-off are deleted.
//! An input captured again is written again (content-addressed, same key), so it stays as long
//! as its latest capture: each object listed as old is looked at again just before it is
//! deleted, and kept when it was written since (a capture of the same bytes meanwhile), so a
//! long listing does not delete what was captured while it ran.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};

/// Objects looked at again and deleted at once.
const DELETING_AT_ONCE: usize = 16;

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

/// Deletes each of `old` still last modified before `before` when looked at again; returns how
/// many were deleted and how many were written since they were listed.
async fn delete_still_old(
    store: &dyn ObjectStore,
    old: Vec<ObjectMeta>,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<(u64, u64), object_store::Error> {
    let outcomes = futures::stream::iter(old)
        .map(|listed| async move {
            match store.head(&listed.location).await {
                Ok(now) if now.last_modified >= before => Ok(Outcome::Rewritten),
                Ok(_) => match store.delete(&listed.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Outcome::Deleted),
                    Err(e) => Err(e),
                },
                Err(object_store::Error::NotFound { .. }) => Ok(Outcome::Gone),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(DELETING_AT_ONCE);
    outcomes
        .try_fold((0, 0), |(deleted, rewritten), outcome| async move {
            Ok(match outcome {
                Outcome::Deleted => (deleted + 1, rewritten),
                Outcome::Rewritten => (deleted, rewritten + 1),
                Outcome::Gone => (deleted, rewritten),
            })
        })
        .await
}

/// What became of one object listed as old.
enum Outcome {
    Deleted,
    /// Written again since it was listed: kept.
    Rewritten,
    /// Deleted meanwhile by someone else.
    Gone,
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
