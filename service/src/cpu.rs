//! CPU-heavy work inside async code: encoding or decoding the JSON of a large message
//! (an AppendEntries of 4 MiB, a 1 MiB value) takes a worker thread for milliseconds
//! in a release build and far longer in a debug one. On a node with few workers that
//! stalls everything else scheduled there, heartbeats included, until followers call
//! an election. Large work therefore tells the runtime first, which moves the worker's
//! other tasks to another thread meanwhile.

/// Messages at least this long are heavy.
const HEAVY_BYTES: usize = 64 * 1024;

/// Runs `work` on a message of `bytes`: at once when it is small, else with the
/// runtime's worker freed of its other tasks (on a multi-threaded runtime; a
/// single-threaded one, as in unit tests, has nowhere to move them).
pub fn heavy<R>(bytes: usize, work: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if bytes >= HEAVY_BYTES && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}
