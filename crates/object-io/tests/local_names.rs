//! `file:` URLs as RFC 8089 defines them, and file names that must stay inside a location.

use std::path::Path;

use object_io::{Location, ObjectError};

fn local(spec: &str) -> std::path::PathBuf {
    Location::parse(spec)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .local_dir()
        .unwrap_or_else(|| panic!("{spec} is not local"))
        .to_path_buf()
}

fn refusal(spec: &str) -> String {
    match Location::parse(spec) {
        Ok(location) => panic!("{spec} was accepted as {location:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn file_urls_with_an_empty_or_local_host_are_the_absolute_path() {
    assert_eq!(local("file:///abs/path"), Path::new("/abs/path"));
    assert_eq!(local("file://localhost/abs/path"), Path::new("/abs/path"));
    assert_eq!(local("FILE://LocalHost/abs/path"), Path::new("/abs/path"));
    assert_eq!(local("file:/abs/path"), Path::new("/abs/path"));
    assert_eq!(local("file:///a%20b/c%25d"), Path::new("/a b/c%d"));
    // A plain path is still a plain path, relative or absolute.
    assert_eq!(local("runs/store"), Path::new("runs/store"));
    assert_eq!(local("/srv/store"), Path::new("/srv/store"));
}

#[test]
fn file_urls_naming_another_host_are_refused_not_written_at_the_root() {
    // `file://NAME` names the host NAME: it used to become the folder `/NAME`.
    let error = refusal("file://NAME");
    assert!(
        error.starts_with("file://NAME: ") && error.contains("host \"NAME\""),
        "{error}"
    );
    let error = refusal("file://server.example/srv/store");
    assert!(error.contains("host \"server.example\""), "{error}");
    let error = refusal("file://store/");
    assert!(error.contains("host \"store\""), "{error}");
}

#[test]
fn file_urls_without_an_absolute_path_or_with_bad_escapes_are_refused() {
    for spec in [
        "file:relative/store",
        "file:store",
        "file://",
        "file://localhost",
    ] {
        let error = refusal(spec);
        assert!(
            error.starts_with(&format!("{spec}: ")) && error.contains("absolute path"),
            "{error}"
        );
    }
    for spec in [
        "file:///a%zz",
        "file:///a%2",
        "file:///a%00b",
        "file:///a%+1",
    ] {
        let error = refusal(spec);
        assert!(error.contains("escape"), "{spec}: {error}");
    }
    for spec in ["file:///a?b=1", "file:///a#top"] {
        let error = refusal(spec);
        assert!(error.contains("query or fragment"), "{spec}: {error}");
    }
}

#[test]
fn file_operations_refuse_names_that_are_not_plain() {
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("inside");
    std::fs::create_dir(&inside).unwrap();
    std::fs::write(root.path().join("x.txt"), b"the user's file").unwrap();
    let location = Location::local(&inside);
    let outside = root.path().join("x.txt").display().to_string();
    for name in [
        "../x.txt",
        outside.as_str(),
        "",
        "..",
        ".",
        "a/b",
        "a\\b",
        "a\0b",
    ] {
        let refused = |result: Result<(), ObjectError>, what: &str| match result {
            Err(ObjectError::Name { location: at, .. }) => {
                assert_eq!(at, inside.display().to_string(), "{what} {name:?}")
            }
            other => panic!("{what} {name:?}: {other:?}"),
        };
        refused(location.put(name, b"overwritten".to_vec().into()), "put");
        refused(location.get(name).map(|_| ()), "get");
        refused(location.size(name).map(|_| ()), "size");
        refused(location.delete(name), "delete");
        let digests = object_io::BlockDigests::of(b"abc", 16);
        refused(
            location
                .get_verified_range(name, 0..1, 3, &digests)
                .map(|_| ()),
            "get_verified_range",
        );
    }
    assert_eq!(
        std::fs::read(root.path().join("x.txt")).unwrap(),
        b"the user's file"
    );
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // Plain names, Unicode look-alikes of `..` and `/` among them, are ordinary files inside.
    for name in ["a.bin", "．．", "∕x"] {
        location.put(name, b"ok".to_vec().into()).unwrap();
        assert_eq!(std::fs::read(inside.join(name)).unwrap(), b"ok");
    }
}
