//! The explorer's JSON API, endpoint by endpoint, against the real binary serving a tiny model
//! and SAE: answers, status codes and error messages, labels that persist, concurrent label
//! saves that all survive, and a corrupt labels file reported and left intact.

use test_support as common;

use common::{D_SAE, Fixture};
use serde_json::{Value, json};

/// Status and JSON body of a request (error statuses included).
fn call(method: &str, url: &str, body: Option<&[u8]>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", Some(b)) => agent.post(url).content_type("application/json").send(b),
        ("PUT", Some(b)) => agent.put(url).content_type("application/json").send(b),
        ("DELETE", _) => agent.delete(url).call(),
        _ => panic!("unsupported request {method}"),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn get(url: &str) -> (u16, Value) {
    call("GET", url, None)
}

fn send(method: &str, url: &str, body: Value) -> (u16, Value) {
    call(method, url, Some(body.to_string().as_bytes()))
}

/// The number under `key` in every element of a JSON array.
fn floats(array: &Value, key: &str) -> Vec<f64> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[key].as_f64().unwrap())
        .collect()
}

fn assert_error(answer: (u16, Value), status: u16, mentions: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    let message = answer.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {answer:?}"));
    assert!(message.contains(mentions), "`{message}` lacks `{mentions}`");
}

#[test]
fn every_endpoint_answers_and_rejects_bad_input_clearly() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let server = fixture.serve();
    let base = &server.url;
    let api = format!("{base}/api/saes/tiny");

    // The page and its assets; nothing else is served as a file.
    let agent = ureq::agent();
    let page = agent
        .get(&format!("{base}/"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(page.contains("<script src=\"/assets/app.js\">"));
    let script = agent.get(&format!("{base}/assets/app.js")).call().unwrap();
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_error(
        get(&format!("{base}/assets/..%2FCargo.toml")),
        404,
        "no asset",
    );
    assert_error(get(&format!("{base}/assets/../../Cargo.toml")), 404, "");
    assert_error(get(&format!("{base}/etc/passwd")), 404, "no such page");

    // Info.
    let (status, info) = get(&format!("{base}/api/info"));
    assert_eq!(status, 200);
    assert_eq!(info["saes"][0]["id"], "tiny");
    assert_eq!(info["saes"][0]["hook"], "blocks.3.hook_resid_post");
    assert_eq!(info["saes"][0]["site"], "residual");
    assert_eq!(info["saes"][0]["d_sae"], D_SAE);
    assert!(info["saes"][0]["evidence_tokens"].as_u64().unwrap() > 100);
    assert!(info["labels_problem"].is_null());
    assert_eq!(info["saes"][1]["id"], "attn");
    assert_eq!(info["saes"][1]["hook"], "blocks.2.attn.hook_z");
    assert_eq!(info["saes"][1]["site"], "attention");

    // The attention SAE (per-head outputs concatenated) answers like the residual one.
    let attn = format!("{base}/api/saes/attn");
    let (status, on_attn) = send(
        "POST",
        &format!("{attn}/activations"),
        json!({"text": "the cat sat"}),
    );
    assert_eq!(status, 200, "{on_attn}");
    assert_eq!(on_attn["sae"], "attn");
    let attn_latent = on_attn["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| t["top"][0]["latent"].as_u64())
        .expect("an attention latent fires");
    // As strong as this prompt allows (`max_strength`: the added vector at most 100 × the
    // prompt's longest activation at the hook).
    let attn_steer = |strength: f64| {
        send(
            "POST",
            &format!("{attn}/latents/{attn_latent}/steer"),
            json!({"prompt": "the cat", "strength": strength, "max_new_tokens": 6}),
        )
    };
    let (status, unsteered) = attn_steer(0.0);
    assert_eq!(status, 200, "{unsteered}");
    let attn_max = unsteered["max_strength"].as_f64().unwrap();
    let (status, steered) = attn_steer(0.99 * attn_max);
    assert_eq!(status, 200, "{steered}");
    // (Gemma's post-attention norm bounds what a hook_z direction can add, so on this random
    // model the continuation need not change; the residual SAE's steering is checked below.)
    assert!(
        !steered["steered"].as_str().unwrap().is_empty(),
        "{steered}"
    );
    // Its logit effects go through W_O: ten promoted tokens, largest first.
    let (_, attn_view) = get(&format!("{attn}/latents/{attn_latent}"));
    let promoted = floats(&attn_view["promoted"], "value");
    assert_eq!(promoted.len(), 10, "{attn_view}");
    assert!(promoted.windows(2).all(|w| w[0] >= w[1]));
    let (_, attn_all) = get(&format!("{attn}/latents?limit=200"));
    assert_eq!(attn_all["total"], 48);

    // Activations: one entry per token but BOS, latents sorted by activation, all firing.
    let (status, text) = send(
        "POST",
        &format!("{api}/activations"),
        json!({"text": "the cat sat"}),
    );
    assert_eq!(status, 200, "{text}");
    let tokens = text["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty());
    assert_eq!(tokens[0]["position"], 1);
    let mut any_firing = false;
    for token in tokens {
        let top: Vec<f64> = token["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["activation"].as_f64().unwrap())
            .collect();
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "{token}");
        assert!(top.iter().all(|&a| a > 0.0));
        any_firing |= !top.is_empty();
    }
    assert!(any_firing, "{text}");
    assert_error(
        send(
            "POST",
            &format!("{api}/activations"),
            json!({"text": "   "}),
        ),
        400,
        "empty",
    );
    assert_error(
        send(
            "POST",
            &format!("{api}/activations"),
            json!({"text": "x".repeat(5000)}),
        ),
        413,
        "limit",
    );
    assert_error(
        send("POST", &format!("{api}/activations"), json!({"words": "x"})),
        400,
        "JSON",
    );
    assert_error(
        call(
            "POST",
            &format!("{api}/activations"),
            Some(b"{\"text\": \"\xff\xfe\"}"),
        ),
        400,
        "UTF-8",
    );
    assert_error(
        send(
            "POST",
            &format!("{base}/api/saes/nope/activations"),
            json!({"text": "a"}),
        ),
        404,
        "no SAE `nope`",
    );

    // A latent's dashboard.
    let latent = tokens
        .iter()
        .find_map(|t| t["top"][0]["latent"].as_u64())
        .unwrap();
    let (status, view) = get(&format!("{api}/latents/{latent}"));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["latent"], latent);
    assert_eq!(view["label"]["source"], "automatic");
    assert!(view["fires"].as_u64().unwrap() > 0);
    let example = &view["examples"][0];
    let focus = example["focus"].as_u64().unwrap() as usize;
    assert_eq!(
        example["tokens"][focus]["activation"],
        example["activation"]
    );
    assert_eq!(view["promoted"].as_array().unwrap().len(), 10);
    let histogram_total: u64 = view["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(histogram_total, view["fires"].as_u64().unwrap());
    assert_error(get(&format!("{api}/latents/{D_SAE}")), 404, "no latent 64");
    assert_error(
        get(&format!("{api}/latents/seven")),
        400,
        "not a latent index",
    );

    // Search: every latent once, ordered by density; filters.
    let (status, all) = get(&format!("{api}/latents?limit=200&sort=density"));
    assert_eq!(status, 200);
    assert_eq!(all["total"], D_SAE);
    let densities = floats(&all["latents"], "density");
    assert!(densities.windows(2).all(|w| w[0] >= w[1]));
    // The default order: alive and not ultra-dense first (densest first), then ultra-dense,
    // then dead.
    let (_, useful) = get(&format!("{api}/latents?limit=200"));
    assert_eq!(useful["total"], D_SAE);
    let rows = useful["latents"].as_array().unwrap();
    let rank = |r: &serde_json::Value| {
        u8::from(r["ultra_dense"].as_bool().unwrap()) + 2 * u8::from(r["dead"].as_bool().unwrap())
    };
    for pair in rows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            rank(a) < rank(b)
                || (rank(a) == rank(b)
                    && a["density"].as_f64().unwrap() >= b["density"].as_f64().unwrap()),
            "{a} before {b}"
        );
    }
    let (_, by_index) = get(&format!("{api}/latents?sort=latent&limit=3&offset=2"));
    let indices: Vec<u64> = by_index["latents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["latent"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [2, 3, 4]);
    let top_token = &example["tokens"][focus]["text"];
    let (_, by_token) = get(&format!(
        "{api}/latents?limit=200&token={}",
        top_token.as_str().unwrap().trim()
    ));
    assert!(
        by_token["latents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["latent"] == latent),
        "{by_token}"
    );
    assert!(by_token["total"].as_u64().unwrap() <= D_SAE as u64);
    let dense: Vec<u64> = all["latents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ultra_dense"] == true)
        .map(|r| r["latent"].as_u64().unwrap())
        .collect();
    assert!(!dense.is_empty(), "the random SAE has ultra-dense latents");
    let (_, hidden) = send(
        "POST",
        &format!("{api}/activations"),
        json!({"text": "the cat sat", "hide_ultra_dense": true}),
    );
    let shown: Vec<u64> = hidden["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["top"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["latent"].as_u64().unwrap())
        })
        .collect();
    assert!(shown.iter().all(|l| !dense.contains(l)), "{hidden}");
    assert!(tokens.iter().any(|t| {
        t["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| dense.contains(&l["latent"].as_u64().unwrap()))
    }));
    assert_error(get(&format!("{api}/latents?limit=0")), 400, "limit");
    assert_error(get(&format!("{api}/latents?sort=sideways")), 400, "sort");

    // Labels: set, found by search, survive a restart, removed by an empty text.
    let (status, label) = send(
        "PUT",
        &format!("{api}/latents/{latent}/label"),
        json!({"text": "cats on mats"}),
    );
    assert_eq!(
        (status, &label["source"]),
        (200, &json!("manual")),
        "{label}"
    );
    let (_, found) = get(&format!("{api}/latents?q=CATS%20on"));
    assert_eq!(found["total"], 1);
    assert_eq!(found["latents"][0]["latent"], latent);
    assert_error(
        send(
            "PUT",
            &format!("{api}/latents/{latent}/label"),
            json!({"text": "a\nb"}),
        ),
        400,
        "one line",
    );
    assert_error(
        send(
            "PUT",
            &format!("{api}/latents/{latent}/label"),
            json!({"text": "x".repeat(501)}),
        ),
        413,
        "limit",
    );
    assert_error(
        send(
            "PUT",
            &format!("{api}/latents/999/label"),
            json!({"text": "x"}),
        ),
        404,
        "no latent",
    );

    // Concurrent saves all survive.
    std::thread::scope(|scope| {
        for l in 0..8 {
            let api = &api;
            scope.spawn(move || {
                let answer = send(
                    "PUT",
                    &format!("{api}/latents/{}/label", 20 + l),
                    json!({"text": format!("label {l}")}),
                );
                assert_eq!(answer.0, 200, "{answer:?}");
            });
        }
    });
    let saved = analysis::ManualLabels::load(&fixture.labels).unwrap();
    for l in 0..8 {
        assert_eq!(
            saved.get("tiny", 20 + l),
            Some(format!("label {l}").as_str())
        );
    }
    assert_eq!(saved.get("tiny", latent as usize), Some("cats on mats"));

    // Steering: greedy, so reproducible; a strong direction changes the continuation.
    let steer = |strength: f64| {
        send(
            "POST",
            &format!("{api}/latents/{latent}/steer"),
            json!({"prompt": "the cat", "strength": strength, "max_new_tokens": 8}),
        )
    };
    let (status, first) = steer(200.0);
    assert_eq!(status, 200, "{first}");
    let (_, again) = steer(200.0);
    assert_eq!(first, again);
    assert_ne!(first["steered"], first["unsteered"], "{first}");
    let (_, zero) = steer(0.0);
    assert_eq!(zero["steered"], zero["unsteered"]);
    // The range of strengths: finite, and |strength| at most `max_strength` (the added vector
    // at most 100 × the prompt's longest activation at the hook); past it the request is
    // refused with the bound, never answered with an empty continuation.
    let max = first["max_strength"]
        .as_f64()
        .unwrap_or_else(|| panic!("no max_strength: {first}"));
    assert!(max >= 200.0, "{first}");
    assert_eq!(zero["max_strength"], first["max_strength"]);
    assert_error(steer(1e20), 400, "out of range");
    assert_error(steer(-1e20), 400, "out of range");
    assert_error(steer(1.01 * max), 400, "may be at most");
    let (status, near) = steer(-0.99 * max);
    assert_eq!(status, 200, "{near}");
    assert_error(steer(1e39), 400, "number out of range");
    assert_error(
        send(
            "POST",
            &format!("{api}/latents/{latent}/steer"),
            json!({"prompt": "a", "strength": 1.0, "max_new_tokens": 0}),
        ),
        400,
        "max_new_tokens",
    );
    assert_error(
        send(
            "POST",
            &format!("{api}/latents/{latent}/steer"),
            json!({"prompt": "", "strength": 1.0}),
        ),
        400,
        "empty",
    );
    assert_error(
        send(
            "POST",
            &format!("{api}/latents/{D_SAE}/steer"),
            json!({"prompt": "a", "strength": 1.0}),
        ),
        404,
        "no latent",
    );

    drop(server);
    let restarted = fixture.serve();
    let (_, view) = get(&format!("{}/api/saes/tiny/latents/{latent}", restarted.url));
    assert_eq!(
        view["label"],
        json!({"text": "cats on mats", "source": "manual"})
    );
    let (_, cleared) = send(
        "PUT",
        &format!("{}/api/saes/tiny/latents/{latent}/label", restarted.url),
        json!({"text": ""}),
    );
    assert_eq!(cleared["source"], "automatic");
}

#[test]
fn a_corrupt_labels_file_is_reported_and_never_overwritten() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let corrupt = "[tiny]\n12 = \"unterminated\n";
    std::fs::write(&fixture.labels, corrupt).unwrap();
    let server = fixture.serve();
    let (_, info) = get(&format!("{}/api/info", server.url));
    let problem = info["labels_problem"]
        .as_str()
        .expect("the problem is reported");
    assert!(problem.contains("labels.toml"), "{problem}");
    assert_error(
        send(
            "PUT",
            &format!("{}/api/saes/tiny/latents/3/label", server.url),
            json!({"text": "x"}),
        ),
        409,
        "left as it is",
    );
    let (status, view) = get(&format!("{}/api/saes/tiny/latents/3", server.url));
    assert_eq!(
        (status, &view["label"]["source"]),
        (200, &json!("automatic"))
    );
    assert_eq!(std::fs::read_to_string(&fixture.labels).unwrap(), corrupt);
}

/// Errors that axum itself produces — a wrong method, a body over its limit, a path that does
/// not decode — are the documented JSON too.
#[test]
fn framework_errors_are_json_like_every_other_error() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let server = fixture.serve();
    let api = format!("{}/api/saes/tiny", server.url);
    assert_error(
        call("DELETE", &format!("{}/api/info", server.url), None),
        405,
        "DELETE is not allowed",
    );
    assert_error(
        get(&format!("{api}/latents/3/label")),
        405,
        "GET is not allowed",
    );
    assert_error(
        get(&format!("{}/api/saes/%FF/latents", server.url)),
        400,
        "/api/saes/%FF/latents",
    );
    // A body over the 2 MB limit, announced by Content-Length: the server answers before
    // reading any of it, so only the head is sent (written by hand; a client sending the
    // whole body is tested in the explorer crate's tests/errors.rs).
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /api/saes/tiny/activations HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        3 << 20
    )
    .unwrap();
    // Read until the JSON answer is in (the server keeps the connection a while for the body
    // it was announced, to read and throw it away), or the connection ends.
    let mut answer = String::new();
    let mut buffer = [0u8; 4096];
    while !answer.trim_end().ends_with('}') {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.push_str(&String::from_utf8_lossy(&buffer[..n])),
        }
    }
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.starts_with("HTTP/1.1 413"), "{answer}");
    // The body may come chunked: the JSON object is in it.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    let value: Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{answer}"));
    assert!(
        value["error"].as_str().unwrap().contains("activations"),
        "{value}"
    );
}

/// `explore --help` lists the options explore uses and no others: none of the training-only
/// options a shared device struct would bring (`--sae-devices`), and no mention of training.
#[test]
fn explore_help_lists_only_the_options_explore_uses() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gemma-scope"))
        .args(["explore", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let mut options: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("--")))
        .map(|option| option.trim_end_matches(','))
        .collect();
    options.sort_unstable();
    assert_eq!(
        options,
        [
            "--bind",
            "--context",
            "--corpus",
            "--device",
            "--evidence-tokens",
            "--help",
            "--kernels",
            "--labels",
            "--model",
            "--port",
            "--quiet",
            "--sae",
        ],
        "{help}"
    );
    assert!(!help.to_lowercase().contains("train"), "{help}");
}

/// Two explorers on one labels file, and a label typed into it by hand while they run: no save
/// erases another's label, and each explorer shows the others' labels.
#[test]
fn explorers_sharing_a_labels_file_never_erase_each_others_labels() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let first = fixture.serve();
    let second = fixture.serve();
    let label = |server: &common::Server, latent: usize, text: &str| {
        let answer = send(
            "PUT",
            &format!("{}/api/saes/tiny/latents/{latent}/label", server.url),
            json!({ "text": text }),
        );
        assert_eq!(answer.0, 200, "{answer:?}");
    };
    label(&first, 1, "from the first");
    label(&second, 2, "from the second");
    let mut text = std::fs::read_to_string(&fixture.labels).unwrap();
    text.push_str("5 = \"typed by hand\"\n");
    std::fs::write(&fixture.labels, text).unwrap();
    label(&first, 3, "first again");
    label(&second, 4, "second again");
    let saved = analysis::ManualLabels::load(&fixture.labels).unwrap();
    for (latent, text) in [
        (1, "from the first"),
        (2, "from the second"),
        (3, "first again"),
        (4, "second again"),
        (5, "typed by hand"),
    ] {
        assert_eq!(saved.get("tiny", latent), Some(text), "latent {latent}");
    }
    let (_, view) = get(&format!("{}/api/saes/tiny/latents/3", second.url));
    assert_eq!(
        view["label"],
        json!({"text": "first again", "source": "manual"})
    );
}

/// A hook the model lacks is refused at start-up, naming it, instead of a server that answers
/// 500 to everything.
#[test]
fn a_hook_the_model_lacks_is_refused_at_start_up() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    let output = fixture
        .command(&format!(
            "{}@blocks.99.hook_resid_post",
            fixture.sae.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("blocks.99.hook_resid_post") && stderr.contains("layers"),
        "{stderr}"
    );
}

/// A reproduce run's dashboards are used for that very SAE at that hook only: served with an
/// `@HOOK` override, or after the SAE was re-trained, the explorer computes the SAE's own.
#[test]
fn run_dashboards_are_used_only_for_the_sae_and_hook_they_were_made_for() {
    let fixture = Fixture::new(env!("CARGO_BIN_EXE_gemma-scope"));
    // A reproduce-run layout: RUN/train/tiny and RUN/dashboards_tiny.json.
    let run = fixture.dir.path().join("run");
    let sae = run.join("train").join("tiny");
    std::fs::create_dir_all(&sae).unwrap();
    for file in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(fixture.sae.join(file), sae.join(file)).unwrap();
    }
    // Dashboards made for it (computed once through the cache), labelled so they are known.
    drop(fixture.serve_saes(&sae.display().to_string()));
    let cached = walk(&fixture.dir.path().join("cache"))
        .into_iter()
        .find(|p| p.ends_with("dashboards.json"))
        .expect("computed dashboards are cached");
    let mut file: Value = serde_json::from_slice(&std::fs::read(cached).unwrap()).unwrap();
    for dashboard in file["dashboards"].as_array_mut().unwrap() {
        dashboard["automatic_label"] = "from the run".into();
    }
    std::fs::write(run.join("dashboards_tiny.json"), file.to_string()).unwrap();
    let label_of = |server: &common::Server| {
        get(&format!("{}/api/saes/tiny/latents/0", server.url)).1["label"]["text"].clone()
    };
    let same = fixture.serve_saes(&sae.display().to_string());
    assert_eq!(label_of(&same), "from the run");
    drop(same);
    let other_hook = fixture.serve_saes(&format!("{}@blocks.2.hook_resid_post", sae.display()));
    assert_ne!(label_of(&other_hook), "from the run");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
