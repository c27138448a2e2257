//! The one tokio runtime that runs every object-store call of the process.

use std::future::Future;
use std::sync::OnceLock;

use crate::{ObjectError, Result};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-io")
            .enable_all()
            .build()
            .expect("a tokio runtime for object-store requests")
    })
}

/// Runs `future` to completion on the shared runtime. Called from inside an async runtime it
/// is an error (blocking there would stall that runtime), not a panic.
pub(crate) fn block_on<F: Future>(future: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ObjectError::Invalid(
            "object-io's synchronous calls cannot run inside an async runtime; call them from a plain or blocking thread".into(),
        ));
    }
    Ok(runtime().block_on(future))
}
