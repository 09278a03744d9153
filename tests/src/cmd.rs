//! Running external tools (ip, iptables, knotc, dig, ...) with a deadline and useful errors.
//!
//! Every tool the harness drives is short-lived; a deadline keeps a wedged tool from hanging
//! a test run forever.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The deadline for configuration tools (`ip`, `iptables-restore`, `knotc`, ...).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `program args...`, waits at most `timeout`, and returns its output whatever the exit
/// code. The process is killed when the deadline passes.
pub fn output_with_timeout<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", describe(program, args)))?;
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().context("stdin pipe")?;
        pipe.write_all(input)
            .with_context(|| format!("writing stdin of {}", describe(program, args)))?;
        // Dropping the pipe closes it, so the tool sees end of input.
    }
    // Read the pipes on threads so a chatty tool cannot block on a full pipe while we wait.
    let mut stdout_pipe = child.stdout.take().context("stdout pipe")?;
    let mut stderr_pipe = child.stderr.take().context("stderr pipe")?;
    let stdout_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout_pipe, &mut buf);
        buf
    });
    let stderr_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr_pipe, &mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a tool")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {timeout:?}",
                describe(program, args)
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs a tool and fails (with its stderr in the error) unless it exits 0.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    run_with_stdin(program, args, None)
}

/// Like [`run`], feeding `stdin` to the tool (used for `iptables-restore` and `nft -f -`).
pub fn run_with_stdin<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&[u8]>,
) -> Result<String> {
    let output = output_with_timeout(program, args, stdin, TOOL_TIMEOUT)?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(program, args),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `program arg1 arg2` for error messages.
pub fn describe<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut text = program.to_string();
    for arg in args {
        text.push(' ');
        text.push_str(&arg.as_ref().to_string_lossy());
    }
    text
}

/// Polls `condition` every `interval` until it returns true or `timeout` passes.
/// Returns whether the condition became true. Every wait in the harness goes through a
/// bounded loop like this one.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(interval);
    }
}
