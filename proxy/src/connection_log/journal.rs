//! Where a region keeps its connection records until the coordinator has
//! them: files under `<data dir>/connection-log/<replica id>/`.
//!
//! - `segments/<n>.jsonl`: ended sessions, one record per line. Each record is
//!   written with one `write` as its session ends, so it is in the kernel's
//!   page cache at once: a SIGKILL of the proxy loses none of them (a crash
//!   of the machine can lose what was not yet written back; sealed segments
//!   are fsynced). The shipper seals the segment being written and sends
//!   sealed ones oldest first, deleting each once the coordinator stored it.
//! - `open/<id>.json`: sessions open now (the record as it began). Deleted
//!   when the session's record is written; one found at start belongs to a
//!   session the previous process was killed in the middle of: it is written
//!   as ended `region_killed`, without the counts it had (the bound on what a
//!   SIGKILL loses).
//!
//! Disk is bounded (`--connection-log-max-disk`): past it a record is dropped
//! and counted, never silently.

use super::Counters;
use meridian_regions::connection_log::{Ending, Record};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A segment is sealed past this size even between shipments, so a long
/// outage leaves files the shipper can read and send in a few batches.
const SEGMENT_BYTES: u64 = 4 << 20;

pub struct Journal {
    dir: PathBuf,
    max_bytes: u64,
    active: Mutex<Active>,
    counters: Counters,
    /// Held for the process's life: one proxy per directory.
    _lock: nix::fcntl::Flock<File>,
}

/// The segment being written.
#[derive(Default)]
struct Active {
    file: Option<File>,
    /// Its number; the next segment's is one more.
    number: u64,
    bytes: u64,
}

/// A sealed segment waiting to be shipped.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    bytes: u64,
}

impl Journal {
    /// Opens (creating) the journal in `dir`, counting what a previous process
    /// left and writing its open sessions as killed.
    pub fn open(dir: &Path, max_bytes: u64, counters: Counters) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("segments"))?;
        std::fs::create_dir_all(dir.join("open"))?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{} is in use by another proxy (give each replica its own --data-dir)", dir.display()),
            )
        })?;
        let journal = Self { dir: dir.to_owned(), max_bytes, active: Mutex::default(), counters, _lock: lock };
        let mut last = 0;
        for segment in journal.segments()? {
            let (number, records) = (segment_number(&segment.path).unwrap_or(0), count_lines(&segment.path)?);
            last = last.max(number);
            journal.counters.buffered.add(records as i64);
            journal.counters.spilled_bytes.add(segment.bytes as i64);
        }
        journal.lock().number = last;
        let killed = journal.end_open(Ending::RegionKilled)?;
        journal.counters.killed.inc_by(killed);
        if killed > 0 {
            tracing::warn!(
                sessions = killed,
                "the previous process was killed with sessions open: logged without their counts"
            );
        }
        Ok(journal)
    }

    /// Writes an ended session's record; false if it was dropped (and counted).
    pub fn append(&self, record: &Record) -> bool {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(_) => return self.drop_one(),
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if self.counters.spilled_bytes.get() as u64 + len > self.max_bytes {
            return self.drop_one();
        }
        let mut active = self.lock();
        if active.file.is_none() || active.bytes >= SEGMENT_BYTES {
            let number = active.number + 1;
            match OpenOptions::new().create(true).append(true).open(self.segment_path(number)) {
                Ok(file) => *active = Active { file: Some(file), number, bytes: 0 },
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), "cannot open a connection-log segment: {e}");
                    return self.drop_one();
                }
            }
        }
        let Some(file) = active.file.as_mut() else { return self.drop_one() };
        if let Err(e) = file.write_all(&line) {
            tracing::error!(dir = %self.dir.display(), "cannot write a connection record: {e}");
            return self.drop_one();
        }
        active.bytes += len;
        self.counters.buffered.inc();
        self.counters.spilled_bytes.add(len as i64);
        true
    }

    /// Notes a session as open until [`Journal::close`] (so a kill leaves a trace of it).
    pub fn open_session(&self, record: &Record) {
        let written = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(self.open_path(record.id), bytes));
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), "cannot note an open session: {e}");
        }
    }

    /// Writes the ended session's record and forgets it as open.
    pub fn close(&self, record: &Record) {
        self.append(record);
        let _ = std::fs::remove_file(self.open_path(record.id));
    }

    /// Writes every session noted as open as ended now with `ending`; how many.
    pub fn end_open(&self, ending: Ending) -> std::io::Result<u64> {
        let now = chrono::Utc::now();
        let mut ended = 0;
        for entry in std::fs::read_dir(self.dir.join("open"))? {
            let path = entry?.path();
            let record = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            if let Some(mut record) = record {
                record.ended_at = now.max(record.started_at);
                record.ending = ending;
                self.append(&record);
                ended += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(ended)
    }

    /// Ends the segment being written (fsynced), so the shipper may send it.
    pub fn seal(&self) {
        let mut active = self.lock();
        if let Some(file) = active.file.take() {
            if let Err(e) = file.sync_data() {
                tracing::warn!("cannot sync a connection-log segment: {e}");
            }
        }
    }

    /// Sealed segments, oldest first.
    pub fn sealed(&self) -> std::io::Result<Vec<Segment>> {
        let active = {
            let a = self.lock();
            a.file.as_ref().map(|_| a.number)
        };
        let mut segments = self.segments()?;
        segments.retain(|s| Some(segment_number(&s.path).unwrap_or(0)) != active);
        Ok(segments)
    }

    /// The records of a sealed segment. A line that does not parse (a write
    /// cut by a kill) is dropped and counted.
    pub fn read(&self, segment: &Segment) -> std::io::Result<Vec<Record>> {
        let text = std::fs::read(&segment.path)?;
        let mut records = Vec::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice(line) {
                Ok(record) => records.push(record),
                Err(_) => {
                    self.counters.dropped.inc();
                    self.counters.buffered.dec();
                }
            }
        }
        Ok(records)
    }

    /// Deletes a segment the coordinator has stored (`records` of them).
    pub fn remove(&self, segment: &Segment, records: u64) {
        if let Err(e) = std::fs::remove_file(&segment.path) {
            tracing::error!(path = %segment.path.display(), "cannot delete a shipped segment: {e}");
            return;
        }
        self.counters.buffered.sub(records as i64);
        self.counters.spilled_bytes.sub(segment.bytes as i64);
    }

    fn segments(&self) -> std::io::Result<Vec<Segment>> {
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("segments"))? {
            let entry = entry?;
            let path = entry.path();
            if segment_number(&path).is_some() {
                segments.push(Segment { bytes: entry.metadata()?.len(), path });
            }
        }
        segments.sort_by_key(|s| segment_number(&s.path));
        Ok(segments)
    }

    fn drop_one(&self) -> bool {
        self.counters.dropped.inc();
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join("segments").join(format!("{number:020}.jsonl"))
    }

    fn open_path(&self, id: uuid::Uuid) -> PathBuf {
        self.dir.join("open").join(format!("{id}.json"))
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(".jsonl")?.parse().ok()
}

fn count_lines(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::read(path)?.iter().filter(|&&b| b == b'\n').count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_regions::connection_log::{Kind, Statuses};

    fn record(target: &str) -> Record {
        let now = chrono::Utc::now();
        Record {
            id: uuid::Uuid::new_v4(),
            kind: Kind::Tcp,
            started_at: now,
            ended_at: now,
            user_id: None,
            owner: "alice".into(),
            workspace: "dev".into(),
            agent: Some("main".into()),
            agent_id: None,
            target: target.into(),
            replica_id: uuid::Uuid::nil(),
            client_addr: None,
            user_agent: None,
            bytes_up: 1,
            bytes_down: 2,
            requests: 1,
            statuses: Statuses::default(),
            ending: Ending::Closed,
            reason: None,
        }
    }

    #[test]
    fn records_survive_a_new_process_and_open_sessions_come_back_killed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = Journal::open(dir.path(), 1 << 20, Counters::new()).expect("opens");
        assert!(first.append(&record("8080")));
        let open = record("ssh");
        first.open_session(&open);
        first.seal();
        first.append(&record("8081"));
        drop(first); // as a SIGKILL would: nothing flushed or closed on the way out

        let second = Journal::open(dir.path(), 1 << 20, Counters::new()).expect("opens again");
        assert_eq!(second.counters.killed.get(), 1, "the open session was found");
        second.seal();
        let mut found = Vec::new();
        for segment in second.sealed().expect("lists") {
            found.extend(second.read(&segment).expect("reads"));
        }
        let targets: Vec<_> = found.iter().map(|r| (r.target.as_str(), r.ending)).collect();
        assert_eq!(
            targets,
            [("8080", Ending::Closed), ("8081", Ending::Closed), ("ssh", Ending::RegionKilled)],
            "every record, in order, the open one ended as killed"
        );
        assert_eq!(second.counters.buffered.get(), 3);
    }

    #[test]
    fn past_the_disk_bound_records_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let line = serde_json::to_vec(&record("8080")).expect("serializes").len() as u64 + 1;
        let journal = Journal::open(dir.path(), line * 2, Counters::new()).expect("opens");
        let kept: Vec<bool> = (0..4).map(|_| journal.append(&record("8080"))).collect();
        assert_eq!(kept, [true, true, false, false]);
        assert_eq!(journal.counters.dropped.get(), 2);
        journal.seal();
        let segments = journal.sealed().expect("lists");
        let records: u64 = segments.iter().map(|s| journal.read(s).expect("reads").len() as u64).sum();
        for s in &segments {
            journal.remove(s, 2);
        }
        assert_eq!(records, 2);
        assert_eq!(journal.counters.spilled_bytes.get(), 0, "shipped segments free their bytes");
        assert!(journal.append(&record("8080")), "room again once shipped");
    }
}
