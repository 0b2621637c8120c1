//! The two ends of each binary's `main`: parse the command line (a usage error becomes one
//! line and exit status 2), run, and turn the outcome into the exit status, a failure printed
//! as one line on stderr first. Logging is left to each binary: their default levels differ.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::usage_line;

/// Exit statuses every binary gives the same meaning (docs/operations.md, "Exit codes").
pub mod exit {
    /// Bad command line: clap's own errors, and values the binary itself rejects.
    pub const USAGE: u8 = 2;
}

/// A failed command: the status it ends the process with, and the one line that says what
/// failed, where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub msg: String,
}

impl Failure {
    pub fn new(code: u8, msg: impl Into<String>) -> Self {
        let msg = msg.into();
        // Status 0 would report a failure as success.
        assert_ne!(code, 0, "a failure needs a non-zero exit code: {msg}");
        Failure { code, msg }
    }
}

/// A binary, as its error lines name it.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    name: &'static str,
    /// What follows the name on an error line. raid-sim and mirror-agent say `error: `;
    /// smlogfs says nothing more (its lines are quoted so in docs/operations.md and tests).
    label: &'static str,
}

impl Program {
    /// A binary whose error lines read `NAME: error: …`.
    pub const fn new(name: &'static str) -> Program {
        Program {
            name,
            label: "error: ",
        }
    }

    /// A binary whose error lines read `NAME: …`.
    pub const fn unlabelled(name: &'static str) -> Program {
        Program { name, label: "" }
    }

    /// The whole of a `main` after logging is set up: parses the process arguments into `A`
    /// (`--help` and `--version` print and exit 0), runs `run`, and returns its exit status.
    pub fn main<A, F>(&self, run: impl FnOnce(A) -> Result<u8, F>) -> ExitCode
    where
        A: clap::Parser,
        F: Into<Failure>,
    {
        match self.parse(std::env::args_os().collect()) {
            Ok(args) => self.finish(run(args)),
            Err(line) => {
                eprintln!("{line}");
                ExitCode::from(exit::USAGE)
            }
        }
    }

    /// `argv` parsed into `A`, or the one line to print for a usage error. Help and version
    /// requests print on stdout and exit 0 here, as clap does.
    fn parse<A: clap::Parser>(&self, argv: Vec<OsString>) -> Result<A, String> {
        match A::try_parse_from(&argv) {
            Ok(args) => Ok(args),
            Err(e) if !e.use_stderr() => e.exit(),
            Err(e) => Err(self.error_line(&usage_line(&e, &A::command(), &argv))),
        }
    }

    /// The exit status of `outcome`; a failure's line goes to stderr first.
    pub fn finish<F: Into<Failure>>(&self, outcome: Result<u8, F>) -> ExitCode {
        match outcome.map_err(Into::into) {
            Ok(code) => ExitCode::from(code),
            Err(f) => {
                eprintln!("{}", self.error_line(&f.msg));
                ExitCode::from(f.code)
            }
        }
    }

    /// `msg` as this binary's error line.
    pub fn error_line(&self, msg: &str) -> String {
        format!("{}: {}{msg}", self.name, self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "tool")]
    enum Tool {
        /// A subcommand with one flag.
        Make {
            #[arg(long)]
            fast: bool,
        },
    }

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_program_and_the_help() {
        let line = Program::new("tool")
            .parse::<Tool>(argv(&["tool", "make", "--bogus"]))
            .unwrap_err();
        assert_eq!(
            line,
            "tool: error: unexpected argument '--bogus' for 'make'; see 'tool make --help'"
        );
        let line = Program::unlabelled("tool")
            .parse::<Tool>(argv(&["tool"]))
            .unwrap_err();
        assert_eq!(
            line,
            "tool: no command given; use one of make; see 'tool --help'"
        );
    }

    #[test]
    fn good_arguments_parse() {
        let parsed = Program::new("tool").parse::<Tool>(argv(&["tool", "make", "--fast"]));
        assert!(matches!(parsed, Ok(Tool::Make { fast: true })));
    }

    #[test]
    fn error_lines_carry_the_label_of_their_program() {
        assert_eq!(Program::new("a").error_line("x"), "a: error: x");
        assert_eq!(Program::unlabelled("a").error_line("x"), "a: x");
    }
}
