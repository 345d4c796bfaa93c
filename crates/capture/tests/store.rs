//! Capture into a local directory and into a real S3-compatible server (moto, its own process):
//! the sampled share and every review item are stored content-addressed with their metadata
//! (ids hashed where the model's privacy says so, nothing for a model that forbids it); a store
//! that goes away loses nothing (the spool keeps the captures, also across a restart of the
//! capturer) within the spool's bound; every limit counts what it refused.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use sha2::{Digest, Sha256};
use vigil_capture::{CaptureConfig, CaptureMeta, Capturer, Input, keyed_hash};

fn input<'a>(model: &'a str, id: &'a str, bytes: &'a [u8], review: bool) -> Input<'a> {
    Input {
        model,
        version: "1",
        prediction_id: id,
        station_id: "line-3",
        device_id: "cam-7",
        content_type: "image/png",
        bytes,
        review,
        min_rate: 0.0,
    }
}

fn config(store: &str, spool: &std::path::Path, extra: &str) -> CaptureConfig {
    let text = format!("enabled = true\nstore = \"{store}\"\nspool = \"{}\"\n{extra}", spool.display());
    toml::from_str(&text).unwrap()
}

async fn objects(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut names: Vec<String> =
        store.list(Some(&prefix)).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    names.sort();
    names
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_and_every_review_item_are_stored_by_content_with_their_metadata() {
    // SAFETY: set before anything else in this test process reads the environment.
    unsafe { std::env::set_var("VIGIL_CAPTURE_HASH_KEY", "factory-7-key") };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("captures");
    let extra = "rate = 0.1\nmax_input_bytes = 4096\n[models.private]\nprivacy = \"hashed_ids\"\nrate = 1.0\n\
                 [models.secret]\nprivacy = \"never\"\n[models.tabular]\nprivacy = \"features_only\"\n";
    let (capturer, task) =
        Capturer::start(config(&format!("file://{}", root.display()), &dir.path().join("spool"), extra)).await.unwrap();
    let images: Vec<Vec<u8>> = (0..500u32).map(|i| format!("image {}", i % 250).into_bytes()).collect();
    let mut keys = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let id = format!("01a2-{i:04}");
        if let Some(key) = capturer.capture(input("detector", &id, image, i % 100 == 7)) {
            keys.push((id, key, image.clone(), i % 100 == 7));
        }
    }
    // About 10% sampled, plus every review item (5), by the prediction id alone.
    let reviewed = keys.iter().filter(|k| k.3).count();
    assert_eq!(reviewed, 5);
    assert!((35..75).contains(&keys.len()), "{} captured", keys.len());
    assert!(capturer.capture(input("secret", "x1", b"s", true)).is_none(), "never: not even for review");
    assert!(capturer.capture(input("tabular", "x2", b"t", true)).is_none(), "features only: no raw input");
    assert!(capturer.capture(input("detector", "01a2-big", &[0; 5000], true)).is_none(), "over max_input_bytes");
    assert_eq!(capturer.stats().too_large.load(Ordering::Relaxed), 1);
    let private = capturer.capture(input("private", "p1", b"private image", false)).expect("rate 1");
    let stats = capturer.stats();
    until("every capture stored", || stats.stored.load(Ordering::Relaxed) == keys.len() as u64 + 1).await;
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), 0);

    let store = object_store::local::LocalFileSystem::new_with_prefix(&root).unwrap();
    for (id, key, image, review) in &keys {
        let sha = Sha256::digest(image).iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(key, &format!("detector/{sha}"), "content-addressed");
        let stored = store.get(&ObjectPath::from(key.as_str())).await.unwrap().bytes().await.unwrap();
        assert_eq!(&stored[..], &image[..]);
        let meta = store.get(&ObjectPath::from(format!("detector/predictions/{id}.json"))).await.unwrap();
        let meta: CaptureMeta = serde_json::from_slice(&meta.bytes().await.unwrap()).unwrap();
        assert_eq!((meta.key.as_str(), meta.version.as_str(), meta.station_id.as_str()), (key.as_str(), "1", "line-3"));
        assert_eq!(meta.reason, if *review { "review" } else { "sampled" });
    }
    // Same bytes, one object: the 250 distinct images captured are stored once each.
    let distinct: std::collections::BTreeSet<&String> = keys.iter().map(|k| &k.1).collect();
    let blobs = objects(&store, "detector").await.into_iter().filter(|n| !n.contains("/predictions/")).count();
    assert_eq!(blobs, distinct.len());
    let meta = store.get(&ObjectPath::from("private/predictions/p1.json")).await.unwrap().bytes().await.unwrap();
    let meta: CaptureMeta = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta.key, private);
    assert_eq!(meta.station_id, keyed_hash(b"factory-7-key", "line-3"), "ids hashed with the key");
    assert_eq!(meta.device_id, keyed_hash(b"factory-7-key", "cam-7"));
    assert!(objects(&store, "secret").await.is_empty() && objects(&store, "tabular").await.is_empty());
    drop(capturer);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_reach_s3_and_wait_in_the_spool_while_it_is_away_even_across_a_restart() {
    // SAFETY: set before anything else in this test process reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "vigil");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "vigil-secret");
    }
    let mut s3 = vigil_testkit::S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let extra = format!("s3_endpoint = \"{}\"\ns3_allow_http = true\nrate = 1.0\n", s3.endpoint());
    let url = format!("s3://{}/plant-1", vigil_testkit::s3::BUCKET);
    let (capturer, task) = Capturer::start(config(&url, &spool, &extra)).await.unwrap();
    let (store, _) = vigil_capture::open_store(&config(&url, &spool, &extra)).unwrap();
    for i in 0..20 {
        capturer.capture(input("detector", &format!("a{i:02}"), format!("frame {i}").as_bytes(), false)).unwrap();
    }
    let stats = capturer.stats();
    until("20 stored in S3", || stats.stored.load(Ordering::Relaxed) == 20).await;
    let listed = objects(store.as_ref(), "plant-1/detector").await;
    assert_eq!(listed.len(), 40, "20 inputs and 20 metadata: {listed:?}");
    let key = format!(
        "plant-1/detector/{}",
        Sha256::digest(b"frame 3").iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    assert_eq!(&store.get(&ObjectPath::from(key)).await.unwrap().bytes().await.unwrap()[..], b"frame 3");

    // The store goes away: captures wait in the spool, and still wait after a restart.
    s3.stop();
    for i in 20..30 {
        capturer.capture(input("detector", &format!("a{i:02}"), format!("frame {i}").as_bytes(), false)).unwrap();
    }
    until("failures counted", || stats.store_failures.load(Ordering::Relaxed) > 0).await;
    until("ten spooled", || stats.spooled_bytes.load(Ordering::Relaxed) == 10 * 8).await;
    drop(capturer);
    task.await.unwrap();
    let waiting = std::fs::read_dir(&spool).unwrap().count();
    assert_eq!(waiting, 20, "ten inputs and their metadata in the spool");
    s3.resume().await;
    s3.create_bucket();
    let (capturer, task) = Capturer::start(config(&url, &spool, &extra)).await.unwrap();
    let stats = capturer.stats();
    until("the spool forwarded after the restart", || stats.stored.load(Ordering::Relaxed) == 10).await;
    assert_eq!(objects(store.as_ref(), "plant-1/detector/predictions").await.len(), 10, "the ten kept ones");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);

    // A full spool refuses (and counts) what does not fit, at once: the prediction's record
    // names no capture the spool will not hold.
    s3.stop();
    drop(capturer);
    task.await.unwrap();
    let small = format!("{extra}max_spool_bytes = 20\n");
    let (capturer, task) = Capturer::start(config(&url, &spool, &small)).await.unwrap();
    let keys: Vec<Option<String>> =
        (0..5).map(|i| capturer.capture(input("detector", &format!("b{i}"), b"0123456789", false))).collect();
    assert_eq!(keys.iter().map(Option::is_some).collect::<Vec<_>>(), [true, true, false, false, false]);
    let stats = capturer.stats();
    assert_eq!(stats.spool_full.load(Ordering::Relaxed), 3);
    until("the two kept ones in the spool", || std::fs::read_dir(&spool).unwrap().count() == 4).await;
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), 20);
    drop(capturer);
    task.await.unwrap();
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("captures");
    let extra = "queue = 1\nrate = 1.0\n";
    let (capturer, task) =
        Capturer::start(config(&root.display().to_string(), &dir.path().join("spool"), extra)).await.unwrap();
    // On this one-threaded runtime nothing drains the queue between these calls.
    let taken = (0..10).filter(|i| capturer.capture(input("d", &format!("q{i}"), b"x", false)).is_some()).count();
    assert_eq!(taken, 1);
    assert_eq!(capturer.stats().queue_full.load(Ordering::Relaxed), 9);
    drop(capturer);
    task.await.unwrap();
}

/// What a power cut or a crash leaves in the spool (metadata cut short, an input without its
/// metadata, a file written in part) is set aside for a person, and every capture after it
/// still reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_spool_entry_is_set_aside_and_the_captures_after_it_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("captures");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // Named to sort before every real entry: the forwarder meets them first.
    std::fs::write(spool.join("00000000-cut.json"), b"{\"key\": \"detector/ab").unwrap();
    std::fs::write(spool.join("00000000-cut.bin"), b"frame").unwrap();
    // Whole metadata naming an input that reached the disk only in part: not stored under the
    // whole input's key (content-addressed, it would replace the good copy others name).
    let whole = b"a whole frame that was cut short".to_vec();
    let sha256 = hex::encode(Sha256::digest(&whole));
    let meta = CaptureMeta {
        prediction_id: "00000000-short".into(),
        model: "detector".into(),
        version: "1".into(),
        key: format!("detector/{sha256}"),
        sha256: sha256.clone(),
        bytes: whole.len() as u64,
        content_type: "application/octet-stream".into(),
        station_id: String::new(),
        device_id: String::new(),
        reason: "sampled".into(),
        time_ms: 0,
    };
    std::fs::write(spool.join("00000000-short.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    std::fs::write(spool.join("00000000-short.bin"), &whole[..10]).unwrap();
    std::fs::write(spool.join("00000001-orphan.bin"), b"0123456789").unwrap();
    std::fs::write(spool.join("00000002-torn.partial"), b"01").unwrap();
    // Left a while ago: files younger than a minute may be another process's, being written.
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    for name in ["00000001-orphan.bin", "00000002-torn.partial"] {
        std::fs::File::options().write(true).open(spool.join(name)).unwrap().set_modified(old).unwrap();
    }
    std::fs::write(spool.join("00000003-fresh.bin"), b"being written").unwrap();
    let url = format!("file://{}", root.display());
    let (capturer, task) = Capturer::start(config(&url, &spool, "rate = 1.0\n")).await.unwrap();
    for i in 0..5 {
        capturer.capture(input("detector", &format!("c{i}"), format!("frame {i}").as_bytes(), false)).unwrap();
    }
    let stats = capturer.stats();
    until("the five captures stored", || stats.stored.load(Ordering::Relaxed) == 5).await;
    assert_eq!(stats.broken.load(Ordering::Relaxed), 4, "the cut entries, the orphan input, the torn file");
    let fresh = b"being written".len() as u64;
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), fresh, "what is set aside is not counted as waiting");
    assert!(spool.join("00000003-fresh.bin").exists(), "a fresh file is left to whoever writes it");
    let mut aside: Vec<String> = std::fs::read_dir(spool.join("broken"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    aside.sort();
    assert_eq!(
        aside,
        [
            "00000000-cut.bin",
            "00000000-cut.json",
            "00000000-short.bin",
            "00000000-short.json",
            "00000001-orphan.bin",
            "00000002-torn.partial"
        ]
    );
    let (store, _) = vigil_capture::open_store(&config(&url, &spool, "")).unwrap();
    assert_eq!(objects(store.as_ref(), "detector/predictions").await.len(), 5);
    assert!(store.head(&ObjectPath::from(format!("detector/{sha256}"))).await.is_err(), "the cut input was stored");
    // The fresh file was a crash's too (a restart within the minute): once a minute old, the
    // running spool sets it aside and gives its room back.
    std::fs::File::options().write(true).open(spool.join("00000003-fresh.bin")).unwrap().set_modified(old).unwrap();
    until("the leftover set aside while running", || stats.broken.load(Ordering::Relaxed) == 5).await;
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), 0, "its room given back");
    assert!(spool.join("broken").join("00000003-fresh.bin").exists());
    drop(capturer);
    task.await.unwrap();
}
