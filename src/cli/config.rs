//! `--config FILE`: settings from a JSON or TOML file, overridden by flags on the command line.
//! Each key is a flag's long name (`weight_decay` or `weight-decay`), or `kind` for the kind
//! `wgnn train` trains (`kind = "softmax"`, used when the command line names none); values are strings,
//! numbers, booleans (a switch such as `quiet = true`) or lists (joined by commas). The file's
//! settings are placed before the command line's flags, and a flag given twice keeps its last
//! value, so the command line wins. Each setting becomes one `--flag=value` word, so a value
//! that starts with `-` (a negative number) is a value, never read as another flag.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, anyhow, bail};

fn settings(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--config {}: cannot read", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    // The parsers' own messages span lines and echo the offending line (200 KB for a deeply
    // nested input): one line of bounded length instead.
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        anyhow!("{}", wgnn::one_line(&format!("--config {}: {what}: {e}", path.display())))
    };
    let value: serde_json::Value = if is_toml {
        toml::from_str(&text).map_err(|e| {
            // The message first, then where: the echoed line would crowd it out of one line.
            let at = e.span().map_or_else(String::new, |span| {
                let before = text.get(..span.start).unwrap_or("");
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" (line {line}, column {column})")
            });
            bad("not valid TOML", &format!("{}{at}", e.message()))
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| bad("not valid JSON (name it .toml for TOML)", &e))?
    };
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => bail!("--config {}: expected an object of settings, e.g. {{\"iterations\": 100}}", path.display()),
    }
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The command line with the settings of every `--config FILE` inserted after the
/// subcommand's name.
/// Whether `wgnn COMMAND` has the flag `--NAME` (or an alias of it). An unknown command is
/// left to clap, which names it.
fn takes_flag(command: &str, name: &str) -> bool {
    use clap::CommandFactory;
    let cli = super::Cli::command();
    let Some(sub) = cli.find_subcommand(command) else { return true };
    sub.get_arguments()
        .chain(cli.get_arguments())
        .any(|a| a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|all| all.contains(&name)))
}

pub fn expand(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let config_at = args.iter().position(|a| a == "--config");
    let Some(i) = config_at else { return Ok(args) };
    let Some(path) = args.get(i + 1) else { bail!("--config needs a file") };
    let map = settings(Path::new(path))?;
    // After the program and subcommand names: argv[0] and the first word that is neither a
    // flag nor --config's file.
    let mut command_at = None;
    let mut j = 1;
    while j < args.len() {
        if args[j] == "--config" {
            j += 2;
        } else if args[j].to_string_lossy().starts_with('-') {
            j += 1;
        } else {
            command_at = Some(j);
            break;
        }
    }
    let command = command_at.map(|i| args[i].to_string_lossy().into_owned());
    let sub = command_at.map_or(args.len(), |i| i + 1);
    let mut kind: Option<OsString> = None;
    let mut inserted: Vec<OsString> = Vec::new();
    if map.contains_key("kind") && command.as_deref() != Some("train") {
        bail!(
            "--config: `kind` is the kind `wgnn train` trains (autoencoder, softmax, mlp, stacked or cnn), a string; only train takes it"
        );
    }
    for (key, value) in &map {
        // `wgnn train KIND` takes its kind as a word, not a flag.
        if key == "kind" {
            let Some(k) = scalar(value).filter(|_| command.as_deref() == Some("train")) else {
                bail!(
                    "--config: `kind` is the kind `wgnn train` trains (autoencoder, softmax, mlp, stacked or cnn), a string; only train takes it"
                );
            };
            kind = Some(k.into());
            continue;
        }
        let flag = format!("--{}", key.replace('_', "-"));
        if let Some(command) = command.as_deref()
            && !takes_flag(command, &flag[2..])
        {
            bail!(
                "--config {}: `{key}` is not a setting of `wgnn {command}` (keys are its flags' names: see wgnn {command} --help)",
                Path::new(path).display()
            );
        }
        match value {
            serde_json::Value::Bool(true) => inserted.push(flag.into()),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                let Some(parts) = parts else { bail!("--config: `{key}` must be a list of numbers or strings") };
                inserted.push(format!("{flag}={}", parts.join(",")).into());
            }
            v => match scalar(v) {
                Some(s) => inserted.push(format!("{flag}={s}").into()),
                None => bail!("--config: `{key}` must be a string, number, boolean or list"),
            },
        }
    }
    let mut out = args[..sub].to_vec();
    // The command line's own kind wins: the file's goes in only when none follows `train`.
    if let Some(k) = kind
        && args.get(sub).is_none_or(|a| a.to_string_lossy().starts_with('-'))
    {
        out.push(k);
    }
    out.extend(inserted);
    out.extend(args[sub.min(args.len())..].iter().cloned());
    Ok(out)
}
