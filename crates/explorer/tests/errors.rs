//! Every kind of error the explorer's server produces — 400, 404, 405, 409, 413 (a text over a
//! limit, a body over 2 MB announced, sent in full, or streamed), 422 and 500 — carries the
//! documented JSON body, and steering is refused, never answered with an empty continuation,
//! when its strength is out of range or its result is unusable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use explorer::{ApiError, EvidenceOptions, Explorer, ExplorerSae, MAX_STEERING_RATIO};
use gemma_hooks::{HookPoint, load_model};
use sae_core::arch::{AffineSae, JumpReluSae, ThresholdParametrisation};
use serde_json::{Value, json};

/// The tiny random Gemma 3 fixture (7 layers, width 32, tied embeddings).
const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gemma-hooks/tests/fixtures/tiny-gemma3"
);
/// The fixture's end-of-text token.
const EOS: usize = 1;
/// Latents of the test SAEs.
const D_SAE: usize = 8;
/// The latent whose decoder direction is the EOS token's embedding.
const EOS_LATENT: usize = 0;
/// The latent whose decoder row is NaN in the `broken` SAE.
const NAN_LATENT: usize = 1;
/// The request body limit of the server.
const MAX_BODY_BYTES: usize = 2 << 20;

/// A JumpReLU SAE on the tiny model's last residual stream with seeded random weights, whose
/// latent [`EOS_LATENT`] writes the direction of `eos_embedding` (the model ties its
/// embeddings, so a strong push along it makes EOS the next token at once) and, when
/// `broken`, whose latent [`NAN_LATENT`] has NaN in its decoder row.
fn sae(eos_embedding: &Tensor, broken: bool) -> JumpReluSae {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.6..0.6)).collect() };
    let w_enc = Tensor::from_vec(random(32 * D_SAE), (32, D_SAE), &Device::Cpu).unwrap();
    let mut w_dec = random(D_SAE * 32);
    let eos = eos_embedding.to_vec1::<f32>().unwrap();
    let norm = eos.iter().map(|v| v * v).sum::<f32>().sqrt();
    for (i, v) in eos.iter().enumerate() {
        w_dec[EOS_LATENT * 32 + i] = v / norm;
    }
    if broken {
        w_dec[NAN_LATENT * 32..(NAN_LATENT + 1) * 32].fill(f32::NAN);
    }
    let affine = AffineSae::new(
        w_enc,
        Tensor::zeros(D_SAE, DType::F32, &Device::Cpu).unwrap(),
        Tensor::from_vec(w_dec, (D_SAE, 32), &Device::Cpu).unwrap(),
        Tensor::zeros(32, DType::F32, &Device::Cpu).unwrap(),
        false,
    )
    .unwrap();
    JumpReluSae::new(
        affine,
        Tensor::full(0.3f32, D_SAE, &Device::Cpu).unwrap(),
        ThresholdParametrisation::Raw,
        Default::default(),
    )
    .unwrap()
}

/// An explorer over the tiny model with two SAEs at `blocks.6.hook_resid_post`: `eos` (finite)
/// and `broken` (the same but for a NaN decoder row), labels in `labels`.
fn explorer(work: &Path, labels: &Path) -> Explorer {
    let loaded = load_model(MODEL, &Device::Cpu, DType::F32).unwrap();
    let tokenizer = loaded.tokenizer.expect("the fixture has a tokenizer");
    let hook = HookPoint::ResidPost(6);
    let weights =
        candle_core::safetensors::load(Path::new(MODEL).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    let eos_embedding = weights["model.embed_tokens.weight"].get(EOS).unwrap();
    let finite = sae(&eos_embedding, false);
    std::fs::write(work.join("book.txt"), "the cat sat on the mat. ".repeat(40)).unwrap();
    let options = EvidenceOptions {
        model_name: "tiny".into(),
        corpus: work.join("book.txt").display().to_string(),
        tokens: 200,
        context_length: 16,
        progress: false,
    };
    let dashboards = explorer::dashboards::compute(
        &loaded.model,
        &tokenizer,
        hook,
        &finite,
        &options,
        &work.join("store"),
    )
    .unwrap();
    let saes = vec![
        ExplorerSae::new(
            "eos".into(),
            "in-memory".into(),
            hook,
            Box::new(finite),
            dashboards.clone(),
        )
        .unwrap(),
        ExplorerSae::new(
            "broken".into(),
            "in-memory".into(),
            hook,
            Box::new(sae(&eos_embedding, true)),
            dashboards,
        )
        .unwrap(),
    ];
    Explorer::new(loaded.model, tokenizer, saes, labels)
}

/// An HTTP answer: status, `Content-Type`, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    /// The answer ureq read.
    fn of(response: ureq::http::Response<ureq::Body>) -> Self {
        Self {
            status: response.status().as_u16(),
            content_type: response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body: response.into_body().read_to_string().unwrap(),
        }
    }

    /// Asserts this is the documented JSON error with `status`, its message containing
    /// `mentions`; returns the message.
    #[track_caller]
    fn assert_error(&self, status: u16, mentions: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.content_type.starts_with("application/json"),
            "{status} answered as `{}`: {}",
            self.content_type,
            self.body
        );
        let value: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{status} has no JSON body ({e}): `{}`", self.body));
        let message = value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{status}: no `error` string in {value}"))
            .to_string();
        assert!(
            message.contains(mentions),
            "{status}: `{message}` lacks `{mentions}`"
        );
        message
    }
}

/// A request through ureq (error statuses included).
fn call(method: &str, url: &str, body: Option<Value>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = match (method, body) {
        ("GET", None) => agent.get(url).call(),
        ("DELETE", None) => agent.delete(url).call(),
        ("POST", Some(b)) => agent.post(url).send_json(b),
        ("PUT", Some(b)) => agent.put(url).send_json(b),
        other => panic!("unsupported request {other:?}"),
    }
    .unwrap();
    Answer::of(response)
}

/// How a raw request sends its body.
enum Body {
    /// `Content-Length` announces `bytes`; none of it is sent.
    AnnouncedOnly(usize),
    /// `Content-Length` announces `bytes`, and all of them are sent (from another thread, while
    /// the answer is read).
    Full(usize),
    /// `Transfer-Encoding: chunked`, `bytes` in all, no length announced.
    Chunked(usize),
}

/// A POST of `body` to `path` written by hand on a socket (a client that keeps sending after
/// the server has answered), and the answer read back, even past a connection reset.
fn raw_post(address: &str, path: &str, body: Body) -> Answer {
    let mut stream = TcpStream::connect(address).unwrap();
    // A guard against a server that never answers, not a timed assertion.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let framing = match body {
        Body::AnnouncedOnly(n) | Body::Full(n) => format!("Content-Length: {n}"),
        Body::Chunked(_) => "Transfer-Encoding: chunked".to_string(),
    };
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n{framing}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // Write errors are expected: the server may close the connection once it has answered.
        let chunk = vec![b' '; 64 << 10];
        match body {
            Body::AnnouncedOnly(_) => {}
            Body::Full(n) => {
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if writer.write_all(&chunk[..take]).is_err() {
                        return;
                    }
                    left -= take;
                }
            }
            Body::Chunked(n) => {
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    let head = format!("{take:x}\r\n");
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(&chunk[..take]).is_err()
                        || writer.write_all(b"\r\n").is_err()
                    {
                        return;
                    }
                    left -= take;
                }
                let _ = writer.write_all(b"0\r\n\r\n");
            }
        }
    });
    // Read until the answer is complete (its `Content-Length` is in), the connection ends,
    // or it is reset.
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 8192];
    while !complete(&bytes) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&bytes).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {path}: `{text}`"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    // A chunked answer: the JSON object is inside its one chunk.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(start), Some(end)) if end > start => body[start..=end].to_string(),
        _ => body.to_string(),
    };
    Answer {
        status,
        content_type,
        body,
    }
}

/// Whether `bytes` hold a whole HTTP answer with a `Content-Length`.
fn complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .is_some_and(|length| body.len() >= length)
}

#[test]
fn every_kind_of_error_answer_carries_the_json_error_body() {
    let work = tempfile::tempdir().unwrap();
    let labels = work.path().join("labels.toml");
    // A corrupt labels file: labelling is refused with 409.
    std::fs::write(&labels, "[eos]\n3 = \"unterminated\n").unwrap();
    let server = explorer::spawn(
        explorer(work.path(), &labels),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let base = &server.url;
    let address = base.trim_start_matches("http://");
    let api = format!("{base}/api/saes/eos");

    // 400: malformed input, an undecodable path, a strength out of range or not finite.
    call(
        "POST",
        &format!("{api}/activations"),
        Some(json!({"words": 1})),
    )
    .assert_error(400, "JSON");
    call("GET", &format!("{base}/api/saes/%FF/latents"), None)
        .assert_error(400, "/api/saes/%FF/latents");
    call("GET", &format!("{api}/latents?limit=0"), None).assert_error(400, "limit");
    let steer = |sae: &str, latent: usize, strength: Value| {
        call(
            "POST",
            &format!("{base}/api/saes/{sae}/latents/{latent}/steer"),
            Some(json!({"prompt": "the cat", "strength": strength, "max_new_tokens": 4})),
        )
    };
    steer("eos", 2, json!(1e20)).assert_error(400, "out of range");
    steer("eos", 2, json!(-1e20)).assert_error(400, "out of range");
    steer("eos", 2, json!(1e39)).assert_error(400, "number out of range");
    steer("eos", 2, json!("strong")).assert_error(400, "JSON");

    // 404: unknown route, SAE, latent, asset.
    call("GET", &format!("{base}/etc/passwd"), None).assert_error(404, "no such page");
    call("GET", &format!("{base}/api/saes/nope/latents/0"), None).assert_error(404, "no SAE");
    call("GET", &format!("{api}/latents/{D_SAE}"), None).assert_error(404, "no latent");
    call("GET", &format!("{base}/assets/nope.js"), None).assert_error(404, "no asset");

    // 405: a method the path does not take.
    call("DELETE", &format!("{base}/api/info"), None).assert_error(405, "DELETE is not allowed");

    // 409: the labels file is unusable.
    call(
        "PUT",
        &format!("{api}/latents/3/label"),
        Some(json!({"text": "x"})),
    )
    .assert_error(409, "left as it is");

    // 413: a text over the explorer's limit; a body over 2 MB, however it is sent.
    call(
        "POST",
        &format!("{api}/activations"),
        Some(json!({"text": "x".repeat(5000)})),
    )
    .assert_error(413, "limit");
    let path = "/api/saes/eos/activations";
    let too_large = 3 * MAX_BODY_BYTES / 2;
    for body in [
        Body::AnnouncedOnly(too_large),
        Body::Full(too_large),
        Body::Chunked(too_large),
    ] {
        let what = match body {
            Body::AnnouncedOnly(_) => "announced",
            Body::Full(_) => "sent in full",
            Body::Chunked(_) => "chunked",
        };
        let answer = raw_post(address, path, body);
        assert_eq!(answer.status, 413, "{what}: {}", answer.body);
        answer.assert_error(413, path);
    }

    // A client that sends the whole body before it reads the answer (as ureq does) gets the
    // answer, not a connection reset under it.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .post(format!("{base}{path}"))
        .content_type("application/json")
        .send(&vec![b' '; too_large][..])
        .unwrap_or_else(|e| panic!("no answer to a body over the limit: {e}"));
    Answer::of(response).assert_error(413, "3145728 bytes");
    // The server still answers afterwards.
    assert_eq!(call("GET", &format!("{base}/api/info"), None).status, 200);

    // 422: a steering whose continuation is empty (along EOS, the model ends the text at once).
    let unsteered = steer("eos", EOS_LATENT, json!(0.0));
    assert_eq!(unsteered.status, 200, "{}", unsteered.body);
    let unsteered: Value = serde_json::from_str(&unsteered.body).unwrap();
    let max = unsteered["max_strength"].as_f64().expect("a max_strength");
    steer("eos", EOS_LATENT, json!(max / 2.0)).assert_error(422, "empty");

    // 500: the SAE's decoder direction is not finite.
    steer("broken", NAN_LATENT, json!(1.0)).assert_error(500, "not finite");

    server.stop().unwrap();
}

/// The strength bound: `max_steering_strength` is 100 × the longest activation at the hook
/// among the prompt's tokens ÷ the decoder norm; strengths up to it are answered, past it
/// refused, naming the bound; the answer reports it.
#[test]
fn steering_strengths_are_bounded_by_the_activations_they_steer() {
    let work = tempfile::tempdir().unwrap();
    let explorer = explorer(work.path(), &work.path().join("labels.toml"));
    let latent = 2;
    let max = explorer
        .max_steering_strength("eos", latent, "the cat")
        .unwrap()
        .expect("a nonzero direction has a bound");
    assert!(max.is_finite() && max > 0.0, "{max}");

    let answer = explorer
        .steer("eos", latent, "the cat", -0.99 * max, 4)
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = serde_json::to_value(answer).unwrap();
    assert_eq!(answer["max_strength"].as_f64().unwrap() as f32, max);
    assert!(!answer["steered"].as_str().unwrap().is_empty(), "{answer}");

    for strength in [1.01 * max, -1.01 * max, 1e20, f32::MAX] {
        match explorer.steer("eos", latent, "the cat", strength, 4) {
            Err(ApiError::BadRequest(message)) => {
                assert!(message.contains("out of range"), "{message}");
                assert!(message.contains(&format!("{max}")), "{message}");
                assert!(
                    message.contains(&format!("{MAX_STEERING_RATIO}")),
                    "{message}"
                );
            }
            other => panic!("strength {strength}: {other:?}"),
        }
    }
    for strength in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(
            matches!(
                explorer.steer("eos", latent, "the cat", strength, 4),
                Err(ApiError::BadRequest(m)) if m.contains("not a finite number")
            ),
            "strength {strength}"
        );
    }
    // The empty continuation along EOS is refused, not answered.
    let max = explorer
        .max_steering_strength("eos", EOS_LATENT, "the cat")
        .unwrap()
        .unwrap();
    match explorer.steer("eos", EOS_LATENT, "the cat", max / 2.0, 4) {
        Err(ApiError::Unprocessable(message)) => {
            assert!(message.contains("empty"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
