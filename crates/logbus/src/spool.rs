//! A durable local spool: records the broker could not take wait here, on disk, in order, and
//! are replayed when it is back. Size-bounded, with an explicit policy when full.
//!
//! Layout: numbered segment files `NNNNNNNNNN.seg` of framed records, and a `head` file with
//! the position of the first record not yet acknowledged. A frame is
//! `[len u32][crc32 u32][topic_len u16][topic][key_len u16][key][payload]` (little-endian);
//! a torn frame at the tail (a crash mid-write) is detected by its length or checksum and cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::emitter::Envelope;

/// When to fsync appended records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every append: nothing acknowledged is lost on power failure; slowest.
    Always,
    /// Leave it to the operating system: a crash of the process loses nothing, a power cut may.
    Never,
}

/// What to do with a new record when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the new record (keep the oldest).
    RejectNew,
    /// Delete the oldest segment to make room (keep the newest).
    DropOldest,
}

/// Spool settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Most bytes of records on disk (and a sixteenth of it beside them for damaged stretches
    /// kept for a person, `damaged/`).
    pub max_bytes: u64,
    /// Size at which a new segment file starts.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: FullPolicy,
}

impl SpoolConfig {
    /// The most bytes of damaged stretches kept for a person (`damaged/`).
    pub fn evidence_limit(&self) -> u64 {
        self.max_bytes / DAMAGED_SHARE_DIVISOR
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: FsyncPolicy::Never,
            when_full: FullPolicy::DropOldest,
        }
    }
}

/// What happened to an appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// Stored after deleting the oldest records (how many).
    StoredDroppingOldest(u64),
    /// Refused: the spool is full and the policy is reject-new.
    Rejected,
}

/// A position in the spool: segment number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// The spool. Not thread-safe; wrap it in a mutex. It holds an exclusive lock on its
/// directory (the `lock` file) until dropped: a second spool on the same directory, in this
/// process or another, is refused.
pub struct Spool {
    config: SpoolConfig,
    /// The locked `lock` file; closing it releases the lock.
    _lock: File,
    /// Segment numbers on disk, oldest first, with their sizes and record counts.
    segments: Vec<(u64, u64, u64)>,
    head: Position,
    writer: Option<File>,
    /// The last segment holds bytes of a failed append past its size that could not be cut
    /// off: the next record starts a new segment, never lands behind them (where the next
    /// failed append's cut would take it).
    sealed: bool,
    /// Records not yet acknowledged.
    records: u64,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

/// A frame: length, checksum, then the topic and key (each after its 16-bit length) and the
/// payload. A topic or key too long for its length field is an error, never cut short.
fn encode(e: &Envelope) -> io::Result<Vec<u8>> {
    for (what, len) in [("topic", e.topic.len()), ("key", e.key.len())] {
        if len > u16::MAX as usize {
            let why = format!("a record's {what} of {len} bytes is over the spool's limit of {} bytes", u16::MAX);
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
        }
    }
    let mut body = Vec::with_capacity(4 + e.topic.len() + e.key.len() + e.payload.len());
    body.extend_from_slice(&(e.topic.len() as u16).to_le_bytes());
    body.extend_from_slice(e.topic.as_bytes());
    body.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
    body.extend_from_slice(e.key.as_bytes());
    body.extend_from_slice(&e.payload);
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode(body: &[u8]) -> Option<Envelope> {
    let take_str = |b: &[u8], at: usize| -> Option<(String, usize)> {
        let len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = String::from_utf8(b.get(at + 2..at + 2 + len)?.to_vec()).ok()?;
        Some((s, at + 2 + len))
    };
    let (topic, at) = take_str(body, 0)?;
    let (key, at) = take_str(body, at)?;
    Some(Envelope { topic, key, payload: body[at..].to_vec() })
}

/// The frames of a segment that end between `from` and `until`, by their headers alone.
fn count_frames(path: &Path, from: u64, until: u64) -> io::Result<u64> {
    let mut file = BufReader::new(File::open(path)?);
    let file_len = file.get_ref().metadata()?.len();
    let mut at = from;
    let mut frames = 0;
    file.seek(SeekFrom::Start(at))?;
    let mut header = [0u8; 8];
    while file.read_exact(&mut header).is_ok() {
        let len = u64::from(u32::from_le_bytes(header[..4].try_into().expect("4 bytes")));
        if at + 8 + len > file_len.min(until) {
            break;
        }
        at += 8 + len;
        frames += 1;
        file.seek_relative(len as i64)?;
    }
    Ok(frames)
}

/// Reads the frames of a segment from `offset`; stops at the end or at a torn frame.
/// Returns the records with the offset after each.
fn read_frames(path: &Path, offset: u64, max: usize) -> io::Result<Vec<(u64, Envelope)>> {
    read_frames_within(path, offset, &mut ReadBudget { records: max, bytes: u64::MAX, nothing_read: true })
}

/// What one read of the spool may still gather: records, and their bodies' bytes. The first
/// record of a read is always taken, whatever its size, so that a large one is never stuck.
struct ReadBudget {
    records: usize,
    bytes: u64,
    nothing_read: bool,
}

/// As [`read_frames`], within `budget` (spent as records are taken).
fn read_frames_within(path: &Path, offset: u64, budget: &mut ReadBudget) -> io::Result<Vec<(u64, Envelope)>> {
    let mut file = BufReader::new(File::open(path)?);
    let file_len = file.get_ref().metadata()?.len();
    file.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    let mut at = offset;
    while budget.records > 0 {
        let mut header = [0u8; 8];
        if file.read_exact(&mut header).is_err() {
            break;
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        // A length beyond the file's end is a torn or damaged frame: nothing is allocated for it.
        if len as u64 > file_len.saturating_sub(at + 8) {
            break;
        }
        if len as u64 > budget.bytes && !budget.nothing_read {
            // Full: no later record may be taken either (the read keeps the spool's order).
            budget.records = 0;
            break;
        }
        let mut body = vec![0u8; len];
        if file.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        let Some(envelope) = decode(&body) else { break };
        at += 8 + len as u64;
        out.push((at, envelope));
        budget.records -= 1;
        budget.bytes = budget.bytes.saturating_sub(len as u64);
        budget.nothing_read = false;
    }
    Ok(out)
}

/// The size of the whole frame at `at` in `bytes`, if one reads there: its body fits, names a
/// topic as Kafka allows one (checked first: cheap), matches its checksum and decodes.
fn whole_frame_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let body = bytes.get(at + 8..(at + 8).checked_add(len)?)?;
    let topic_len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let topic = body.get(2..2 + topic_len)?;
    let kafka_name = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if topic.is_empty() || topic.len() > 249 || !topic.iter().all(kafka_name) {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    (crc32fast::hash(body) == crc && decode(body).is_some()).then_some(8 + len)
}

/// The share of `max_bytes` that damaged bytes set aside for a person may take
/// (`damaged/`, beside the records' `max_bytes`); the oldest go first.
pub const DAMAGED_SHARE_DIVISOR: u64 = 16;

/// What of a damaged stretch is kept for a person.
enum Evidence<'a> {
    /// Its bytes: the disk read them, but they are no whole records.
    Bytes(&'a [u8]),
    /// The whole segment file as it was, where the disk could not read some of it (the bytes
    /// may read again later, or on another machine): linked, so rewriting the segment leaves
    /// them on disk.
    Segment(&'a Path),
}

/// Keeps the `evidence` of a damaged stretch of segment `n` at `offset` in `damaged/` for a
/// person to look at: under a name no earlier stretch took (`<segment>-<offset>.bin`, then
/// `.2.bin`, ...: a later stretch can sit at the same place once the first is taken out;
/// `.seg` for a whole segment), bytes cut to `limit`; the oldest files go while all of them
/// take more than `limit`.
fn keep_for_a_person(dir: &Path, n: u64, offset: u64, evidence: Evidence, limit: u64) -> io::Result<PathBuf> {
    let aside = dir.join("damaged");
    fs::create_dir_all(&aside)?;
    let extension = match evidence {
        Evidence::Bytes(_) => "bin",
        Evidence::Segment(_) => "seg",
    };
    let mut copy = 1;
    let path = loop {
        let name = match copy {
            1 => format!("{n:010}-{offset}.{extension}"),
            k => format!("{n:010}-{offset}.{k}.{extension}"),
        };
        let path = aside.join(name);
        let kept = match evidence {
            Evidence::Bytes(bytes) => {
                OpenOptions::new().write(true).create_new(true).open(&path).and_then(|mut file| {
                    file.write_all(&bytes[..bytes.len().min(usize::try_from(limit).unwrap_or(usize::MAX))])?;
                    file.sync_all()
                })
            }
            Evidence::Segment(segment) => fs::hard_link(segment, &path),
        };
        match kept {
            Ok(()) => break path,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => copy += 1,
            Err(e) => return Err(e),
        }
    };
    sync_dir(&aside)?;
    let mut held: Vec<(std::time::SystemTime, PathBuf, u64)> = fs::read_dir(&aside)?
        .filter_map(|e| {
            let e = e.ok()?;
            let metadata = e.metadata().ok().filter(|m| m.is_file())?;
            Some((metadata.modified().ok()?, e.path(), metadata.len()))
        })
        .collect();
    held.sort();
    let mut total: u64 = held.iter().map(|h| h.2).sum();
    for (_, old, size) in held {
        if total <= limit {
            break;
        }
        if old != path {
            // Evidence only: a file that cannot be removed (gone meanwhile) must not keep the
            // spool from opening.
            match fs::remove_file(&old) {
                Ok(()) => total -= size,
                Err(e) => tracing::warn!(file = %old.display(), error = %e, "cannot remove old damaged spool bytes"),
            }
        }
    }
    Ok(path)
}

/// The blocks in which an unreadable sector costs its bytes (the disk's own sectors are 512 B
/// or 4 KiB: a read of a whole block fails when one of them does).
const READ_BLOCK: usize = 4096;

/// Tries at reading a block the disk refused, before it counts as unreadable.
const READ_TRIES: usize = 3;

/// The bytes of the file at `path`, read a block at a time, with each block the disk cannot
/// read (EIO, or EBADMSG where the file system checks its data: a bad sector; tried
/// [`READ_TRIES`] times) as zeros, which no frame's length and checksum match; and whether
/// there was one. Other errors are returned.
fn read_what_can_be_read(path: &Path) -> io::Result<(Vec<u8>, bool)> {
    let unreadable = |e: &io::Error| {
        use nix::errno::Errno;
        e.raw_os_error().is_some_and(|code| [Errno::EIO as i32, Errno::EBADMSG as i32].contains(&code))
    };
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::other("a segment past memory"))?;
    let mut bytes = vec![0u8; len];
    let mut lost_blocks = 0;
    for (i, block) in bytes.chunks_mut(READ_BLOCK).enumerate() {
        let mut tries = 0;
        loop {
            tries += 1;
            match read_block(&file, block, (i * READ_BLOCK) as u64) {
                Ok(()) => break,
                Err(e) if unreadable(&e) && tries < READ_TRIES => {}
                Err(e) if unreadable(&e) => {
                    block.fill(0);
                    lost_blocks += 1;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    if lost_blocks > 0 {
        tracing::error!(
            segment = %path.display(),
            blocks = lost_blocks,
            block_bytes = READ_BLOCK,
            "spool segment blocks the disk cannot read (a bad sector): the segment is kept in damaged/, its other records go on"
        );
    }
    Ok((bytes, lost_blocks > 0))
}

/// Fills `block` from `file` at `at`.
fn read_block(file: &File, block: &mut [u8], at: u64) -> io::Result<()> {
    #[cfg(test)]
    tests::unreadable_in_tests(file, at)?;
    std::os::unix::fs::FileExt::read_exact_at(file, block, at)
}

/// Segment `n` reads only to `valid_end`, where a frame is damaged (a bad sector, or pages a
/// power cut kept from the disk under `fsync = never`). When whole frames follow the damage, the
/// damaged bytes are kept in `damaged/` for a person to look at (at most `evidence_limit`
/// bytes in all, see [`keep_for_a_person`]) and the segment is rewritten without them, so that
/// the records after them are kept; the byte range taken out then. None when no whole frame
/// follows: a torn tail, for the caller to cut.
fn set_damage_aside(dir: &Path, n: u64, valid_end: u64, evidence_limit: u64) -> io::Result<Option<(u64, u64)>> {
    let path = segment_path(dir, n);
    let (bytes, unreadable) = read_what_can_be_read(&path)?;
    let start = valid_end as usize;
    let next_whole = (start + 1..bytes.len()).find(|&at| whole_frame_at(&bytes, at).is_some());
    let (resume, kept) = match (next_whole, unreadable) {
        (Some(resume), false) => {
            (resume, keep_for_a_person(dir, n, valid_end, Evidence::Bytes(&bytes[start..resume]), evidence_limit)?)
        }
        // Blocks the disk could not read: the segment itself is kept (nothing on disk is
        // destroyed, however far the unreadable blocks reach), and its readable records
        // before and after them written anew.
        (next_whole, true) => {
            let resume = next_whole.unwrap_or(bytes.len());
            (resume, keep_for_a_person(dir, n, valid_end, Evidence::Segment(&path), evidence_limit)?)
        }
        (None, false) => return Ok(None),
    };
    let tmp = dir.join(format!("{n:010}.seg.tmp"));
    let mut rewritten = File::create(&tmp)?;
    rewritten.write_all(&bytes[..start])?;
    rewritten.write_all(&bytes[resume..])?;
    rewritten.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    tracing::error!(
        segment = %path.display(),
        offset = valid_end,
        bytes = resume - start,
        set_aside = %kept.display(),
        "a damaged stretch of a spool segment: the records in it are lost, those after it kept"
    );
    Ok(Some((valid_end, resume as u64)))
}

/// Mends segment `n`, which reads only to `valid_end`: the damaged stretch set aside with the
/// records after it kept (its byte range returned, see [`set_damage_aside`]), or, where no
/// whole frame follows, the torn end cut off (None). The records in either are lost. A saved
/// read position `head` past `valid_end` in this segment is first saved at `valid_end`
/// (durably): the rewrite moves the bytes after the damage, and a crash before the caller
/// saves the moved position then re-sends records instead of skipping them.
fn mend_segment(
    dir: &Path,
    n: u64,
    valid_end: u64,
    head: Position,
    evidence_limit: u64,
) -> io::Result<Option<(u64, u64)>> {
    if head.segment == n && head.offset > valid_end {
        write_head_synced(dir, Position { segment: n, offset: valid_end })?;
    }
    if let Some(taken_out) = set_damage_aside(dir, n, valid_end, evidence_limit)? {
        return Ok(Some(taken_out));
    }
    let path = segment_path(dir, n);
    let file = OpenOptions::new().write(true).open(&path)?;
    tracing::warn!(
        segment = %path.display(),
        offset = valid_end,
        bytes = file.metadata()?.len().saturating_sub(valid_end),
        "cutting a torn or damaged end off a spool segment (a record being written at a crash, a bad sector): the records in it are lost"
    );
    file.set_len(valid_end)?;
    Ok(None)
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, finding records left by an earlier run.
    pub fn open(config: SpoolConfig) -> io::Result<Self> {
        fs::create_dir_all(&config.dir)?;
        let lock = lock_dir(&config.dir)?;
        remove_unfinished_rewrites(&config.dir)?;
        let mut numbers: Vec<u64> = fs::read_dir(&config.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        let mut head =
            read_head(&config.dir)?.unwrap_or(Position { segment: numbers.first().copied().unwrap_or(1), offset: 0 });
        let saved_head = head;
        let mut segments = Vec::new();
        let mut records = 0;
        for n in numbers {
            if n < head.segment {
                fs::remove_file(segment_path(&config.dir, n))?;
                continue;
            }
            let path = segment_path(&config.dir, n);
            // Count valid frames; set a damaged stretch aside and keep the records after it;
            // cut a torn tail.
            let frames = loop {
                let frames = read_frames(&path, 0, usize::MAX)?;
                let valid_end = frames.last().map_or(0, |(end, _)| *end);
                if fs::metadata(&path)?.len() == valid_end {
                    break frames;
                }
                match mend_segment(&config.dir, n, valid_end, head, config.evidence_limit())? {
                    // The saved position moves with the bytes after the stretch taken out.
                    Some((start, resume)) => {
                        if n == head.segment && head.offset > start {
                            head.offset = head.offset.saturating_sub(resume - start).max(start);
                        }
                    }
                    None => break frames,
                }
            };
            let valid_end = frames.last().map_or(0, |(end, _)| *end);
            if n == head.segment {
                // A crash can leave the saved position past what reached the disk, or off a
                // frame boundary: read from the last frame end at or before it, so no record
                // appended from here on is skipped.
                head.offset =
                    frames.iter().map(|(end, _)| *end).take_while(|end| *end <= head.offset).last().unwrap_or(0);
            }
            let from = if n == head.segment { head.offset } else { 0 };
            let pending = frames.iter().filter(|(end, _)| *end > from).count() as u64;
            records += pending;
            segments.push((n, valid_end, frames.len() as u64));
        }
        // A saved position in a segment that is gone (deleted by hand, say) reads the first
        // segment left from its start: an offset into another file would skip its records.
        if !segments.iter().any(|s: &(u64, u64, u64)| s.0 == head.segment) {
            head = Position { segment: segments.first().map_or(head.segment, |s| s.0), offset: 0 };
        }
        // Written whenever it moved (a mend may have saved another position meanwhile).
        if head != saved_head || read_head(&config.dir)? != Some(head) {
            write_head(&config.dir, head)?;
        }
        Ok(Self { config, _lock: lock, segments, head, writer: None, sealed: false, records })
    }

    /// Records waiting.
    pub fn len(&self) -> u64 {
        self.records
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Appends a record, applying the full policy.
    pub fn append(&mut self, envelope: &Envelope) -> io::Result<Appended> {
        let frame = encode(envelope)?;
        // Drop-oldest keeps the segment being written: a record that would not fit beside it
        // is refused before anything is dropped for it.
        let last_size = self.segments.last().map_or(0, |s| s.1);
        if last_size + frame.len() as u64 > self.config.max_bytes {
            return Ok(Appended::Rejected);
        }
        let mut dropped = 0;
        while self.bytes() + frame.len() as u64 > self.config.max_bytes {
            match self.config.when_full {
                FullPolicy::RejectNew => return Ok(Appended::Rejected),
                FullPolicy::DropOldest => {
                    if self.segments.len() <= 1 {
                        // Only the segment being written: nothing older to drop.
                        return Ok(Appended::Rejected);
                    }
                    dropped += self.drop_oldest_segment()?;
                }
            }
        }
        let needs_new = self.sealed
            || match self.segments.last() {
                None => true,
                Some(&(_, size, _)) => size + frame.len() as u64 > self.config.segment_bytes && size > 0,
            };
        if needs_new || self.writer.is_none() {
            let n = match self.segments.last() {
                Some(last) if !needs_new => last.0,
                last => last.map_or(self.head.segment.max(1), |s| s.0 + 1),
            };
            self.writer = None;
            let file = OpenOptions::new().create(true).append(true).open(segment_path(&self.config.dir, n))?;
            if self.config.fsync == FsyncPolicy::Always {
                // The file's directory entry (a new segment's, or one whose sync failed before),
                // so that a power cut cannot take a whole segment of records acknowledged as
                // durable.
                sync_dir(&self.config.dir)?;
            }
            // Listed only once its file is there: a replay reads every listed segment.
            if needs_new {
                self.segments.push((n, 0, 0));
                self.sealed = false;
            }
            self.writer = Some(file);
        }
        let (_, size, count) = self.segments.last_mut().expect("a segment");
        let writer = self.writer.as_mut().expect("writer");
        let written = write_frame(writer, &frame).and_then(|()| match self.config.fsync {
            FsyncPolicy::Always => writer.sync_data(),
            FsyncPolicy::Never => Ok(()),
        });
        if let Err(e) = written {
            // A frame written in part (a full disk) would hide every frame after it: cut it off.
            let cut = cut_to(writer, *size);
            self.writer = None;
            // Bytes the cut left stay past the segment's size: the next record goes to a
            // segment of its own. A torn frame there is never read and the next opening cuts
            // it; a whole one (written, its sync failed) may still be replayed: a record
            // reported failed that arrives after all, never one reported stored that is lost.
            self.sealed = cut.is_err();
            return Err(match cut {
                Ok(()) => e,
                Err(cut) => io::Error::new(e.kind(), format!("{e}; cutting the torn frame off failed too: {cut}")),
            });
        }
        *size += frame.len() as u64;
        *count += 1;
        self.records += 1;
        Ok(if dropped > 0 { Appended::StoredDroppingOldest(dropped) } else { Appended::Stored })
    }

    fn drop_oldest_segment(&mut self) -> io::Result<u64> {
        // What can fail comes first, so that a failure leaves the spool as it was.
        let (n, size, _) = self.segments[0];
        let from = if n == self.head.segment { self.head.offset } else { 0 };
        let lost = count_frames(&segment_path(&self.config.dir, n), from, size)?;
        fs::remove_file(segment_path(&self.config.dir, n))?;
        self.segments.remove(0);
        self.records -= lost.min(self.records);
        self.head = Position { segment: self.segments.first().map_or(n + 1, |s| s.0), offset: 0 };
        write_head(&self.config.dir, self.head)?;
        Ok(lost)
    }

    /// Up to `max` of the oldest records, with the position after the last one.
    pub fn peek(&mut self, max: usize) -> io::Result<(Vec<Envelope>, Position)> {
        let each = self.peek_each(max)?;
        let end = each.last().map_or(self.head, |(_, p)| *p);
        Ok((each.into_iter().map(|(e, _)| e).collect(), end))
    }

    /// Up to `max` of the oldest records, each with the position after it (to acknowledge a
    /// prefix of them).
    pub fn peek_each(&mut self, max: usize) -> io::Result<Vec<(Envelope, Position)>> {
        self.peek_within(max, u64::MAX)
    }

    /// As [`Spool::peek_each`], stopping before the records' bodies pass `max_bytes` (the first
    /// record is taken whatever its size). A segment whose frames end before its size was
    /// damaged since it was written: it is repaired (as at opening) and read on, never skipped.
    pub fn peek_within(&mut self, max: usize, max_bytes: u64) -> io::Result<Vec<(Envelope, Position)>> {
        let mut out = Vec::new();
        let mut budget = ReadBudget { records: max, bytes: max_bytes, nothing_read: true };
        for i in 0..self.segments.len() {
            let n = self.segments[i].0;
            if n < self.head.segment || budget.records == 0 {
                continue;
            }
            let mut from = if n == self.head.segment { self.head.offset } else { 0 };
            loop {
                let frames = read_frames_within(&segment_path(&self.config.dir, n), from, &mut budget)?;
                from = frames.last().map_or(from, |(after, _)| *after);
                out.extend(frames.into_iter().map(|(after, e)| (e, Position { segment: n, offset: after })));
                // Stopped by the budget, or at the segment's end: read on in the next one.
                if budget.records == 0 || from >= self.segments[i].1 {
                    break;
                }
                if let Err(e) = self.repair(i, from) {
                    // A full disk, say: the records before the damage still go; the rest waits
                    // for a repair that succeeds (never skipped, which would delete them).
                    if out.is_empty() {
                        return Err(e);
                    }
                    tracing::error!(error = %e, "cannot repair a damaged spool segment; replaying what comes before it");
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Segment `i` reads only to `valid_end`, short of its size: a bad sector, or a torn frame a
    /// failed append could not cut off. As at opening, the damaged stretch is set aside and the
    /// records after it kept, or a torn end cut off; the lost records leave the count. Each
    /// repair shortens the segment, so reading on ends.
    fn repair(&mut self, i: usize, valid_end: u64) -> io::Result<()> {
        let (n, _, count) = self.segments[i];
        let path = segment_path(&self.config.dir, n);
        if i + 1 == self.segments.len() {
            // The writer appends to this file, which is replaced or cut: it opens it again.
            self.writer = None;
        }
        mend_segment(&self.config.dir, n, valid_end, self.head, self.config.evidence_limit())?;
        let size = fs::metadata(&path)?.len();
        let frames = count_frames(&path, 0, size)?;
        self.segments[i] = (n, size, frames);
        self.records -= count.saturating_sub(frames).min(self.records);
        Ok(())
    }

    /// The records from the head up to `to`: whole segments by their count, the ends by their
    /// frames' headers (the bodies were read and checked when peeked).
    fn records_before(&self, to: Position) -> io::Result<u64> {
        let mut records = 0;
        for &(n, _, count) in self.segments.iter().filter(|s| (self.head.segment..=to.segment).contains(&s.0)) {
            let from = if n == self.head.segment { self.head.offset } else { 0 };
            records += match (from, n == to.segment) {
                (0, false) => count,
                (_, last) => {
                    count_frames(&segment_path(&self.config.dir, n), from, if last { to.offset } else { u64::MAX })?
                }
            };
        }
        Ok(records)
    }

    /// Marks every record before `to` (from [`Spool::peek`]) as delivered; `count` of them.
    pub fn ack(&mut self, to: Position, count: u64) -> io::Result<()> {
        if to <= self.head {
            // Behind the head already: the full spool dropped (and counted) those records.
            return Ok(());
        }
        // Fewer than `count` when the oldest segment was dropped between the peek and now.
        let acked = self.records_before(to)?.min(count);
        self.head = to;
        self.records -= acked.min(self.records);
        // Delete segments wholly behind the head, the one being written too once everything in
        // it is acknowledged (its bytes would count against max_bytes for good otherwise): the
        // next record starts a new one.
        while let Some(&(n, size, _)) = self.segments.first() {
            if !(n < to.segment || (n == to.segment && to.offset >= size)) {
                break;
            }
            if self.segments.len() == 1 {
                self.writer = None;
            }
            fs::remove_file(segment_path(&self.config.dir, n))?;
            self.segments.remove(0);
            if n == to.segment {
                self.head = Position { segment: self.segments.first().map_or(n + 1, |s| s.0), offset: 0 };
            }
        }
        write_head(&self.config.dir, self.head)
    }
}

/// Takes the directory's lock, or explains who holds it.
/// Removes segment rewrites a crash left unfinished (`*.seg.tmp`): the segment they were to
/// replace is still whole, and is mended again when read.
fn remove_unfinished_rewrites(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") && path.to_string_lossy().ends_with(".seg.tmp") {
            tracing::warn!(file = %path.display(), "removing a segment rewrite a crash left unfinished");
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "the spool directory {} is in use by another server ({} is locked): give each server its own spool dir",
                dir.display(),
                path.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

fn read_head(dir: &Path) -> io::Result<Option<Position>> {
    match fs::read_to_string(dir.join("head")) {
        Ok(text) => {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u64>());
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
                _ => Ok(None),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_head(dir: &Path, head: Position) -> io::Result<()> {
    let tmp = dir.join("head.tmp");
    fs::write(&tmp, format!("{} {}\n", head.segment, head.offset))?;
    fs::rename(tmp, dir.join("head"))
}

/// [`write_head`], on the disk when it returns.
fn write_head_synced(dir: &Path, head: Position) -> io::Result<()> {
    write_head(dir, head)?;
    File::open(dir.join("head"))?.sync_all()?;
    sync_dir(dir)
}

/// Appends `frame` to the segment `writer` writes.
fn write_frame(writer: &mut File, frame: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if let Some(written) = tests::torn_write_in_tests() {
        writer.write_all(&frame[..written.min(frame.len())])?;
        return Err(io::Error::from_raw_os_error(28));
    }
    writer.write_all(frame)
}

/// Cuts the segment `writer` writes back to `size` bytes.
fn cut_to(writer: &File, size: u64) -> io::Result<()> {
    #[cfg(test)]
    tests::failed_cut_in_tests()?;
    writer.set_len(size)
}

/// Makes the entries of `dir` (files created or renamed in it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks that read as a bad sector does (by file inode and offset), for the tests.
    static UNREADABLE: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

    /// An EIO for the block of `file` at `at` when a test made it unreadable.
    pub(super) fn unreadable_in_tests(file: &File, at: u64) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let inode = file.metadata()?.ino();
        if UNREADABLE.lock().unwrap().contains(&(inode, at)) {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    std::thread_local! {
        /// Appends that fill the disk part-way on this thread: the bytes written first.
        static TORN_WRITES: std::cell::RefCell<std::collections::VecDeque<usize>> = Default::default();
        /// Cuts that fail on this thread, one each.
        static FAILED_CUTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The bytes the next append writes before the disk is full (ENOSPC), when a test said so.
    pub(super) fn torn_write_in_tests() -> Option<usize> {
        TORN_WRITES.with(|t| t.borrow_mut().pop_front())
    }

    /// An error for a cut when a test asked for one.
    pub(super) fn failed_cut_in_tests() -> io::Result<()> {
        FAILED_CUTS.with(|c| match c.get() {
            0 => Ok(()),
            n => {
                c.set(n - 1);
                Err(io::Error::from_raw_os_error(5))
            }
        })
    }

    /// A record reported stored is never cut off by a later failed append, however its
    /// segment's earlier failure left it: a cut that failed leaves the torn bytes past the
    /// segment's size, and the next record goes to a new segment, not behind them (where the
    /// next failed append's cut, by the segment's size, would take its end).
    #[test]
    fn a_record_stored_after_a_failed_cut_survives_the_next_failed_append() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SpoolConfig { segment_bytes: 1 << 20, ..config(dir.path(), 1 << 20, FullPolicy::RejectNew) };
        let mut s = Spool::open(config()).unwrap();
        assert_eq!(s.append(&env(0)).unwrap(), Appended::Stored);
        // The disk fills 7 bytes into the next record, and the cut fails too.
        TORN_WRITES.with(|t| t.borrow_mut().push_back(7));
        FAILED_CUTS.with(|c| c.set(1));
        let e = s.append(&env(1)).unwrap_err();
        assert!(e.to_string().contains("cutting the torn frame off failed too"), "{e}");
        assert_eq!(s.append(&env(2)).unwrap(), Appended::Stored);
        // The disk fills again; this cut works.
        TORN_WRITES.with(|t| t.borrow_mut().push_back(7));
        s.append(&env(3)).unwrap_err();
        assert_eq!(s.append(&env(4)).unwrap(), Appended::Stored);
        let (read, _) = s.peek(10).unwrap();
        assert_eq!(read, [env(0), env(2), env(4)]);
        drop(s);
        let mut s = Spool::open(config()).unwrap();
        let (read, _) = s.peek(10).unwrap();
        assert_eq!(read, [env(0), env(2), env(4)], "after opening again, the torn bytes cut off");
        assert_eq!(s.len(), 3);
    }

    fn env(i: u32) -> Envelope {
        Envelope { topic: "t".into(), key: format!("k{i}"), payload: i.to_le_bytes().repeat(10) }
    }

    fn config(dir: &Path, max_bytes: u64, when_full: FullPolicy) -> SpoolConfig {
        SpoolConfig { dir: dir.to_path_buf(), max_bytes, segment_bytes: 500, fsync: FsyncPolicy::Always, when_full }
    }

    #[test]
    fn records_come_back_in_order_across_reopen_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        for i in 0..100 {
            assert_eq!(s.append(&env(i)).unwrap(), Appended::Stored);
        }
        let (first, pos) = s.peek(30).unwrap();
        assert_eq!(first, (0..30).map(env).collect::<Vec<_>>());
        s.ack(pos, 30).unwrap();
        drop(s);
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!(s.len(), 70);
        let (rest, pos) = s.peek(1000).unwrap();
        assert_eq!(rest, (30..100).map(env).collect::<Vec<_>>());
        s.ack(pos, 70).unwrap();
        assert!(s.is_empty());
        assert!(s.bytes() <= 500, "acknowledged segments are deleted");
    }

    #[test]
    fn a_read_bounded_in_bytes_takes_the_oldest_records_in_order_and_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        // Sizes across several 500-byte segments: a large record between small ones.
        let sized =
            |i: u32, len: usize| Envelope { topic: "t".into(), key: format!("k{i}"), payload: vec![i as u8; len] };
        let records: Vec<Envelope> =
            [(0, 100), (1, 100), (2, 400), (3, 10), (4, 100), (5, 100)].iter().map(|&(i, n)| sized(i, n)).collect();
        for r in &records {
            assert_eq!(s.append(r).unwrap(), Appended::Stored);
        }
        assert!(s.segments.len() >= 3, "the records span segments: {:?}", s.segments);
        let body = |e: &Envelope| (4 + e.topic.len() + e.key.len() + e.payload.len()) as u64;
        let mut taken =
            |max_bytes: u64| s.peek_within(100, max_bytes).unwrap().into_iter().map(|(e, _)| e).collect::<Vec<_>>();
        // Room for the first two, not the large third: the small fourth is not taken past it.
        assert_eq!(taken(body(&records[0]) + body(&records[1]) + 50), records[..2]);
        assert_eq!(taken(records[..3].iter().map(body).sum()), records[..3]);
        // A budget smaller than the first record still takes it.
        assert_eq!(taken(1), records[..1]);
        assert_eq!(taken(u64::MAX), records, "unbounded: everything");
        assert_eq!(s.peek_within(2, u64::MAX).unwrap().len(), 2, "bounded in records too");
    }

    #[test]
    fn a_large_spool_left_by_an_earlier_run_is_read_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { dir: dir.path().into(), ..Default::default() };
        let mut s = Spool::open(config.clone()).unwrap();
        for i in 0..20_000 {
            s.append(&env(i)).unwrap();
        }
        drop(s);
        let mut s = Spool::open(config).unwrap();
        assert_eq!(s.len(), 20_000);
        let mut read = Vec::new();
        loop {
            let each = s.peek_within(3_000, 32 << 20).unwrap();
            let Some(&(_, last)) = each.last() else { break };
            s.ack(last, each.len() as u64).unwrap();
            read.extend(each.into_iter().map(|(e, _)| e));
            assert!(read.len() <= 20_000, "records read again");
        }
        assert_eq!(read, (0..20_000).map(env).collect::<Vec<_>>());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_directory_holds_one_spool_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        let Err(e) = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)) else {
            panic!("a second spool on a locked directory must be refused");
        };
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("in use by another server"), "{e}");
        drop(first);
        Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).expect("free once the first is dropped");
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        s.append(&env(1)).unwrap();
        s.append(&env(2)).unwrap();
        drop(s);
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!(s.peek(10).unwrap().0, vec![env(1)]);
    }

    #[test]
    fn a_saved_position_past_a_segment_cut_short_by_a_crash_skips_no_later_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        for i in 0..4 {
            s.append(&env(i)).unwrap();
        }
        let each = s.peek_each(3).unwrap();
        let (after_first, end) = (each[0].1, each[2].1);
        s.ack(end, 3).unwrap();
        drop(s);
        // A power cut: the position saved, but the segment on disk holds only the first frame
        // (the fourth record, never synced, is lost with the rest).
        let seg = segment_path(dir.path(), 1);
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(after_first.offset).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert!(s.is_empty());
        for i in 10..13 {
            s.append(&env(i)).unwrap();
        }
        assert_eq!(s.peek(10).unwrap().0, (10..13).map(env).collect::<Vec<_>>(), "every record appended after");
        // A position off a frame boundary reads from the frame end before it.
        drop(s);
        write_head(dir.path(), Position { segment: 1, offset: after_first.offset + 3 }).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!(s.peek(10).unwrap().0, (10..13).map(env).collect::<Vec<_>>());
    }

    #[test]
    fn an_acknowledgement_of_records_dropped_meanwhile_counts_only_those_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::DropOldest)).unwrap();
        for i in 0..40 {
            s.append(&env(i)).unwrap();
        }
        assert!(s.segments.len() >= 3, "{:?}", s.segments);
        let first_segment = s.segments[0].2;
        // The replay peeks 30 records (past the first segment), and before it acknowledges them
        // the full spool drops the oldest segment.
        let (peeked, to) = s.peek(30).unwrap();
        assert!(to.segment > s.segments[0].0);
        assert_eq!(s.drop_oldest_segment().unwrap(), first_segment);
        s.ack(to, peeked.len() as u64).unwrap();
        assert_eq!(s.len(), 10, "40 records, {first_segment} dropped, {} delivered of those left", 30 - first_segment);
        assert_eq!(s.peek(100).unwrap().0, (30..40).map(env).collect::<Vec<_>>());
        // An acknowledgement wholly behind the head changes nothing.
        let (_, end) = s.peek(5).unwrap();
        s.ack(end, 5).unwrap();
        s.ack(to, 30).unwrap();
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn a_key_too_long_for_its_length_field_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        let long = Envelope { topic: "t".into(), key: "k".repeat(70_000), payload: vec![1, 2, 3] };
        let e = s.append(&long).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("key of 70000 bytes"), "{e}");
        s.append(&env(1)).unwrap();
        assert_eq!((s.len(), s.peek(10).unwrap().0), (1, vec![env(1)]));
    }

    /// Runs in a child process of its own: the file size limit it sets holds for the whole process.
    #[test]
    fn a_frame_the_disk_took_in_part_is_cut_off() {
        const CHILD: &str = "VIGIL_SPOOL_TEST_FILE_SIZE_LIMIT";
        const NAME: &str = "spool::tests::a_frame_the_disk_took_in_part_is_cut_off";
        if std::env::var_os(CHILD).is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(exe)
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let printed = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
            assert!(printed.contains("1 passed"), "the child ran the test: {printed}");
            return;
        }
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        use nix::sys::signal::{SigHandler, Signal, signal};
        // Over the limit, write(2) then fails with EFBIG instead of the signal killing the process.
        unsafe { signal(Signal::SIGXFSZ, SigHandler::SigIgn) }.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let big = SpoolConfig { segment_bytes: 1 << 20, ..config(dir.path(), 1 << 20, FullPolicy::RejectNew) };
        let mut s = Spool::open(big.clone()).unwrap();
        let record = |i: u32| Envelope { topic: "t".into(), key: format!("k{i}"), payload: vec![i as u8; 1000] };
        s.append(&record(1)).unwrap();
        let seg = segment_path(dir.path(), 1);
        let one = fs::metadata(&seg).unwrap().len();
        let (soft, hard) = getrlimit(Resource::RLIMIT_FSIZE).unwrap();
        // Room for half of the next frame: the disk takes part of it, then refuses.
        setrlimit(Resource::RLIMIT_FSIZE, one + one / 2, hard).unwrap();
        let e = s.append(&record(2)).unwrap_err();
        setrlimit(Resource::RLIMIT_FSIZE, soft, hard).unwrap();
        assert_eq!(e.raw_os_error(), Some(nix::libc::EFBIG), "{e}");
        assert_eq!(fs::metadata(&seg).unwrap().len(), one, "the part written is cut off");
        assert_eq!(s.len(), 1);
        s.append(&record(3)).unwrap();
        assert_eq!(s.peek(10).unwrap().0, vec![record(1), record(3)]);
        drop(s);
        let mut s = Spool::open(big).unwrap();
        assert_eq!((s.len(), s.peek(10).unwrap().0), (2, vec![record(1), record(3)]), "and after reopening");
    }

    #[test]
    fn a_damaged_frame_is_set_aside_and_the_records_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        for i in 0..5 {
            s.append(&env(i)).unwrap();
        }
        let each = s.peek_each(5).unwrap();
        drop(s);
        // A bad sector in the third record's payload; then the same in the first one.
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let third = each[1].1.offset as usize;
        bytes[third + 20] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        let kept = [0, 1, 3, 4].map(env).to_vec();
        assert_eq!((s.len(), s.peek(10).unwrap().0), (4, kept.clone()), "only the damaged record is lost");
        let aside = dir.path().join("damaged").join(format!("{:010}-{third}.bin", 1));
        let frame_len = (each[2].1.offset - each[1].1.offset) as usize;
        assert_eq!(fs::read(&aside).unwrap(), bytes[third..third + frame_len], "the damaged bytes kept for a person");
        drop(s);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!(s.peek(10).unwrap().0, kept[1..]);
        // Acknowledged up to record 3; then damage before that position: record 4 still waits.
        let each = s.peek_each(2).unwrap();
        s.ack(each[1].1, 2).unwrap();
        drop(s);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        // A crash while mending it, after the segment was rewritten, before the moved position
        // was saved: the records after the position are read again, none skipped.
        let copy = tempfile::tempdir().unwrap();
        for name in ["head", "0000000001.seg"] {
            fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        let head = read_head(copy.path()).unwrap().unwrap();
        assert!(mend_segment(copy.path(), 1, 0, head, 1 << 20).unwrap().is_some());
        let mut crashed = Spool::open(config(copy.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!(crashed.peek(10).unwrap().0, [3, 4].map(env), "record 3 again, record 4 not skipped");
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!((s.len(), s.peek(10).unwrap().0), (1, vec![env(4)]), "the saved position moved with the bytes");
        s.append(&env(9)).unwrap();
        let (all, end) = s.peek(10).unwrap();
        assert_eq!(all, [4, 9].map(env));
        s.ack(end, 2).unwrap();
        assert!(s.is_empty());
        // Three stretches, two of them at the segment's start: each kept under its own name.
        let mut names: Vec<String> = fs::read_dir(dir.path().join("damaged"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["0000000001-0.2.bin".to_string(), "0000000001-0.bin".into(), format!("0000000001-{third}.bin")]
        );
    }

    /// Makes a block of a file (by inode) read as a bad sector does while it lives.
    struct Unreadable(u64, u64);

    impl Unreadable {
        fn block(path: &Path, at: u64) -> Self {
            use std::os::unix::fs::MetadataExt;
            let inode = fs::metadata(path).unwrap().ino();
            UNREADABLE.lock().unwrap().push((inode, at));
            Self(inode, at)
        }
    }

    impl Drop for Unreadable {
        fn drop(&mut self) {
            UNREADABLE.lock().unwrap().retain(|b| *b != (self.0, self.1));
        }
    }

    /// A bad sector: the sequential read stops at the block the disk cannot read (here its bytes
    /// are also altered on disk, as a read error ends the read there), and the mend reads around
    /// it. The records wholly outside the block are kept, at opening and while replaying, and
    /// the segment as it was is kept in `damaged/`; in the last block, where no record follows,
    /// the records before it are kept and nothing on disk is cut off.
    #[test]
    fn records_around_a_block_the_disk_cannot_read_are_kept() {
        let record = |i: u32| Envelope { topic: "t".into(), key: format!("k{i}"), payload: vec![i as u8; 700] };
        // One segment of them all.
        let settings =
            |dir: &Path| SpoolConfig { segment_bytes: 1 << 20, ..config(dir, 1 << 20, FullPolicy::RejectNew) };
        let block = READ_BLOCK as u64;
        for (bad, while_running) in [(1, false), (1, true), (3, false), (3, true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(settings(dir.path())).unwrap();
            for i in 0..20 {
                s.append(&record(i)).unwrap();
            }
            let ends: Vec<u64> = s.peek_each(20).unwrap().iter().map(|(_, p)| p.offset).collect();
            assert!(ends[19] > 3 * block && ends[19] < 4 * block, "block 3 is the last: {}", ends[19]);
            let running = while_running.then_some(s);
            let seg = segment_path(dir.path(), 1);
            let mut bytes = fs::read(&seg).unwrap();
            bytes[(bad * block) as usize + 100] ^= 0xff;
            fs::write(&seg, &bytes).unwrap();
            let _unreadable = Unreadable::block(&seg, bad * block);
            let mut s = match running {
                Some(s) => s,
                None => Spool::open(settings(dir.path())).unwrap(),
            };
            // Records whose frame touches the bad block are lost.
            let starts = std::iter::once(0).chain(ends.iter().copied());
            let kept: Vec<Envelope> = starts
                .zip(&ends)
                .enumerate()
                .filter(|(_, (start, end))| **end <= bad * block || *start >= (bad + 1) * block)
                .map(|(i, _)| record(i as u32))
                .collect();
            assert!(kept.len() >= 12 && kept.len() < 20, "{} kept", kept.len());
            let case = format!("block {bad}, while running: {while_running}");
            assert_eq!(s.peek(20).unwrap().0, kept, "{case}");
            assert_eq!(s.len(), kept.len() as u64, "{case}");
            let damaged: Vec<PathBuf> =
                fs::read_dir(dir.path().join("damaged")).unwrap().map(|e| e.unwrap().path()).collect();
            assert_eq!(damaged.len(), 1, "{case}: {damaged:?}");
            assert!(damaged[0].to_string_lossy().ends_with(".seg"), "{case}: {damaged:?}");
            assert_eq!(fs::read(&damaged[0]).unwrap(), bytes, "{case}: the segment as it was, kept for a person");
        }
    }

    #[test]
    fn damaged_stretches_kept_for_a_person_take_at_most_a_sixteenth_of_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = config(dir.path(), 1920, FullPolicy::RejectNew);
        let limit = settings.evidence_limit();
        assert_eq!(limit, 120);
        let mut s = Spool::open(settings.clone()).unwrap();
        for i in 0..8 {
            s.append(&env(i)).unwrap();
        }
        let frame = s.peek_each(1).unwrap()[0].1.offset; // the first record's end
        assert!(2 * frame <= limit && 3 * frame > limit, "frames of {frame} bytes: two fit the limit, three do not");
        drop(s);
        // A rewrite a crash left unfinished is removed at opening.
        let unfinished = dir.path().join("0000000001.seg.tmp");
        fs::write(&unfinished, b"half a rewrite").unwrap();
        // The first record damaged, six times over: the newest stretches stay, within the limit.
        let mut stretches = Vec::new();
        for round in 0..6 {
            let seg = segment_path(dir.path(), 1);
            let mut bytes = fs::read(&seg).unwrap();
            bytes[10] ^= 0xff;
            fs::write(&seg, &bytes).unwrap();
            stretches.push(bytes[..frame as usize].to_vec());
            std::thread::sleep(std::time::Duration::from_millis(20)); // distinct modification times
            let mut s = Spool::open(settings.clone()).unwrap();
            assert!(!unfinished.exists(), "the unfinished rewrite is gone");
            assert_eq!(s.len(), 7 - round as u64, "one record lost per stretch");
            assert_eq!(s.peek(1).unwrap().0, [env(round + 1)]);
            let mut kept: Vec<Vec<u8>> = fs::read_dir(dir.path().join("damaged"))
                .unwrap()
                .map(|e| fs::read(e.unwrap().path()).unwrap())
                .collect();
            assert!(kept.iter().map(Vec::len).sum::<usize>() as u64 <= limit, "round {round}: {kept:?}");
            // The newest two stretches (each a different record's damaged frame), the older gone.
            let mut newest = stretches[stretches.len().saturating_sub(2)..].to_vec();
            kept.sort();
            newest.sort();
            assert_eq!(kept, newest, "round {round}");
        }
    }

    #[test]
    fn damage_found_while_running_costs_only_the_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        for i in 0..30 {
            s.append(&env(i)).unwrap();
        }
        let each = s.peek_each(30).unwrap();
        let last = each.last().unwrap().1.segment;
        assert!(last > 2, "the records span segments: {:?}", s.segments);
        // A bad sector in the third record of the first segment, and in the second record of
        // the segment being written, while the spool runs.
        let damage = |at: Position| {
            let seg = segment_path(dir.path(), at.segment);
            let mut bytes = fs::read(&seg).unwrap();
            bytes[at.offset as usize + 20] ^= 0xff;
            fs::write(&seg, &bytes).unwrap();
        };
        assert_eq!(each[1].1.segment, 1);
        damage(each[1].1);
        let first_in_last = each.iter().position(|(_, p)| p.segment == last).unwrap();
        assert_eq!(each[first_in_last + 1].1.segment, last, "two records or more in the last segment");
        damage(each[first_in_last].1);
        let lost = [2, first_in_last as u32 + 1];
        let kept: Vec<Envelope> = (0..30).filter(|i| !lost.contains(i)).map(env).collect();
        // The records after each damaged one are read, in order; skipping them, the
        // acknowledgement below would delete them.
        let (all, end) = s.peek(100).unwrap();
        assert_eq!(all, kept);
        assert_eq!(s.len(), 28, "the damaged records leave the count");
        // The segment being written takes records after the repair, at its new end.
        s.append(&env(99)).unwrap();
        let (more, _) = s.peek(100).unwrap();
        assert_eq!(more.last(), Some(&env(99)));
        assert_eq!(more[..28], kept[..]);
        s.ack(end, 28).unwrap();
        assert_eq!((s.len(), s.peek(100).unwrap().0), (1, vec![env(99)]));
        drop(s);
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        assert_eq!((s.len(), s.peek(100).unwrap().0), (1, vec![env(99)]), "and after reopening");
        assert_eq!(fs::read_dir(dir.path().join("damaged")).unwrap().count(), 2, "both stretches kept for a person");
    }

    #[test]
    fn an_emptied_spool_takes_records_again_whatever_its_size_settings() {
        // One segment's worth of room: once full and replayed, the acknowledged segment must not
        // keep counting against max_bytes.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 500, FullPolicy::RejectNew)).unwrap();
        let stored = (0..100).take_while(|&i| s.append(&env(i)).unwrap() == Appended::Stored).count();
        assert!(stored > 3, "{stored}");
        assert_eq!(s.append(&env(100)).unwrap(), Appended::Rejected, "full");
        let (all, end) = s.peek(1000).unwrap();
        s.ack(end, all.len() as u64).unwrap();
        assert_eq!((s.len(), s.bytes()), (0, 0));
        assert_eq!(s.append(&env(200)).unwrap(), Appended::Stored, "room again once replayed");
        drop(s);
        let mut s = Spool::open(config(dir.path(), 500, FullPolicy::RejectNew)).unwrap();
        assert_eq!(s.peek(10).unwrap().0, vec![env(200)]);
    }

    #[test]
    fn drop_oldest_drops_nothing_for_a_record_that_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1000, FullPolicy::DropOldest)).unwrap();
        for i in 0..12 {
            assert_eq!(s.append(&env(i)).unwrap(), Appended::Stored);
        }
        let before = s.len();
        let huge = Envelope { topic: "t".into(), key: "k".into(), payload: vec![0; 990] };
        assert_eq!(s.append(&huge).unwrap(), Appended::Rejected);
        assert_eq!(s.len(), before, "nothing dropped for it");
        assert_eq!(s.peek(1).unwrap().0, vec![env(0)]);
    }

    #[test]
    fn a_saved_position_in_a_segment_that_is_gone_reads_what_follows_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap());
        write_head(dir.path(), Position { segment: 5, offset: 300 }).unwrap();
        let mut s = Spool::open(config(dir.path(), 1 << 20, FullPolicy::RejectNew)).unwrap();
        for i in 0..3 {
            s.append(&env(i)).unwrap();
        }
        assert_eq!(s.peek(10).unwrap().0, (0..3).map(env).collect::<Vec<_>>());
    }

    #[test]
    fn full_policies_reject_new_or_drop_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1000, FullPolicy::RejectNew)).unwrap();
        let stored = (0..100).filter(|&i| s.append(&env(i)).unwrap() == Appended::Stored).count();
        assert!(stored > 5 && stored < 100);
        assert_eq!(s.peek(1).unwrap().0, vec![env(0)], "the oldest is kept");

        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(config(dir.path(), 1000, FullPolicy::DropOldest)).unwrap();
        let mut dropped = 0;
        for i in 0..100 {
            match s.append(&env(i)).unwrap() {
                Appended::StoredDroppingOldest(n) => dropped += n,
                Appended::Stored => {}
                Appended::Rejected => panic!("drop-oldest never rejects a small record"),
            }
        }
        assert!(s.bytes() <= 1000);
        assert_eq!(s.len() + dropped, 100);
        let (kept, _) = s.peek(1000).unwrap();
        assert_eq!(kept.last(), Some(&env(99)), "the newest is kept");
    }
}
