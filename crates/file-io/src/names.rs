//! The one rule for names that become paths: every name a config, sweep file, plan or store
//! manifest gives (an SAE, a hook, a file, a task) must be a *plain name*, one component of a
//! relative path, before anything is read or written under it. A plain name joined to a folder
//! always names something inside that folder.
//!
//! A plain name is non-empty, at most [`MAX_NAME_BYTES`] bytes, not `.` or `..`, and holds no
//! `/`, `\`, NUL or other control character. Anything else Unicode allows (`．．`, `∕`, accents)
//! is an ordinary file name on the Unix systems the project runs on (Linux, macOS) and in object
//! stores, and is accepted: it cannot leave the folder.
//!
//! ```
//! use file_io::check_name;
//! assert!(check_name("layer_5-resid").is_ok());
//! for hostile in ["", ".", "..", "../escaped", "/etc/passwd", "a\\b", "nul\0byte"] {
//!     assert!(check_name(hostile).is_err(), "{hostile:?}");
//! }
//! ```

/// The longest plain name, in bytes (the usual file-system limit for one component).
pub const MAX_NAME_BYTES: usize = 255;

/// A name that would not stay inside its folder, or is not a usable file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a plain name: {why} (a name must be one relative path component)")]
pub struct NameError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it, in words.
    pub why: &'static str,
}

/// Checks that `name` is a plain name (see the [module documentation](self)).
pub fn check_name(name: &str) -> Result<(), NameError> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it names a folder itself or its parent")
    } else if name.len() > MAX_NAME_BYTES {
        Some("it is longer than 255 bytes")
    } else if name.contains(['/', '\\']) {
        Some("it holds a path separator")
    } else if name.chars().any(char::is_control) {
        Some("it holds a NUL or another control character")
    } else {
        None
    };
    match why {
        Some(why) => Err(NameError {
            name: name.into(),
            why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    /// Names built from the pieces that make paths escape, look alike or break file systems.
    fn hostile_name() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "..", ".", "/", "\\", "\0", "\n", "a", "sae", "．", "∕", "⁄", "‥", "C:", "~", " ", "é",
            "\u{202e}", "\u{feff}",
        ]);
        prop_oneof![
            prop::collection::vec(pieces, 0..8).prop_map(|p| p.concat()),
            "\\PC{0,300}",
            Just("x".repeat(256)),
        ]
    }

    proptest! {
        /// An accepted name joined to a folder stays inside it, as one normal component.
        #[test]
        fn accepted_names_stay_inside_their_folder(name in hostile_name()) {
            if check_name(&name).is_ok() {
                let joined = Path::new("/root-folder").join(&name);
                let inside = joined.strip_prefix("/root-folder");
                prop_assert!(inside.is_ok(), "{:?}", joined);
                let components: Vec<_> = inside.unwrap().components().collect();
                prop_assert_eq!(components.len(), 1, "{:?}", joined);
                prop_assert!(matches!(components[0], Component::Normal(_)));
                prop_assert!(!name.contains('\0') && name.len() <= MAX_NAME_BYTES);
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        let error = check_name("../escaped").unwrap_err();
        assert!(error.to_string().contains("path separator"), "{error}");
        assert!(check_name("x".repeat(256).as_str()).is_err());
        assert!(check_name("x".repeat(255).as_str()).is_ok());
        assert!(
            check_name("．．").is_ok(),
            "full-width dots are an ordinary name"
        );
    }
}
