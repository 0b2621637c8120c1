//! One line for a command-line error of clap's: what is wrong and where the help is, the
//! same in the three binaries.

/// A command-line error of clap's as one line: what is wrong and where the help is, e.g.
/// `unexpected argument '--bogus' for 'mkfs'; see 'smlogfs mkfs --help'`. `args` are the
/// process arguments (the subcommand is the first one that is not an option).
pub fn usage_line(e: &clap::Error, cmd: &clap::Command, args: &[std::ffi::OsString]) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let bin = cmd.get_name();
    let sub = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
        .and_then(|a| cmd.find_subcommand(a))
        .map(|s| s.get_name())
        .filter(|s| *s != "help");
    let value = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    // clap's own text up to its first blank line, "error: " dropped, lines joined.
    let first_paragraph = || {
        let text = e.render().to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        lines.join(" ").trim_start_matches("error: ").to_string()
    };
    let mut what = match (e.kind(), sub) {
        (
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand,
            None,
        ) => {
            let names: Vec<&str> = cmd
                .get_subcommands()
                .map(|s| s.get_name())
                .filter(|n| *n != "help")
                .collect();
            format!("no command given; use one of {}", names.join(", "))
        }
        (ErrorKind::UnknownArgument, _) => match (value(ContextKind::InvalidArg), sub) {
            (Some(arg), Some(s)) => format!("unexpected argument '{arg}' for '{s}'"),
            (Some(arg), None) => format!("unexpected argument '{arg}'"),
            _ => first_paragraph(),
        },
        _ => first_paragraph(),
    };
    if let Some(s) = value(ContextKind::SuggestedArg).or(value(ContextKind::SuggestedSubcommand)) {
        what.push_str(&format!(" (did you mean '{s}'?)"));
    }
    match sub {
        Some(s) => format!("{what}; see '{bin} {s} --help'"),
        None => format!("{what}; see '{bin} --help'"),
    }
}
