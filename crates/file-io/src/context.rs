//! Typed errors with what was being done: the `.context(…)` of a result, and `bail!` /
//! `ensure!`, for a crate's own error type (no `anyhow` in a library's signatures).
//!
//! A crate whose error type has a variant holding a message (`Invalid(String)`) and a
//! `Context { context: String, cause: Box<Self> }` variant says
//! `file_io::error_context!(MyError, Invalid);` once: that defines the crate-private `Context` trait
//! (`.context(…)` and `.with_context(|| …)` on any result whose error converts into `MyError`,
//! and on options) and `From<file_io::Message>`, which [`bail!`](crate::bail) and
//! [`ensure!`](crate::ensure) return through.
//!
//! ```
//! mod demo {
//!     #[derive(Debug, thiserror::Error)]
//!     pub enum MyError {
//!         #[error("{0}")]
//!         Invalid(String),
//!         #[error("{context}: {cause}")]
//!         Context { context: String, cause: Box<MyError> },
//!         #[error(transparent)]
//!         Io(#[from] std::io::Error),
//!     }
//!     file_io::error_context!(MyError, Invalid);
//!
//!     pub fn read(path: &str, limit: usize) -> Result<String, MyError> {
//!         let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
//!         file_io::ensure!(text.len() <= limit, "{path}: over {limit} bytes");
//!         Ok(text)
//!     }
//! }
//!
//! let error = demo::read("/nonexistent/file", 10).unwrap_err().to_string();
//! assert!(error.starts_with("reading /nonexistent/file: "), "{error}");
//! ```

/// A failure described in words: what [`bail!`](crate::bail) returns, converted into the
/// calling crate's error (its message variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message(pub String);

/// Returns early with an error made of the formatted message (the crate's message variant,
/// through `From<file_io::Message>`).
#[macro_export]
macro_rules! bail {
    ($($message:tt)+) => {
        return ::core::result::Result::Err(::core::convert::From::from($crate::Message(
            ::std::format!($($message)+),
        )))
    };
}

/// [`bail!`] unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            $crate::bail!($($message)+);
        }
    };
}

/// Defines the crate-private `Context` trait and `From<file_io::Message>` for `$error`, which
/// must have the variants `$message(String)` and `Context { context: String, cause: Box<$error> }`
/// (module docs).
#[macro_export]
macro_rules! error_context {
    ($error:ident, $message:ident) => {
        impl ::core::convert::From<$crate::Message> for $error {
            fn from(message: $crate::Message) -> Self {
                Self::$message(message.0)
            }
        }

        /// Adds what was being done to a failure (or to a missing value).
        #[allow(dead_code)]
        pub(crate) trait Context<T> {
            /// The failure, wrapped with `context`.
            fn context(
                self,
                context: impl ::std::fmt::Display,
            ) -> ::core::result::Result<T, $error>;
            /// [`Context::context`] with the text made only on failure.
            fn with_context<C: ::std::fmt::Display>(
                self,
                context: impl FnOnce() -> C,
            ) -> ::core::result::Result<T, $error>;
        }

        impl<T, E: ::core::convert::Into<$error>> Context<T> for ::core::result::Result<T, E> {
            fn context(
                self,
                context: impl ::std::fmt::Display,
            ) -> ::core::result::Result<T, $error> {
                self.with_context(|| context)
            }
            fn with_context<C: ::std::fmt::Display>(
                self,
                context: impl FnOnce() -> C,
            ) -> ::core::result::Result<T, $error> {
                self.map_err(|cause| $error::Context {
                    context: context().to_string(),
                    cause: ::std::boxed::Box::new(cause.into()),
                })
            }
        }

        impl<T> Context<T> for ::core::option::Option<T> {
            fn context(
                self,
                context: impl ::std::fmt::Display,
            ) -> ::core::result::Result<T, $error> {
                self.ok_or_else(|| $error::$message(context.to_string()))
            }
            fn with_context<C: ::std::fmt::Display>(
                self,
                context: impl FnOnce() -> C,
            ) -> ::core::result::Result<T, $error> {
                self.ok_or_else(|| $error::$message(context().to_string()))
            }
        }
    };
}

/// The items' display forms as `a, b, c`, or `none` when there are none: how an error lists
/// what it would have accepted.
///
/// ```
/// assert_eq!(file_io::list_or_none(["jumprelu", "tied"]), "jumprelu, tied");
/// assert_eq!(file_io::list_or_none(Vec::<String>::new()), "none");
/// ```
pub fn list_or_none<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let names: Vec<String> = items.into_iter().map(|n| n.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
