//! # s3-test-server: a real S3 endpoint on 127.0.0.1 for tests
//!
//! [`S3TestServer::start`] serves an S3-compatible API ([`s3s`] over [`s3s_fs`]'s folder-backed
//! buckets) from a background thread of the test process, on a free loopback port, with
//! signed requests (one access key). Objects are plain files under [`S3TestServer::object_path`],
//! so a test can corrupt or truncate one behind the client's back. The server stops when the
//! value is dropped.
//!
//! ```
//! let server = s3_test_server::S3TestServer::start("activations").expect("a loopback server");
//! assert!(server.endpoint().starts_with("http://127.0.0.1:"));
//! assert!(server.object_path("a/b.bin").ends_with("activations/a/b.bin"));
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The access key id the server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "test-secret-key";
/// The region clients sign for.
pub const REGION: &str = "us-east-1";

/// A running S3-compatible server with one bucket; stops on drop.
pub struct S3TestServer {
    address: SocketAddr,
    bucket: String,
    root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3TestServer {
    /// Starts a server on a free port of 127.0.0.1 with an empty bucket named `bucket`.
    pub fn start(bucket: &str) -> std::io::Result<Self> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(bucket))?;
        let filesystem = s3s_fs::FileSystem::new(root.path())
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let service = {
            let mut builder = S3ServiceBuilder::new(filesystem);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))?;
        let address = listener.local_addr()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let connections = ConnectionBuilder::new(TokioExecutor::new());
                loop {
                    let socket = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            // Without TCP_NODELAY a response written in two pieces (headers,
                            // then body) waits for the client's delayed ACK: 40 ms a GET.
                            Ok((socket, _)) => match socket.set_nodelay(true) {
                                Ok(()) => socket,
                                Err(_) => continue,
                            },
                            Err(_) => continue,
                        },
                        _ = &mut stopped => break,
                    };
                    let connection = connections
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            });
            runtime.shutdown_background();
        });
        Ok(Self {
            address,
            bucket: bucket.to_string(),
            root,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `s3://BUCKET/prefix` for a prefix inside the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// The object-store settings a client needs: endpoint, keys, region, plain HTTP, path-style
    /// requests (as `object_store`'s `AmazonS3ConfigKey` names them).
    pub fn client_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_access_key_id", ACCESS_KEY.to_string()),
            ("aws_secret_access_key", SECRET_KEY.to_string()),
            ("aws_region", REGION.to_string()),
            ("aws_allow_http", "true".to_string()),
            ("aws_virtual_hosted_style_request", "false".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// [`S3TestServer::client_options`] as the environment variables `object_store`'s
    /// `AmazonS3Builder::from_env` reads (`AWS_ENDPOINT`, …), for a child process.
    pub fn client_env(&self) -> Vec<(String, String)> {
        self.client_options()
            .into_iter()
            .map(|(key, value)| (key.to_ascii_uppercase(), value))
            .collect()
    }

    /// The file that holds object `key` of the bucket on the server's disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(&self.bucket).join(key)
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
