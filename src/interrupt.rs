//! SIGINT and SIGTERM end a long run cleanly: the handler only records the signal; work
//! checks [`check`] between steps (and per file while layers are applied) and returns an error,
//! so the normal error path unwinds: mounts unmounted, loop devices detached, partial output
//! removed. (SIGKILL cannot be caught: what it would leave, the kernel removes; see `bake`.)

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, Result};

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the recorder (instead of killing the process).
pub fn install() {
    unsafe {
        libc::signal(libc::SIGINT, record as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, record as *const () as libc::sighandler_t);
    }
}

/// Fails once a signal has arrived.
pub fn check() -> Result<()> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        libc::SIGINT => bail!("interrupted (SIGINT): stopped and cleaned up"),
        s => bail!("terminated (signal {s}): stopped and cleaned up"),
    }
}
