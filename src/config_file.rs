//! The configuration file of `patchbay serve` (and `patchbay config print`): TOML whose keys
//! are the long flags with underscores (`media_listen = "0.0.0.0:3478"`).
//!
//! This module owns the layering *file < environment < flags*. It does not parse values
//! itself: it turns the file's entries into command-line arguments placed before the user's
//! own, for exactly the settings that neither the environment nor the command line sets, and
//! clap then parses one command line. So every flag has a key without a list to keep in step,
//! and a value in the file is checked by the same parser, with the same message, as the flag.
//! The file is found with `--config FILE` or `PATCHBAY_CONFIG`.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The flag (and key) that names the file; a file may not name another.
const CONFIG: &str = "config";
/// Its environment variable.
const CONFIG_ENV: &str = "PATCHBAY_CONFIG";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A key, or the shape of its value, is wrong.
    #[error("the config file {path}: `{key}`: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A command line with the config file's settings in it.
#[derive(Debug)]
pub struct Layered {
    /// The arguments to parse.
    pub args: Vec<OsString>,
    /// The ids of the settings that came from the file.
    pub from_file: BTreeSet<String>,
}

/// Adds the settings of the config file named by `args` (or by `PATCHBAY_CONFIG`, read
/// through `env`) to `args`, for the commands that take one (`serve`, `config print`). Other
/// command lines are returned unchanged.
pub fn layer(
    cli: &Command,
    args: Vec<OsString>,
    env: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<Layered, ConfigFileError> {
    let unchanged = |args| Layered {
        args,
        from_file: BTreeSet::new(),
    };
    let Some((command, start)) = serve_command(cli, &args) else {
        return Ok(unchanged(args));
    };
    let user = &args[start..];
    let Some(path) = config_path(user).or_else(|| env(OsStr::new(CONFIG_ENV)).map(PathBuf::from))
    else {
        return Ok(unchanged(args));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigFileError::Syntax {
                path: path.clone(),
                message: e.to_string(),
            })?;
    let key_error = |key: &str, problem: String| ConfigFileError::Key {
        path: path.clone(),
        key: key.to_owned(),
        problem,
    };
    let mut from_file = BTreeSet::new();
    let mut file_args = Vec::new();
    for (key, value) in &table {
        if key.contains('-') {
            return Err(key_error(
                key,
                format!("keys use underscores: `{}`", key.replace('-', "_")),
            ));
        }
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "help" && long != CONFIG)
            .ok_or_else(|| {
                key_error(
                    key,
                    "no such setting; the keys are the long flags of `patchbay serve --help` \
                     with underscores"
                        .into(),
                )
            })?;
        // The command line and the environment win over the file.
        if given_on_command_line(user, &long)
            || arg.get_env().and_then(&env).is_some_and(|v| !v.is_empty())
        {
            continue;
        }
        let takes_values = arg.get_action().takes_values();
        let many = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<String> = match value {
            toml::Value::Array(items) if many => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| key_error(key, "a list of scalar values".into())))
                .collect::<Result<_, _>>()?,
            toml::Value::Array(_) => {
                return Err(key_error(key, "takes one value, not a list".into()));
            }
            toml::Value::Boolean(b) if !takes_values => {
                if *b {
                    file_args.push(OsString::from(format!("--{long}")));
                    from_file.insert(arg.get_id().to_string());
                }
                continue;
            }
            other => vec![scalar(other)
                .ok_or_else(|| key_error(key, "must be a string, a number or a boolean".into()))?],
        };
        for v in values {
            file_args.push(OsString::from(format!("--{long}={v}")));
        }
        from_file.insert(arg.get_id().to_string());
    }
    let mut layered = args[..start].to_vec();
    layered.extend(file_args);
    layered.extend_from_slice(user);
    Ok(Layered {
        args: layered,
        from_file,
    })
}

/// The subcommand whose flags a config file sets, and where its arguments start.
fn serve_command<'c>(cli: &'c Command, args: &[OsString]) -> Option<(&'c Command, usize)> {
    let word = |i: usize| args.get(i).and_then(|a| a.to_str());
    match (word(1), word(2)) {
        (Some("serve"), _) => Some((cli.find_subcommand("serve")?, 2)),
        (Some("config"), Some("print")) => {
            Some((cli.find_subcommand("config")?.find_subcommand("print")?, 3))
        }
        _ => None,
    }
}

/// The value of `--config FILE` or `--config=FILE` on the command line.
fn config_path(user: &[OsString]) -> Option<PathBuf> {
    let flag = format!("--{CONFIG}");
    let mut it = user.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == flag {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

fn given_on_command_line(user: &[OsString], long: &str) -> bool {
    let flag = format!("--{long}");
    let with_value = format!("{flag}=");
    user.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .any(|a| a == flag || a.starts_with(&with_value))
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The effective configuration of the parsed `matches` of `command`, as a TOML file with
/// where each value came from; secrets are hidden (flags whose environment value is hidden,
/// and the password of a database URL).
pub fn render(command: &Command, matches: &ArgMatches, from_file: &BTreeSet<String>) -> String {
    let mut out = String::from(
        "# The effective configuration of `patchbay serve` (secrets hidden).\n# Each value's source: default, file, env or flag.\n",
    );
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == CONFIG || long == "version" {
            continue;
        }
        let id = arg.get_id().as_str();
        let key = long.replace('-', "_");
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::CommandLine) if from_file.contains(id) => "file",
            Some(ValueSource::CommandLine) => "flag",
            _ => "",
        };
        if raw.is_empty() || source.is_empty() {
            let _ = writeln!(out, "# {key} = (not set)");
            continue;
        }
        let hide = |v: String| {
            if arg.is_hide_env_values_set() {
                "(hidden)".to_owned()
            } else if id == "database_url" {
                crate::app::redact(&v)
            } else {
                v
            }
        };
        let mut values = raw.into_iter().map(hide).map(typed);
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(values.collect())
        } else {
            match (values.next(), arg.get_action().takes_values()) {
                (Some(v), true) => v,
                (_, false) => toml::Value::Boolean(matches.get_flag(id)),
                (None, true) => continue,
            }
        };
        let _ = writeln!(out, "{key} = {value}  # {source}");
    }
    out
}

/// A raw value as TOML: a number when it is one, else a string.
fn typed(raw: String) -> toml::Value {
    match raw.parse::<i64>() {
        Ok(n) => toml::Value::Integer(n),
        Err(_) => toml::Value::String(raw),
    }
}

/// A commented config file with every setting of `command` (the `serve` command) at its
/// default, each under its help text: what `patchbay config example` prints and
/// `deploy/patchbay.toml` holds.
pub fn example(command: &Command) -> String {
    let mut out = String::from(
        "# patchbay configuration file (`patchbay serve --config FILE`, or PATCHBAY_CONFIG=FILE).\n\
         # Keys are the long flags of `patchbay serve` with underscores. Environment variables\n\
         # override this file, and flags override both. Every setting is shown commented out\n\
         # at its default; `patchbay config print` shows the effective configuration.\n\
         # Generated by `patchbay config example`.\n",
    );
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == CONFIG || long == "version" {
            continue;
        }
        let key = long.replace('-', "_");
        out.push('\n');
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        for line in wrap(&help, 96) {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(env) = arg.get_env() {
            let _ = writeln!(
                out,
                "# (flag --{long}, environment {})",
                env.to_string_lossy()
            );
        }
        let defaults: Vec<toml::Value> = arg
            .get_default_values()
            .iter()
            .map(|v| typed(v.to_string_lossy().into_owned()))
            .collect();
        let many = matches!(arg.get_action(), ArgAction::Append);
        match (defaults.len(), many) {
            (0, true) => {
                let _ = writeln!(out, "# {key} = []");
            }
            (0, false) => {
                let _ = writeln!(out, "# {key} =");
            }
            (_, true) => {
                let _ = writeln!(out, "# {key} = {}", toml::Value::Array(defaults));
            }
            (_, false) => {
                let _ = writeln!(out, "# {key} = {}", defaults[0]);
            }
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn write(text: &str) -> (tempfile_dir::Dir, PathBuf) {
        let dir = tempfile_dir::Dir::new();
        let path = dir.0.join("patchbay.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write: {e}"));
        (dir, path)
    }

    /// A throwaway directory (std only).
    mod tempfile_dir {
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Dir {
                let p =
                    std::env::temp_dir().join(format!("patchbay-config-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir: {e}"));
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn no_env(_: &OsStr) -> Option<OsString> {
        None
    }

    #[test]
    fn file_entries_go_before_the_users_flags_unless_the_flag_or_env_is_given() {
        let (_d, path) = write(
            "listen = \"127.0.0.1:1\"\nmedia_shards = 3\npublic_ip = [\"192.0.2.1\", \"192.0.2.2\"]\nhttp_header_timeout = 7\n",
        );
        let cli = crate::config::Cli::command();
        let env = |k: &OsStr| (k == "PATCHBAY_HTTP_HEADER_TIMEOUT").then(|| OsString::from("8"));
        let p = path.to_string_lossy().into_owned();
        let l = layer(
            &cli,
            args(&["patchbay", "serve", "--config", &p, "--media-shards=5"]),
            env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<String> = l
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            got,
            [
                "patchbay",
                "serve",
                "--listen=127.0.0.1:1",
                "--public-ip=192.0.2.1",
                "--public-ip=192.0.2.2",
                "--config",
                p.as_str(),
                "--media-shards=5"
            ]
        );
        assert_eq!(
            l.from_file,
            BTreeSet::from(["listen".to_owned(), "public_ip".to_owned()])
        );
    }

    #[test]
    fn unknown_keys_dashes_lists_and_tables_are_refused_with_the_key() {
        let cli = crate::config::Cli::command();
        for (text, needle) in [
            ("lisen = \"x\"", "`lisen`: no such setting"),
            (
                "media-listen = \"x\"",
                "keys use underscores: `media_listen`",
            ),
            ("listen = [\"a\", \"b\"]", "takes one value"),
            ("listen = { a = 1 }", "must be a string"),
            ("config = \"other.toml\"", "`config`: no such setting"),
            ("listen = ", "not valid TOML"),
        ] {
            let (_d, path) = write(text);
            let p = path.to_string_lossy().into_owned();
            let err = layer(&cli, args(&["patchbay", "serve", "--config", &p]), no_env)
                .err()
                .unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn other_commands_and_a_missing_file_flag_are_left_alone() {
        let cli = crate::config::Cli::command();
        let a = args(&["patchbay", "account", "create", "x"]);
        let l = layer(&cli, a.clone(), no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.args, a);
        let a = args(&["patchbay", "serve", "--listen", "127.0.0.1:0"]);
        let l = layer(&cli, a.clone(), no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.args, a);
        let err = layer(
            &cli,
            args(&["patchbay", "serve", "--config=/nonexistent/x.toml"]),
            no_env,
        )
        .err()
        .unwrap_or_else(|| panic!("a missing file was accepted"));
        assert!(
            err.to_string().contains("cannot read the config file"),
            "{err}"
        );
    }
}
