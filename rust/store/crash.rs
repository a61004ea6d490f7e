//! The crash points of unit tests: `create`, `Manifest::save` and a document's first append call
//! `crash_point` between their steps, and a test makes the one it names panic, as if the process
//! died there (its own module, so that those callers need not depend on each other).

#[cfg(test)]
thread_local! {
    /// Unit tests: the crash point at which create panics (simulating the process dying there:
    /// no cleanup runs, and the locks are released as the files close).
    pub(super) static CRASH_AT: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// Panics at the crash point a unit test asked for; nothing in other builds.
#[inline]
pub(super) fn crash_point(_at: &'static str) {
    #[cfg(test)]
    if CRASH_AT.with(|c| c.get()) == Some(_at) {
        panic!("simulated crash at {_at}");
    }
}
