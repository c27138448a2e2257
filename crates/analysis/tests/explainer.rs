//! The LLM explainer against a local mock of an OpenAI-compatible endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;

use analysis::LatentDashboard;
use analysis::evidence::{EvidenceCollector, EvidenceConfig};
use analysis::explainer::{LlmConfig, explain};
use analysis::logit_effects::LogitEffects;

type Answer = Box<dyn Fn(&serde_json::Value) -> String + Send>;

/// Serves one chat completion per answer; returns the base URL and the requests' JSON bodies.
fn mock(answers: Vec<Answer>) -> (String, JoinHandle<Vec<(String, serde_json::Value)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for answer in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                headers.push_str(&line);
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let reply = serde_json::json!({
                "choices": [{ "message": { "role": "assistant", "content": answer(&request) } }]
            })
            .to_string();
            let mut stream = stream;
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .unwrap();
            seen.push((headers, request));
        }
        seen
    });
    (url, handle)
}

/// Latent 0 fires on " apple" in six contexts; latent 1 on " red", out of sight of any apple.
fn dashboards() -> Vec<LatentDashboard> {
    let config = EvidenceConfig {
        top_k: 6,
        window_before: 2,
        window_after: 1,
    };
    let mut collector = EvidenceCollector::new(2, config);
    for context in 0..6u32 {
        let tokens = [3, 4, 1, 5, 2, 6];
        let a = 1.0 + context as f32;
        let latents = [0.0, 0.0, 0.0, 0.0, a, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        collector
            .observe_context(context, &tokens, 1, &latents)
            .unwrap();
    }
    collector
        .finish()
        .into_iter()
        .map(|evidence| LatentDashboard {
            logit_effects: LogitEffects {
                latent: evidence.latent,
                promoted: vec![],
                suppressed: vec![],
            },
            automatic_label: String::new(),
            evidence,
        })
        .collect()
}

fn token_text(t: u32) -> String {
    [" the", " apple", " pear", " a", " of", " big", " red"][t as usize].to_string()
}

fn detect_apples(request: &serde_json::Value) -> String {
    let user = request["messages"][1]["content"].as_str().unwrap();
    user.lines()
        .filter(|l| {
            l.split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .map(|l| if l.contains("apple") { "1" } else { "0" })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn explains_a_latent_and_scores_detection_by_balanced_accuracy() {
    let dashboards = dashboards();
    let negatives = dashboards[1].evidence.top.clone();
    let answers: Vec<Answer> = vec![
        Box::new(|_| "\"the word apple\"".into()),
        Box::new(detect_apples),
        Box::new(|_| "apples".into()),
        Box::new(|_| "1 1 1 1 1 1".into()),
    ];
    let (url, server) = mock(answers);
    let config = LlmConfig {
        base_url: url,
        model: "mock-1".into(),
        api_key: Some("k".into()),
    };
    let good = explain(&config, &dashboards[0], &negatives, &token_text).unwrap();
    assert_eq!(good.explanation, "the word apple");
    assert_eq!(good.detection_score, 1.0);
    assert_eq!(good.model, "mock-1");
    let always_yes = explain(&config, &dashboards[0], &negatives, &token_text).unwrap();
    assert_eq!(
        always_yes.detection_score, 0.5,
        "all 1s: every positive and no negative right"
    );

    let requests = server.join().unwrap();
    let (headers, explain_request) = &requests[0];
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("authorization: bearer k")
    );
    assert_eq!(explain_request["model"], "mock-1");
    let shown = explain_request["messages"][1]["content"].as_str().unwrap();
    assert_eq!(
        shown.matches("⟦ apple⟧").count(),
        3,
        "even-ranked examples are shown: {shown}"
    );
    let detection = requests[1].1["messages"][1]["content"].as_str().unwrap();
    assert!(detection.starts_with("Explanation: the word apple"));
    assert!(!detection.contains('⟦'), "detection texts are unmarked");
    assert_eq!(detection.lines().filter(|l| l.contains(". ")).count(), 6);
}

#[test]
fn a_malformed_answer_is_an_error_not_a_score() {
    let dashboards = dashboards();
    let negatives = dashboards[1].evidence.top.clone();
    let answers: Vec<Answer> = vec![Box::new(|_| "apples".into()), Box::new(|_| "yes".into())];
    let (url, _server) = mock(answers);
    let config = LlmConfig {
        base_url: url,
        model: "m".into(),
        api_key: None,
    };
    let error = explain(&config, &dashboards[0], &negatives, &token_text).unwrap_err();
    assert!(
        error.to_string().contains("0 answers for 6 texts"),
        "{error}"
    );
}
