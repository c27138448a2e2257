//! Hostile values for every option of every command: each command of `cargo xtask --help`
//! (every `gemma-scope` command and the benchmarks, and each sub-command) is run once per
//! option and hostile value, on the tiny model and corpus, from a fresh folder; each run must end with an error or a success, never a panic
//! (exit 101), an abort or another signal, and never write outside its folder.
//!
//! An option's hostile value replaces the option's usual value (the tiny fixtures where the
//! command needs one); a run that takes the value and starts real work is stopped after
//! [`PATIENCE`] (a value accepted is not a failure; only a crash is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support as common;

/// How long a run may work before it is stopped as "accepted".
const PATIENCE: Duration = Duration::from_secs(4);

/// Values that are wrong for almost every option: empty, negative, zero, non-finite,
/// overflowing, paths that leave the folder or cannot be made, odd URLs, look-alike dots.
const HOSTILE: &[&str] = &[
    "",
    "-1",
    "0",
    "nan",
    "1e400",
    "18446744073709551616",
    "../outside",
    "/proc/hostile",
    "file://x",
    "s3://",
    "．．",
];

fn xtask() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
}

fn help_of(path: &[String]) -> String {
    let output = xtask().args(path).arg("--help").output().unwrap();
    assert!(output.status.success(), "{path:?} --help");
    String::from_utf8(output.stdout).unwrap()
}

/// The lines of a help section (`Commands:`, `Options:`, `Arguments:`).
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|line| line.trim() != title)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .collect()
}

/// Every runnable command path (`["reproduce", "quickstart"]`, `["train"]`, …).
fn commands(path: Vec<String>, found: &mut Vec<Vec<String>>) {
    let help = help_of(&path);
    let subcommands: Vec<String> = section(&help, "Commands:")
        .iter()
        .filter(|line| line.starts_with("  ") && !line.starts_with("    "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect();
    if subcommands.is_empty() {
        found.push(path);
        return;
    }
    for name in subcommands {
        let mut sub = path.clone();
        sub.push(name);
        commands(sub, found);
    }
}

/// The options of a command that take a value.
fn valued_options(help: &str) -> Vec<String> {
    section(help, "Options:")
        .iter()
        .filter_map(|line| {
            let long = line.split("--").nth(1)?;
            let (name, rest) = long.split_once(' ')?;
            rest.trim_start()
                .starts_with('<')
                .then(|| name.trim_end_matches(',').to_string())
        })
        .collect()
}

/// The usual arguments of each command: the tiny fixtures, small budgets, paths in the run's
/// folder (`positional` first, then `--option value`).
struct Usual {
    positional: Vec<String>,
    options: BTreeMap<String, String>,
}

fn usual(path: &[String], options: &[String], fixtures: &Path) -> Usual {
    let model = common::Fixture::model().display().to_string();
    let mut usual = BTreeMap::new();
    for (option, value) in [
        ("model", model.as_str()),
        ("corpus", &fixtures.join("corpus").display().to_string()),
        ("context", "16"),
        ("plan", "sweep"),
        ("out", "out"),
    ] {
        if options.iter().any(|o| o == option) {
            usual.insert(option.to_string(), value.to_string());
        }
    }
    let sae = fixtures.join("saes/tiny").display().to_string();
    let mut positional = Vec::new();
    match path
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["inspect"] => positional.push(sae),
        ["convert"] => {
            positional.extend([sae, "converted".into()]);
            usual.insert("to".into(), "saelens".into());
        }
        ["slurm"] => positional.push("status".into()),
        ["cache"] => {
            usual.insert("tokens".into(), "64".into());
            usual.insert("hooks".into(), "blocks.1.hook_resid_post".into());
        }
        ["dump-activations"] => {
            usual.insert("text".into(), "the cat sat".into());
            usual.insert("hooks".into(), "blocks.1.hook_resid_post".into());
        }
        ["explore"] => {
            usual.insert("sae".into(), sae);
            usual.insert("port".into(), "0".into());
            usual.insert("evidence-tokens".into(), "400".into());
        }
        ["copy-store"] => {
            usual.insert("from".into(), "store".into());
            usual.insert("to".into(), "copy".into());
        }
        ["train"] => {
            usual.insert(
                "config".into(),
                fixtures.join("train.toml").display().to_string(),
            );
        }
        ["kubernetes"] => {
            usual.insert("image".into(), "image".into());
        }
        ["reproduce", "synth-bench"] => {
            // Its own model: the small synthetic one, a tiny SAE and budget.
            usual.insert("model".into(), "small".into());
            usual.insert("width".into(), "64".into());
            usual.insert("budget".into(), "2048".into());
            usual.insert("eval-samples".into(), "100".into());
        }
        _ => {}
    }
    Usual {
        positional,
        options: usual,
    }
}

/// What a hostile value replaces.
enum Target {
    Option(String),
    Positional(usize),
}

/// What a run ended with.
enum Ending {
    Exited,
    Stopped,
    Crashed(String),
}

fn run(path: &[String], usual: &Usual, cwd: &Path, cache: &Path) -> (Ending, String) {
    let mut command = xtask();
    command.args(path).args(&usual.positional);
    for (option, value) in &usual.options {
        command.arg(format!("--{option}")).arg(value);
    }
    let log = cwd.join("stderr.log");
    command
        .current_dir(cwd)
        .env("GEMMA_SCOPE_CACHE", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > PATIENCE {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let ending = match status {
        None => Ending::Stopped,
        Some(status) => match status.code() {
            Some(101) => Ending::Crashed("exit 101".into()),
            Some(_) if !stderr.contains("panicked at") => Ending::Exited,
            Some(code) => Ending::Crashed(format!("exit {code} after a panic")),
            None => Ending::Crashed(format!("killed by a signal: {status:?}")),
        },
    };
    (ending, stderr)
}

/// Every file under `dir` except the run's own log.
fn written(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "stderr.log"))
        .collect()
}

#[test]
fn no_command_panics_or_escapes_its_folder_on_hostile_option_values() {
    let fixture = common::Fixture::new(env!("CARGO_BIN_EXE_xtask"));
    let fixtures = fixture.dir.path();
    std::fs::write(
        fixtures.join("train.toml"),
        "steps = 4\nbatch_size = 32\nscaling_batches = 1\n[[saes]]\nname = \"s\"\n\
         hook = \"blocks.1.hook_resid_post\"\nd_sae = 16\narchitecture = { kind = \"jump_relu\" }\n",
    )
    .unwrap();
    let cache = fixtures.join("cache");
    // What an absolute path taken for a relative one (`file://x` once meant `/x`) would add to.
    let root_before = written(Path::new("/"));
    let mut paths = Vec::new();
    commands(Vec::new(), &mut paths);
    assert!(paths.len() >= 20, "{paths:?}");
    // Sub-commands of one command with the same options (the experiments of `reproduce`)
    // share their option parsing and checks: the first of them stands for the others.
    let mut seen = std::collections::BTreeSet::new();
    let mut cases = Vec::new();
    for path in &paths {
        let options = valued_options(&help_of(path));
        if !seen.insert((path[..path.len() - 1].to_vec(), options.clone())) {
            continue;
        }
        let base = usual(path, &options, fixtures);
        let targets = options
            .iter()
            .map(|o| Target::Option(o.clone()))
            .chain((0..base.positional.len()).map(Target::Positional));
        for target in targets {
            for value in HOSTILE {
                let mut hostile = Usual {
                    positional: base.positional.clone(),
                    options: base.options.clone(),
                };
                let what = match &target {
                    Target::Option(option) => {
                        hostile.options.insert(option.clone(), value.to_string());
                        format!("{} --{option} {value:?}", path.join(" "))
                    }
                    Target::Positional(index) => {
                        hostile.positional[*index] = value.to_string();
                        format!("{} <argument {index}> {value:?}", path.join(" "))
                    }
                };
                cases.push((path.clone(), hostile, what, value.contains("..")));
            }
        }
    }
    // Two runs at a time (the machines this runs on have two cores or more).
    let outcomes: Vec<(Vec<String>, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|worker| {
                let (cases, cache) = (&cases, &cache);
                scope.spawn(move || {
                    let (mut crashes, mut stopped) = (Vec::new(), Vec::new());
                    for (path, hostile, what, leaves) in cases.iter().skip(worker).step_by(2) {
                        let root = tempfile::tempdir().unwrap();
                        let cwd = root.path().join("cwd");
                        std::fs::create_dir(&cwd).unwrap();
                        let (ending, stderr) = run(path, hostile, &cwd, cache);
                        match ending {
                            Ending::Crashed(how) => crashes.push(format!(
                                "{what}: {how}\n{}",
                                stderr.lines().rev().take(8).collect::<Vec<_>>().join("\n")
                            )),
                            Ending::Stopped => stopped.push(what.clone()),
                            Ending::Exited => {}
                        }
                        // `../outside` is a path the user gave; anything else stays in the folder.
                        let outside: Vec<_> = written(root.path())
                            .into_iter()
                            .filter(|p| !p.ends_with("cwd"))
                            .collect();
                        if !outside.is_empty() && !leaves {
                            crashes.push(format!("{what}: wrote outside its folder: {outside:?}"));
                        }
                    }
                    (crashes, stopped)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let crashes: Vec<String> = outcomes.iter().flat_map(|(c, _)| c.clone()).collect();
    let stopped: Vec<String> = outcomes.iter().flat_map(|(_, s)| s.clone()).collect();
    let runs = cases.len();
    let new_at_root: Vec<_> = written(Path::new("/"))
        .into_iter()
        .filter(|p| !root_before.contains(p))
        .collect();
    assert!(new_at_root.is_empty(), "written at /: {new_at_root:?}");
    eprintln!(
        "{runs} runs over {} commands; {} took the value and were stopped after {PATIENCE:?}: {stopped:#?}",
        paths.len(),
        stopped.len()
    );
    assert!(
        crashes.is_empty(),
        "{} crashes:\n{}",
        crashes.len(),
        crashes.join("\n\n")
    );
}
