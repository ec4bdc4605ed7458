//! Memory footprint: hands the kernel back the program's code pages once start-up is over.
//!
//! The kernel maps a program's code in windows around each page it runs (64 KiB of
//! cached pages, or a whole large folio) and reads ahead around each fault, so after
//! start-up (configuration, database migrations, TLS set-up, the first polls) most of the
//! executable is mapped and counted in the resident set although the steady loop runs a
//! small part of it. [`give_back_code_pages`] marks the executable's and the shared
//! libraries' read-only mappings for random access (no read-ahead: a later fault reads the
//! one page it needs), unmaps their pages from this process (`MADV_DONTNEED`) and drops the
//! executable's now unmapped pages from the page cache where the kernel lets it (only a
//! process that may write the file can evict its pages). What the gateway goes on running
//! is mapped again on its next touch, a window of cached pages at a time; that is why the
//! release build is optimised for size (`Cargo.toml`) and links the steady loop's
//! functions side by side where the linker is LLD (`gateway/build.rs`).
//!
//! `MADV_DONTNEED` rather than `MADV_PAGEOUT`: the kernel only pages out file pages for a
//! process that could write the file, and the packaged service runs as its own user while
//! `/usr/bin/kp-gateway` belongs to root, so `PAGEOUT` did nothing there. `DONTNEED` on a
//! read-only private mapping throws away nothing but page-table entries, provided the
//! mapping holds no private copies of pages (a library's relocated constants do): those
//! mappings are left alone, see [`code_ranges`].
//!
//! Done in bridge mode only (no embedded core): the core's request path runs much of the
//! code, and paging it out under load cost a 45 ms p99 in the core benchmark.
//!
//! This is the workspace's one `unsafe` call (`madvise` takes an address range).

use std::time::Duration;

/// How long after start the code pages are given back: start-up is over by then.
pub const AFTER_START: Duration = Duration::from_secs(30);

/// The mappings of a `/proc/PID/smaps` text whose pages can be unmapped without losing
/// anything, as (start, length): private, not writable, of the executable (inode
/// `exe_inode`) or of a shared library (`*.so*`, which the program never unloads), and
/// holding no private page, resident (`Anonymous`) or swapped (`Swap`). A read-only
/// mapping cannot gain private pages later. Data files mapped by SQLite, writable
/// mappings, anonymous ones and the kernel's (`[vdso]`, `[stack]`…) are left.
pub fn code_ranges(smaps: &str, exe_inode: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range if it is a candidate, and whether it still is.
    let mut current: Option<(usize, usize)> = None;
    let mut clean = false;
    let mut finish = |current: Option<(usize, usize)>, clean: bool| {
        if let (Some(r), true) = (current, clean) {
            out.push(r);
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((key, value)) = first.strip_suffix(':').map(|k| (k, f.next())) {
            if matches!(key, "Anonymous" | "Swap") && value != Some("0") {
                clean = false;
            }
            continue;
        }
        finish(current.take(), clean);
        clean = true;
        current = candidate(first, f, exe_inode);
    }
    finish(current, clean);
    out
}

/// The range of one smaps header line if its mapping is a candidate (see [`code_ranges`]).
fn candidate<'a>(
    range: &str,
    mut f: impl Iterator<Item = &'a str>,
    exe_inode: u64,
) -> Option<(usize, usize)> {
    let perms = f.next()?;
    let inode: u64 = f.nth(2)?.parse().ok()?;
    let path = f.next()?;
    let library = path
        .rsplit('/')
        .next()
        .is_some_and(|name| name.contains(".so"));
    if !(perms == "r-xp" || perms == "r--p") || !path.starts_with('/') {
        return None;
    }
    if inode != exe_inode && !library {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    (end > start).then_some((start, end - start))
}

/// Unmaps this process's clean code pages (see [`code_ranges`]) and drops the
/// executable's unmapped pages from the page cache; returns the bytes of mappings advised.
/// Errors (an older kernel, a mapping gone meanwhile) are logged at debug level: the pages
/// then simply stay.
#[allow(unsafe_code)] // The one exception to the workspace rule: see the SAFETY note.
pub fn give_back_code_pages() -> usize {
    use std::os::unix::fs::MetadataExt;
    let exe_inode = match std::fs::metadata("/proc/self/exe") {
        Ok(m) => m.ino(),
        Err(e) => {
            log::debug!("footprint: cannot stat /proc/self/exe: {e}");
            return 0;
        }
    };
    let smaps = match std::fs::read_to_string("/proc/self/smaps") {
        Ok(m) => m,
        Err(e) => {
            log::debug!("footprint: cannot read /proc/self/smaps: {e}");
            return 0;
        }
    };
    let mut advised = 0;
    for (start, len) in code_ranges(&smaps, exe_inode) {
        // SAFETY: the range is a private, read-only mapping of the executable or of a
        // shared library that holds no private copy of any page (code_ranges checked
        // `Anonymous` and `Swap`), and such mappings stay for the life of the process
        // (nothing unloads a library here). Dropping its page-table entries therefore
        // changes no byte the program can see: the next access maps the same file page
        // again. Read-only, it cannot have gained a private page since smaps was read.
        let r = unsafe {
            rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::Random).and_then(|()| {
                rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxDontNeed)
            })
        };
        match r {
            Ok(()) => advised += len,
            Err(e) => log::debug!("footprint: madvise(DONTNEED) of {len} bytes: {e}"),
        }
    }
    // The executable's pages are cached but no longer mapped: drop them from the page
    // cache, or the next fault would map a whole cached folio around the page it needs.
    // Shared libraries are left; other programs use them.
    match std::fs::File::open("/proc/self/exe") {
        Ok(exe) => {
            if let Err(e) = rustix::fs::fadvise(&exe, 0, None, rustix::fs::Advice::DontNeed) {
                log::debug!("footprint: fadvise(DONTNEED) of the executable: {e}");
            }
        }
        Err(e) => log::debug!("footprint: cannot open /proc/self/exe: {e}"),
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One smaps entry: header plus the two fields that matter.
    fn entry(header: &str, anonymous: u64, swap: u64) -> String {
        format!("{header}\nSize:   4 kB\nRss:    4 kB\nAnonymous:  {anonymous} kB\nSwap:   {swap} kB\nVmFlags: rd mr mw me\n")
    }

    #[test]
    fn only_clean_read_only_code_mappings_are_chosen() {
        let smaps = [
            entry(
                "55d0c0000000-55d0c0100000 r--p 00000000 fe:01 123 /usr/bin/kp-gateway",
                0,
                0,
            ),
            entry(
                "55d0c0100000-55d0c0f00000 r-xp 00100000 fe:01 123 /usr/bin/kp-gateway",
                0,
                0,
            ),
            // Relocated constants (RELRO): private copies, never unmapped.
            entry(
                "55d0c0f00000-55d0c0f08000 r--p 00f00000 fe:01 123 /usr/bin/kp-gateway",
                24,
                0,
            ),
            entry(
                "55d0c0f08000-55d0c0f10000 rw-p 00f08000 fe:01 123 /usr/bin/kp-gateway",
                0,
                0,
            ),
            entry(
                "55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]",
                0,
                0,
            ),
            entry("7f0000000000-7f0000001000 ---p 00000000 00:00 0", 0, 0),
            entry(
                "7f0000001000-7f0000002000 r-xp 00000000 00:00 0 [vdso]",
                0,
                0,
            ),
            entry(
                "7f0000002000-7f0000003000 r-xp 00000000 fe:01 9 /usr/lib/libc.so.6",
                0,
                0,
            ),
            entry(
                "7f0000003000-7f0000004000 r--p 00000000 fe:01 10 /usr/lib/libm.so.6",
                0,
                4,
            ),
            // A data file SQLite mapped: not code, and it may go away.
            entry(
                "7f0000004000-7f0000005000 r--s 00000000 fe:01 11 /var/lib/kp/buffer.db",
                0,
                0,
            ),
            entry(
                "7f0000005000-7f0000006000 r--p 00000000 fe:01 12 /var/lib/kp/notes.txt",
                0,
                0,
            ),
            "garbage line\n".to_string(),
        ]
        .concat();
        assert_eq!(
            code_ranges(&smaps, 123),
            vec![
                (0x55d0c0000000, 0x100000),
                (0x55d0c0100000, 0xe00000),
                (0x7f0000002000, 0x1000)
            ]
        );
        // Another executable: only the library is left.
        assert_eq!(code_ranges(&smaps, 7), vec![(0x7f0000002000, 0x1000)]);
    }

    fn rss_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn code_pages_given_back_leave_the_resident_set_and_the_program_runs_on() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let before = rss_file_kib();
        assert!(give_back_code_pages() > 0);
        let after = rss_file_kib();
        assert!(after < before, "RssFile {before} KiB -> {after} KiB");
        // Unmapped from the page tables only: every mapping is still there, and the code
        // that reads them again (and formats, allocates, compares) runs from pages
        // mapped again from the file.
        let again = std::fs::read_to_string("/proc/self/maps").unwrap();
        let lines: Vec<&str> = again.lines().collect();
        for line in maps
            .lines()
            .filter(|l| l.contains(" r-xp ") || l.contains(" r--p "))
        {
            assert!(lines.contains(&line), "mapping gone: {line}");
        }
        assert_eq!(format!("{:x}", 0xfeed_u32 * 2), "1fdda");
    }
}
