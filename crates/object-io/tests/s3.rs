//! `Location` against a real S3-compatible server on 127.0.0.1 (s3s, in process).

use object_io::{BlockDigests, Location, ObjectError};
use s3_test_server::S3TestServer;

fn location(server: &S3TestServer, prefix: &str) -> Location {
    Location::parse_with_options(&server.url(prefix), server.client_options())
        .expect("an s3:// location")
}

/// Deterministic bytes that differ from block to block.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn multipart_uploads_arrive_whole_and_range_reads_are_verified() {
    let server = S3TestServer::start("store").unwrap();
    // 5 MiB parts (S3's smallest) and three in flight: a 12 MiB object is three parts.
    let store = location(&server, "run/shards")
        .with_part_bytes(5 << 20)
        .with_in_flight(3);
    let bytes = pattern((12 << 20) + 12_345);
    let digests = BlockDigests::of(&bytes, 1 << 20);
    store.put("big.bin", bytes.clone().into()).unwrap();
    store.put("small.bin", b"hello".to_vec().into()).unwrap();

    assert_eq!(
        std::fs::read(server.object_path("run/shards/big.bin")).unwrap(),
        bytes
    );
    assert_eq!(store.size("big.bin").unwrap(), Some(bytes.len() as u64));
    assert_eq!(store.get("small.bin").unwrap().unwrap().as_ref(), b"hello");
    assert_eq!(store.get("absent.bin").unwrap(), None);
    assert_eq!(store.size("absent.bin").unwrap(), None);
    let names: Vec<String> = store.list().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["big.bin", "small.bin"]);

    let total = bytes.len() as u64;
    for range in [
        0..1,
        3_000_000..9_000_001,
        (total - 10)..total,
        0..total,
        7..7,
    ] {
        let read = store
            .get_verified_range("big.bin", range.clone(), total, &digests)
            .unwrap();
        assert_eq!(
            read.as_ref(),
            &bytes[range.start as usize..range.end as usize]
        );
    }

    // One flipped byte on the server's disk: reads of its block fail and name it, others pass.
    let path = server.object_path("run/shards/big.bin");
    let mut stored = std::fs::read(&path).unwrap();
    stored[(5 << 20) + 17] ^= 0x40;
    std::fs::write(&path, &stored).unwrap();
    let error = store
        .get_verified_range("big.bin", (5 << 20)..(5 << 20) + 100, total, &digests)
        .unwrap_err();
    assert!(matches!(error, ObjectError::Corrupt { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("store/run/shards/big.bin: block 5"),
        "{error}"
    );
    assert!(
        store
            .get_verified_range("big.bin", 0..(5 << 20), total, &digests)
            .is_ok()
    );

    // A truncated object is named as such.
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let error = store
        .get_verified_range("big.bin", (total - 10)..total, total, &digests)
        .unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");

    store.delete("small.bin").unwrap();
    store.delete("small.bin").unwrap();
    assert_eq!(store.get("small.bin").unwrap(), None);
}

#[test]
fn wrong_credentials_and_bad_urls_are_clear_errors() {
    let server = S3TestServer::start("store").unwrap();
    let mut options = server.client_options();
    options.retain(|(k, _)| k != "aws_secret_access_key");
    options.push(("aws_secret_access_key".into(), "not-the-secret".into()));
    let wrong = Location::parse_with_options(&server.url("x"), options).unwrap();
    let error = wrong.put("a.bin", vec![1u8; 10].into()).unwrap_err();
    assert!(
        error.to_string().starts_with("s3://store/x/a.bin: "),
        "{error}"
    );

    let error = Location::parse("ftp://host/x").unwrap_err();
    assert!(
        error.to_string().contains("unsupported scheme ftp://"),
        "{error}"
    );
    let error = Location::parse("s3:///x").unwrap_err();
    assert!(error.to_string().contains("no bucket"), "{error}");
    let error =
        Location::parse_with_options("s3://b/x", [("aws_no_such_setting", "1")]).unwrap_err();
    assert!(error.to_string().contains("unknown setting"), "{error}");
    assert!(
        Location::parse("file:///tmp/x")
            .unwrap()
            .local_dir()
            .is_some()
    );
}
