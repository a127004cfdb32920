//! A workload's log on disk: the size-capped writer that rotates it, the
//! reader behind `haven logs` (tail, then follow), and removal.
//!
//! Layout (`haven_core::logs`): `NAME.log`, rotated to `NAME.log.1` …
//! `NAME.log.{LOG_ROTATED_FILES}`, each at most `file_max_bytes(cap)`, so
//! the files together stay within the workload's `log_max_bytes`. The one
//! writer of a workload's log (its log copier, `logcopy.rs`) holds an
//! exclusive `flock` on `NAME.log.lock` while it writes; removal takes the
//! same lock, so it never pulls files from under a live instance.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use haven_core::logs::{
    file_max_bytes, lock_file_name, log_file_name, workload_of_file, LOG_ROTATED_FILES,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Workload output may contain secrets: not world-readable.
pub const LOG_FILE_MODE: u32 = 0o640;
/// Bytes read from a file at a time (tail, follow).
const READ_BLOCK_BYTES: usize = 64 * 1024;
/// Attempts at opening a log's files without a rotation in between.
const SNAPSHOT_ATTEMPTS_MAX: usize = 3;

/// How many bytes of `buf` to write into a file that holds `file_len`
/// bytes and has `room` left, before the file is rotated: all of it if it
/// fits; else through the last line end that fits; else, in an empty file,
/// as much as fits (a line longer than a file is cut); else nothing (the
/// line starts the next file).
pub fn split_len(buf: &[u8], room: u64, file_len: u64) -> usize {
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if buf.len() <= room {
        return buf.len();
    }
    match buf[..room].iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if file_len == 0 => room,
        None => 0,
    }
}

/// The writer of one workload's log: appends, and rotates before a file
/// would pass its share of the cap.
#[derive(Debug)]
pub struct RotatingLog {
    dir: PathBuf,
    workload: String,
    file: File,
    /// Bytes in `file`, which is `NAME.log`.
    len: u64,
    file_max_bytes: u64,
    /// The last byte in the live file ends a line (or it is empty).
    at_line_start: bool,
}

impl RotatingLog {
    /// Open (create) `dir/NAME.log` for a cap of `log_max_bytes`. Rotated
    /// files larger than a file's share of this cap (left by a larger cap,
    /// or by an unbounded log before) are removed, and a live file that is
    /// too large is rotated away, so the cap holds from here on.
    pub fn open(dir: &Path, workload: &str, log_max_bytes: u64) -> io::Result<RotatingLog> {
        let file_max_bytes = file_max_bytes(log_max_bytes);
        let file = open_live(dir, workload)?;
        let len = file.metadata()?.len();
        let mut last = [0u8; 1];
        let at_line_start = len == 0 || {
            file.read_exact_at(&mut last, len - 1)?;
            last[0] == b'\n'
        };
        let mut log = RotatingLog {
            dir: dir.to_owned(),
            workload: workload.to_owned(),
            file,
            len,
            file_max_bytes,
            at_line_start,
        };
        if log.len > file_max_bytes {
            log.rotate()?;
        } else {
            log.prune()?;
        }
        Ok(log)
    }

    /// Append `buf`, rotating as needed. On an error, what was written
    /// before it stays written.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let room = self.file_max_bytes.saturating_sub(self.len);
            let n = split_len(buf, room, self.len);
            if n > 0 {
                self.file.write_all(&buf[..n])?;
                self.len += n as u64;
                self.at_line_start = buf[n - 1] == b'\n';
                buf = &buf[n..];
            }
            if !buf.is_empty() {
                self.rotate()?;
            }
        }
        Ok(())
    }

    /// Write `text` as a line of its own (after a line break if the output
    /// so far ends mid-line).
    pub fn write_line(&mut self, text: &str) -> io::Result<()> {
        let mut line = String::with_capacity(text.len() + 2);
        if !self.at_line_start {
            line.push('\n');
        }
        line.push_str(text);
        line.push('\n');
        self.write(line.as_bytes())
    }

    /// `NAME.log` → `NAME.log.1` → … → `NAME.log.{LOG_ROTATED_FILES}`
    /// (the oldest is dropped), then a fresh `NAME.log`.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (0..LOG_ROTATED_FILES).rev() {
            let from = self.dir.join(log_file_name(&self.workload, n));
            let to = self.dir.join(log_file_name(&self.workload, n + 1));
            match fs::rename(&from, &to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.file = open_live(&self.dir, &self.workload)?;
        // Normally empty, being new.
        self.len = self.file.metadata()?.len();
        self.at_line_start |= self.len == 0;
        self.prune()
    }

    /// Remove rotated files that are larger than a file's share of the cap.
    fn prune(&self) -> io::Result<()> {
        for n in 1..=LOG_ROTATED_FILES {
            let path = self.dir.join(log_file_name(&self.workload, n));
            match fs::metadata(&path) {
                Ok(m) if m.len() > self.file_max_bytes => remove_if_exists(&path)?,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Read as well: `open` looks at the last byte.
fn open_live(dir: &Path, workload: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(dir.join(log_file_name(workload, 0)))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Open `NAME.log.lock` and lock it, `blocking` or not; `None` if another
/// process holds the lock (non-blocking only). The lock file may be
/// removed while a process waits on it (`remove`); a lock taken on a
/// removed file is worthless, so it is taken again on the current one.
fn lock(dir: &Path, workload: &str, blocking: bool) -> io::Result<Option<Flock<File>>> {
    let path = dir.join(lock_file_name(workload));
    let arg = if blocking {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    loop {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(LOG_FILE_MODE)
            .open(&path)?;
        let locked = match Flock::lock(file, arg) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(e.into()),
        };
        match fs::metadata(&path) {
            Ok(m) if m.ino() == locked.metadata()?.ino() => return Ok(Some(locked)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// Become the one writer of `workload`'s log: wait until the previous one
/// (an earlier instance's copier still draining its output) is gone. Held
/// until the returned lock is dropped.
pub fn lock_writer(dir: &Path, workload: &str) -> io::Result<Flock<File>> {
    lock(dir, workload, true).map(|l| l.expect("a blocking lock is always taken"))
}

/// Remove every file of `workload`'s log, unless a writer holds it (then
/// `Ok(false)`: an instance is still writing).
pub fn remove(dir: &Path, workload: &str) -> io::Result<bool> {
    let Some(locked) = lock(dir, workload, false)? else {
        return Ok(false);
    };
    for n in 0..=LOG_ROTATED_FILES {
        remove_if_exists(&dir.join(log_file_name(workload, n)))?;
    }
    // Removed while held: a copier waiting on it takes a fresh one.
    remove_if_exists(&dir.join(lock_file_name(workload)))?;
    drop(locked);
    Ok(true)
}

/// Workloads that have any log file in `dir`.
pub fn workloads_with_logs(dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        if let Some(w) = name.to_str().and_then(workload_of_file) {
            out.insert(w.to_owned());
        }
    }
    Ok(out)
}

/// One step of following a log.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// New output.
    Data(Vec<u8>),
    /// Nothing new yet.
    Idle,
    /// The log was removed (its workload deleted): nothing will follow.
    Gone,
}

/// Reads what is appended to a workload's log from a point on, across
/// rotations.
#[derive(Debug)]
pub struct Follower {
    live_path: PathBuf,
    file: File,
    offset: u64,
}

impl Follower {
    /// At most `max_bytes` of what was appended since the last step.
    pub fn step(&mut self, max_bytes: usize) -> io::Result<Step> {
        let mut buf = vec![0u8; max_bytes.clamp(1, READ_BLOCK_BYTES)];
        let n = self.file.read_at(&mut buf, self.offset)?;
        if n > 0 {
            self.offset += n as u64;
            buf.truncate(n);
            return Ok(Step::Data(buf));
        }
        // At the end of the file being read: rotated away, truncated,
        // removed, or just quiet.
        match fs::metadata(&self.live_path) {
            Ok(m) if m.ino() != self.file.metadata()?.ino() => {
                match File::open(&self.live_path) {
                    Ok(f) => {
                        self.file = f;
                        self.offset = 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(Step::Idle)
            }
            Ok(m) if m.len() < self.offset => {
                self.offset = 0;
                Ok(Step::Idle)
            }
            Ok(_) => Ok(Step::Idle),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Between a rotation's rename and its new file, the file
                // read is still linked (as `.1`); after a removal it is not.
                if self.file.metadata()?.nlink() == 0 {
                    Ok(Step::Gone)
                } else {
                    Ok(Step::Idle)
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// The last `lines` lines (at most `max_bytes`, whole lines where it can)
/// of `workload`'s log in `dir`, across its rotated files, and a
/// [`Follower`] that continues right after them. `None` if the log has no
/// file here.
pub fn tail(
    dir: &Path,
    workload: &str,
    lines: u32,
    max_bytes: u64,
) -> io::Result<Option<(Vec<u8>, Follower)>> {
    let Some(mut files) = snapshot(dir, workload)? else {
        return Ok(None);
    };
    let live = files.remove(0).expect("a snapshot has its live file");
    let live_len = live.metadata()?.len();
    // Newest first: each file with the bytes of it that count.
    let mut parts: Vec<(&File, u64)> = vec![(&live, live_len)];
    for f in files.iter().flatten() {
        parts.push((f, f.metadata()?.len()));
    }
    let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let mut chunks: Vec<Vec<u8>> = vec![];
    let mut total = 0usize;
    let mut newlines = 0usize;
    let mut truncated = false;
    'files: for (file, len) in parts {
        let mut end = len;
        while end > 0 {
            if newlines > lines as usize || total >= max_bytes {
                truncated = true;
                break 'files;
            }
            let want = (READ_BLOCK_BYTES as u64)
                .min(end)
                .min((max_bytes - total) as u64);
            let start = end - want;
            let mut buf = vec![0u8; want as usize];
            file.read_exact_at(&mut buf, start)?;
            newlines += buf.iter().filter(|b| **b == b'\n').count();
            total += buf.len();
            chunks.push(buf);
            end = start;
        }
    }
    let mut text: Vec<u8> = chunks.into_iter().rev().flatten().collect();
    let cut = start_of_last_lines(&text, lines, truncated);
    text.drain(..cut);
    let follower = Follower {
        live_path: dir.join(log_file_name(workload, 0)),
        file: live,
        offset: live_len,
    };
    Ok(Some((text, follower)))
}

/// Where the last `lines` lines of `text` start. The last line need not
/// end with a line break; with `partial_first`, `text` may begin mid-line,
/// and that broken line is left out when a line break follows it.
fn start_of_last_lines(text: &[u8], lines: u32, partial_first: bool) -> usize {
    if lines == 0 {
        return text.len();
    }
    let body = match text.last() {
        Some(b'\n') => &text[..text.len() - 1],
        _ => text,
    };
    let mut seen = 0u32;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    if partial_first {
        body.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1)
    } else {
        0
    }
}

/// The files of a workload's log, newest first (index 0: `NAME.log`),
/// opened with no rotation in between where that can be had. `None` if
/// there is no live file.
fn snapshot(dir: &Path, workload: &str) -> io::Result<Option<Vec<Option<File>>>> {
    let paths: Vec<PathBuf> = (0..=LOG_ROTATED_FILES)
        .map(|n| dir.join(log_file_name(workload, n)))
        .collect();
    let mut files = vec![];
    for _ in 0..SNAPSHOT_ATTEMPTS_MAX {
        files = paths
            .iter()
            .map(|p| match File::open(p) {
                Ok(f) => Ok(Some(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .collect::<io::Result<Vec<_>>>()?;
        // Consistent if every path still names the file opened for it.
        let mut consistent = true;
        for (p, f) in paths.iter().zip(&files) {
            let now = fs::metadata(p).ok().map(|m| m.ino());
            let opened = match f {
                Some(f) => Some(f.metadata()?.ino()),
                None => None,
            };
            consistent &= now == opened;
        }
        if consistent {
            break;
        }
    }
    if files.first().is_none_or(|f| f.is_none()) {
        return Ok(None);
    }
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_core::logs::LOG_MAX_BYTES_MIN;

    #[test]
    fn splits_at_line_ends_and_cuts_only_overlong_lines() {
        assert_eq!(split_len(b"abc\n", 10, 5), 4, "fits");
        assert_eq!(
            split_len(b"ab\ncd\nef", 6, 5),
            6,
            "through the last line end"
        );
        assert_eq!(
            split_len(b"abcdef", 3, 5),
            0,
            "the line starts the next file"
        );
        assert_eq!(split_len(b"abcdef", 3, 0), 3, "longer than a file: cut");
        assert_eq!(split_len(b"", 0, 5), 0);
    }

    fn files(dir: &Path, w: &str) -> Vec<(String, u64)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .filter(|(n, _)| workload_of_file(n) == Some(w) && !n.ends_with(".lock"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_log_stays_under_its_cap_and_keeps_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cap = LOG_MAX_BYTES_MIN;
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        let mut written = 0u64;
        let mut i = 0u64;
        while written < 50 * cap {
            let line = format!("line {i:08} {}\n", "x".repeat((i % 97) as usize));
            log.write(line.as_bytes()).unwrap();
            written += line.len() as u64;
            i += 1;
        }
        let fs_ = files(dir.path(), "w");
        let total: u64 = fs_.iter().map(|(_, n)| n).sum();
        assert!(total <= cap, "{total} > {cap}: {fs_:?}");
        assert_eq!(fs_.len(), 1 + LOG_ROTATED_FILES as usize, "{fs_:?}");
        // Files hold whole lines; the newest is the last one written.
        for (name, _) in &fs_ {
            let text = fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.starts_with("line ") && text.ends_with('\n'), "{name}");
        }
        let live = fs::read_to_string(dir.path().join("w.log")).unwrap();
        assert!(live
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("line {:08}", i - 1)));
        // The rotated files are in order: .3 oldest, live newest.
        let first = |n: &str| {
            fs::read_to_string(dir.path().join(n)).unwrap()[5..13]
                .parse::<u64>()
                .unwrap()
        };
        assert!(first("w.log.3") < first("w.log.2"));
        assert!(first("w.log.2") < first("w.log.1"));
        assert!(first("w.log.1") < first("w.log"));
    }

    #[test]
    fn a_line_longer_than_a_file_is_cut_and_the_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cap = LOG_MAX_BYTES_MIN;
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        log.write(&vec![b'y'; 3 * cap as usize]).unwrap();
        let total: u64 = files(dir.path(), "w").iter().map(|(_, n)| n).sum();
        assert!(total <= cap);
    }

    #[test]
    fn reopening_continues_and_an_old_oversized_log_is_rotated_out() {
        let dir = tempfile::tempdir().unwrap();
        let cap = LOG_MAX_BYTES_MIN;
        // An unbounded log from before, and a rotated file from a larger cap.
        fs::write(dir.path().join("w.log"), vec![b'z'; 10 * cap as usize]).unwrap();
        fs::write(dir.path().join("w.log.2"), vec![b'z'; cap as usize]).unwrap();
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        log.write_line("--- marker ---").unwrap();
        let fs_ = files(dir.path(), "w");
        assert!(fs_.iter().map(|(_, n)| n).sum::<u64>() <= cap, "{fs_:?}");
        drop(log);
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        log.write(b"partial").unwrap();
        drop(log);
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        log.write_line("--- next ---").unwrap();
        drop(log);
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        log.write_line("--- last ---").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("w.log")).unwrap(),
            "--- marker ---\npartial\n--- next ---\n--- last ---\n",
            "appends; a marker after a partial line starts its own line"
        );
    }

    #[test]
    fn tail_reads_back_across_rotated_files_and_follow_continues() {
        let dir = tempfile::tempdir().unwrap();
        let cap = LOG_MAX_BYTES_MIN;
        let mut log = RotatingLog::open(dir.path(), "w", cap).unwrap();
        let per_file = file_max_bytes(cap) as usize;
        // Enough lines that the last 500 span more than one file.
        let line = |i: usize| format!("{i:06} {}\n", "p".repeat(60));
        let n = 2 * per_file / line(0).len();
        for i in 0..n {
            log.write(line(i).as_bytes()).unwrap();
        }
        let want = 500.min(n);
        let (text, mut follow) = tail(dir.path(), "w", want as u32, u64::MAX)
            .unwrap()
            .unwrap();
        let expect: String = (n - want..n).map(line).collect();
        assert_eq!(String::from_utf8(text).unwrap(), expect);
        assert_eq!(follow.step(1024).unwrap(), Step::Idle);
        // Follow across a rotation: nothing lost, nothing twice.
        let mut seen = vec![];
        for i in n..n + 3 * per_file / line(0).len() {
            log.write(line(i).as_bytes()).unwrap();
            while let Step::Data(d) = follow.step(READ_BLOCK_BYTES).unwrap() {
                seen.extend(d);
            }
        }
        loop {
            match follow.step(READ_BLOCK_BYTES).unwrap() {
                Step::Data(d) => seen.extend(d),
                Step::Idle
                    if seen.ends_with(line(n + 3 * per_file / line(0).len() - 1).as_bytes()) =>
                {
                    break
                }
                Step::Idle => {}
                Step::Gone => panic!("gone"),
            }
        }
        let expect: String = (n..n + 3 * per_file / line(0).len()).map(line).collect();
        assert_eq!(String::from_utf8(seen).unwrap(), expect);
        // Bounded by bytes: whole lines only.
        let (text, _) = tail(dir.path(), "w", 10_000, 1000).unwrap().unwrap();
        assert!(
            text.len() <= 1000 && text.starts_with(b"0"),
            "{}",
            text.len()
        );
        assert_eq!(
            tail(dir.path(), "other", 10, 1000).unwrap().map(|t| t.0),
            None
        );
        // Removed (deleted workload): the follower ends.
        drop(log);
        assert!(remove(dir.path(), "w").unwrap());
        assert_eq!(follow.step(1024).unwrap(), Step::Gone);
        assert!(files(dir.path(), "w").is_empty());
        assert!(!dir.path().join("w.log.lock").exists());
    }

    #[test]
    fn a_log_with_a_writer_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let lock = lock_writer(dir.path(), "w").unwrap();
        RotatingLog::open(dir.path(), "w", LOG_MAX_BYTES_MIN).unwrap();
        assert!(!remove(dir.path(), "w").unwrap());
        assert_eq!(
            workloads_with_logs(dir.path()).unwrap(),
            BTreeSet::from(["w".to_string()])
        );
        drop(lock);
        assert!(remove(dir.path(), "w").unwrap());
        assert!(workloads_with_logs(dir.path()).unwrap().is_empty());
    }
}
