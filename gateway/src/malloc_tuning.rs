//! glibc's allocator set up for the embedded core: a per-thread cache that holds more
//! freed blocks, set through `GLIBC_TUNABLES` by running the program again with it.
//!
//! The core's request path allocates a few small blocks per request (the request's
//! future, its store job and reply channel, its answer) and frees them when the request
//! is answered, hundreds at a time after each group commit. glibc's per-thread cache
//! (tcache) keeps at most 7 freed blocks of each size; the rest go back to the shared
//! heap, where they are merged and split again (`_int_malloc`, `unlink_chunk`,
//! `malloc_consolidate` were the largest items of the workers' profile). With room for
//! [`TCACHE_COUNT`] blocks of each size, most of them are reused at once: at 1 000
//! clients 9–20 % more requests per second on the 2-core benchmark machine
//! (BENCHMARKS.md, 2026-12-06), for about 1 MiB more resident memory.
//!
//! glibc reads tunables only when a program starts, and `mallopt` has no setting for the
//! tcache, so [`reexec_with_tcache`] runs this same program again (same PID, arguments
//! and environment, plus the tunable) before anything else starts. A `GLIBC_TUNABLES`
//! that already names `glibc.malloc.tcache_count` is left as it is: setting it to 7
//! gives glibc's default back. Bridge mode (no core) does not do this: its allocations
//! are few, and its memory footprint is what counts there.

use std::ffi::{OsStr, OsString};

/// Freed blocks of each size a thread's cache keeps (glibc's default: 7). At 1 000
/// clients 64, 128 and 256 gave the same rate, 2 048 less; 64 holds the least memory
/// (BENCHMARKS.md, 2026-12-06).
pub const TCACHE_COUNT: u32 = 64;

const KEY: &str = "glibc.malloc.tcache_count";

/// The `GLIBC_TUNABLES` to run with, given the current one; `None` when it already names
/// the tcache count (set by us before the re-run, or by the operator).
pub fn tunables_with_tcache(current: Option<&OsStr>) -> Option<OsString> {
    let ours = format!("{KEY}={TCACHE_COUNT}");
    match current {
        None => Some(ours.into()),
        Some(v) if v.is_empty() => Some(ours.into()),
        Some(v) => {
            let text = v.to_string_lossy();
            if text.split(':').any(|t| t.split('=').next() == Some(KEY)) {
                return None;
            }
            let mut out = v.to_os_string();
            out.push(":");
            out.push(ours);
            Some(out)
        }
    }
}

/// Runs this program again with the larger tcache, unless `GLIBC_TUNABLES` already sets
/// it. Returns only if it was set already or the re-run could not start (the reason, to
/// be logged: the core then runs with glibc's default cache). Call it before any thread
/// or runtime starts.
pub fn reexec_with_tcache() -> Result<(), String> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Ok(());
    }
    let Some(tunables) = tunables_with_tcache(std::env::var_os("GLIBC_TUNABLES").as_deref()) else {
        return Ok(());
    };
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "kp-gateway".into());
    // `/proc/self/exe`: the file this process runs, whatever path or name started it.
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    Err(format!(
        "cannot run again with a larger allocator cache ({err}); going on with glibc's default"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tcache_count_is_added_once_and_an_operators_choice_is_kept() {
        let ours = format!("{KEY}={TCACHE_COUNT}");
        assert_eq!(tunables_with_tcache(None), Some(OsString::from(&ours)));
        assert_eq!(
            tunables_with_tcache(Some(OsStr::new(""))),
            Some(OsString::from(&ours))
        );
        // Other tunables stay, ours is added after them.
        assert_eq!(
            tunables_with_tcache(Some(OsStr::new("glibc.malloc.arena_max=2"))),
            Some(OsString::from(format!("glibc.malloc.arena_max=2:{ours}")))
        );
        // Already there (the re-run itself, or the operator's own value): nothing to do.
        assert_eq!(tunables_with_tcache(Some(OsStr::new(&ours))), None);
        assert_eq!(
            tunables_with_tcache(Some(OsStr::new("glibc.malloc.tcache_count=7"))),
            None
        );
        assert_eq!(
            tunables_with_tcache(Some(OsStr::new(
                "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
            ))),
            None
        );
        // A longer name that starts the same is another tunable.
        assert_eq!(
            tunables_with_tcache(Some(OsStr::new("glibc.malloc.tcache_count_x=1"))),
            Some(OsString::from(format!(
                "glibc.malloc.tcache_count_x=1:{ours}"
            )))
        );
    }
}
