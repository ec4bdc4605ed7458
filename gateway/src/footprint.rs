//! Memory footprint: hands the kernel back the program's code pages once start-up is over.
//!
//! The kernel maps a program's code in 64 KiB windows around each page it runs, and reads
//! ahead around each fault, so after start-up (configuration, database migrations, TLS
//! set-up, the first polls) most of the 16 MB executable is mapped and counted in the
//! resident set although the steady loop runs a small part of it. [`give_back_code_pages`]
//! marks the read-only, file-backed mappings for random access (no read-ahead: a later
//! fault reads the one page it needs) and asks the kernel to reclaim them
//! (`MADV_PAGEOUT`, Linux 5.4+); the executable's cached but unmapped pages are dropped
//! from the page cache. What the gateway goes on running is read back on its next touch;
//! page contents never change. Pages shared with other processes (libc) stay.
//!
//! Done in bridge mode only (no embedded core): the core's request path runs much of the
//! code, and paging it out under load cost a 45 ms p99 in the core benchmark.
//!
//! This is the workspace's one `unsafe` call (`madvise` takes an address range).

use std::time::Duration;

/// How long after start the code pages are given back: start-up is over by then.
pub const AFTER_START: Duration = Duration::from_secs(30);

/// The read-only file-backed mappings of a `/proc/PID/maps` text, as (start, length).
/// Writable mappings, anonymous ones and the kernel's (`[vdso]`, `[stack]`…) are left.
pub fn code_ranges(maps: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if perms.contains('w') || !perms.starts_with('r') || !path.starts_with('/') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let start = usize::from_str_radix(a, 16).ok()?;
            let end = usize::from_str_radix(b, 16).ok()?;
            (end > start).then(|| (start, end - start))
        })
        .collect()
}

/// Asks the kernel to reclaim this process's read-only file-backed pages; returns the
/// bytes of mappings advised. Errors (an older kernel, a mapping gone meanwhile) are
/// logged at debug level: the pages then simply stay.
#[allow(unsafe_code)] // The one exception to the workspace rule: see the SAFETY note.
pub fn give_back_code_pages() -> usize {
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(m) => m,
        Err(e) => {
            log::debug!("footprint: cannot read /proc/self/maps: {e}");
            return 0;
        }
    };
    let mut advised = 0;
    for (start, len) in code_ranges(&maps) {
        // SAFETY: MADV_PAGEOUT only reclaims pages; their contents stay what they were
        // (read back from the file, or from swap for a private copy), so no memory the
        // program can see changes. The range is one of this process's own mappings as the
        // kernel listed it; if it went away since, madvise fails with ENOMEM and nothing
        // happens.
        let r = unsafe {
            rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::Random).and_then(|()| {
                rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxPageOut)
            })
        };
        match r {
            Ok(()) => advised += len,
            Err(e) => log::debug!("footprint: madvise(PAGEOUT) of {len} bytes: {e}"),
        }
    }
    // Pages of the executable that are cached but not mapped (all of them after the
    // package was installed, say) would be mapped again around the next fault: drop them
    // from the page cache too. Shared libraries are left; other programs use them.
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

    #[test]
    fn only_read_only_file_mappings_are_chosen() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 123 /usr/bin/kp-gateway
55d0c0100000-55d0c0f00000 r-xp 00100000 fe:01 123 /usr/bin/kp-gateway
55d0c0f00000-55d0c0f10000 rw-p 00f00000 fe:01 123 /usr/bin/kp-gateway
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000002000 r-xp 00000000 00:00 0 [vdso]
7f0000002000-7f0000003000 r-xp 00000000 fe:01 9 /usr/lib/libc.so.6
garbage line
";
        assert_eq!(
            code_ranges(maps),
            vec![
                (0x55d0c0000000, 0x100000),
                (0x55d0c0100000, 0xe00000),
                (0x7f0000002000, 0x1000)
            ]
        );
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
        // Reclaimed, not unmapped: every mapping is still there, and the code that reads
        // them again runs from pages read back from the file.
        let again = std::fs::read_to_string("/proc/self/maps").unwrap();
        let now = code_ranges(&again);
        assert!(code_ranges(&maps).iter().all(|r| now.contains(r)));
    }
}
