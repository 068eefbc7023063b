//! One error type for the whole tool: a one-line message plus the process exit code.

use std::fmt;

/// Exit code for bad input (flags, files, shapes, specs): the same code clap uses.
pub const EXIT_INPUT: i32 = 2;
/// Exit code for failures that are not the user's input (engine or I/O errors while running).
pub const EXIT_RUNTIME: i32 = 1;

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub msg: String,
}

impl CliError {
    /// The user's input is wrong; the message names the flag, file, field or shape.
    pub fn input(msg: impl Into<String>) -> Self {
        CliError {
            code: EXIT_INPUT,
            msg: msg.into(),
        }
    }

    pub fn runtime(msg: impl Into<String>) -> Self {
        CliError {
            code: EXIT_RUNTIME,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always one line, whatever the source error printed.
        let one_line: Vec<&str> = self.msg.lines().map(str::trim).collect();
        f.write_str(&one_line.join(" "))
    }
}

pub type Result<T> = std::result::Result<T, CliError>;
