//! Running `dig` and reading its output.
//!
//! dig is the reference client: what it prints is what an operator would see. The parser
//! reads the default (non-`+short`) output format of BIND 9.18.

use std::time::Duration;

use anyhow::Result;

use crate::netns::Netns;

/// Options prepended to every dig call so that a lost answer costs about a second, not
/// dig's default 15; a caller's own `+time=`/`+tries=` come later and win.
pub const BOUNDED_DEFAULTS: &[&str] = &["+tries=1", "+time=1"];

/// One resource record line of dig's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigRecord {
    pub name: String,
    pub ttl: u32,
    pub class: String,
    pub rtype: String,
    /// The RDATA as dig prints it (e.g. `10.96.0.10`, `0 100 53 kube-dns...`).
    pub data: String,
}

/// What one dig run printed.
#[derive(Debug, Clone, Default)]
pub struct DigOutput {
    /// dig's exit code (0 answered, 9 no reply, 10 parse error...).
    pub exit_code: i32,
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`...; None when no reply came.
    pub status: Option<String>,
    /// Header flags (`qr`, `aa`, `rd`, `ra`, `tc`...).
    pub flags: Vec<String>,
    pub answers: Vec<DigRecord>,
    pub authority: Vec<DigRecord>,
    pub additional: Vec<DigRecord>,
    /// The SERVER line, e.g. `10.96.0.10#53(10.96.0.10) (UDP)`.
    pub server: Option<String>,
    pub query_time_ms: Option<u32>,
    pub msg_size: Option<u32>,
    /// The whole stdout, for assertions the parser does not cover and for failure messages.
    pub raw: String,
    pub stderr: String,
}

impl DigOutput {
    /// Whether no reply came at all (dig's "timed out" / "no servers could be reached").
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// RDATA of answer records of `rtype` (e.g. "A"), in answer order.
    pub fn answer_data(&self, rtype: &str) -> Vec<String> {
        self.answers
            .iter()
            .filter(|r| r.rtype.eq_ignore_ascii_case(rtype))
            .map(|r| r.data.clone())
            .collect()
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Panics unless the answer holds exactly `expected` of `rtype` and dig saw it come
    /// from `server` (as dig was given it, `@addr`) on port 53: what an application
    /// sees when the cache answers for the ClusterIP it asked.
    pub fn assert_answered_by(&self, rtype: &str, expected: &[String], server: &str) {
        assert_eq!(
            self.answer_data(rtype),
            expected,
            "{}\n{}",
            self.raw,
            self.stderr
        );
        let asked = server.trim_start_matches('@');
        assert!(
            self.server
                .as_deref()
                .is_some_and(|s| s.starts_with(&format!("{asked}#53"))),
            "the answer did not come from {asked}#53: {:?}\n{}",
            self.server,
            self.raw
        );
    }

    /// The transport dig reports in the SERVER line (`UDP` or `TCP`).
    pub fn transport(&self) -> Option<String> {
        let server = self.server.as_ref()?;
        let open = server.rfind('(')?;
        Some(server[open + 1..].trim_end_matches(')').to_string())
    }
}

/// Runs dig inside `netns` with the bounded defaults, then `args`.
pub fn dig(netns: &Netns, args: &[&str]) -> Result<DigOutput> {
    require_server(args)?;
    let mut full: Vec<&str> = BOUNDED_DEFAULTS.to_vec();
    full.extend_from_slice(args);
    // Generous: even with caller-chosen timeouts dig ends by itself; this only catches a
    // wedged process.
    let output = netns.exec_output("dig", &full, Duration::from_secs(60))?;
    let mut parsed = parse(&String::from_utf8_lossy(&output.stdout));
    parsed.exit_code = output.status.code().unwrap_or(-1);
    parsed.stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok(parsed)
}

/// Without `@server`, dig would read the machine's /etc/resolv.conf and aim at the
/// machine's own resolvers: a target outside the simulated node. Refuse that.
pub fn require_server(args: &[&str]) -> Result<()> {
    anyhow::ensure!(
        args.iter().any(|a| a.starts_with('@')),
        "dig needs an explicit @server inside the simulated node (got {args:?})"
    );
    Ok(())
}

#[derive(Clone, Copy)]
enum Section {
    None,
    Answer,
    Authority,
    Additional,
}

/// Parses dig's default output format.
pub fn parse(stdout: &str) -> DigOutput {
    let mut out = DigOutput {
        raw: stdout.to_string(),
        ..Default::default()
    };
    let mut section = Section::None;
    for line in stdout.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            out.status = rest
                .split("status: ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .map(str::to_string);
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or("");
            out.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Section::Answer;
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Section::Authority;
        } else if line.starts_with(";; ADDITIONAL SECTION:") {
            section = Section::Additional;
        } else if let Some(rest) = line.strip_prefix(";; SERVER: ") {
            out.server = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix(";; Query time: ") {
            out.query_time_ms = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix(";; MSG SIZE  rcvd: ") {
            out.msg_size = rest.trim().parse().ok();
        } else if line.is_empty() || line.starts_with(';') {
            if line.is_empty() {
                section = Section::None;
            }
        } else if let Some(record) = parse_record(line) {
            match section {
                Section::Answer => out.answers.push(record),
                Section::Authority => out.authority.push(record),
                Section::Additional => out.additional.push(record),
                Section::None => {}
            }
        }
    }
    out
}

fn parse_record(line: &str) -> Option<DigRecord> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?.to_string();
    let ttl = fields.next()?.parse().ok()?;
    let class = fields.next()?.to_string();
    let rtype = fields.next()?.to_string();
    let data = fields.collect::<Vec<_>>().join(" ");
    Some(DigRecord {
        name,
        ttl,
        class,
        rtype,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> +tries=1 +time=1 @10.96.0.10 does-not-exist.default.svc.cluster.local
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 1888
;; flags: qr aa rd; QUERY: 1, ANSWER: 0, AUTHORITY: 1, ADDITIONAL: 1
;; WARNING: recursion requested but not available

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags:; udp: 1232
;; QUESTION SECTION:
;does-not-exist.default.svc.cluster.local. IN A

;; AUTHORITY SECTION:
cluster.local.		5	IN	SOA	ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5

;; Query time: 3 msec
;; SERVER: 10.96.0.10#53(10.96.0.10) (UDP)
;; WHEN: Thu Nov 26 08:57:29 UTC 2026
;; MSG SIZE  rcvd: 83
"#;

    #[test]
    fn parses_a_negative_answer() {
        let out = parse(SAMPLE);
        assert_eq!(out.status.as_deref(), Some("NXDOMAIN"));
        assert_eq!(out.flags, ["qr", "aa", "rd"]);
        assert!(out.answers.is_empty());
        assert_eq!(out.authority.len(), 1);
        assert_eq!(out.authority[0].rtype, "SOA");
        assert_eq!(out.authority[0].ttl, 5);
        assert_eq!(out.query_time_ms, Some(3));
        assert_eq!(out.msg_size, Some(83));
        assert_eq!(out.transport().as_deref(), Some("UDP"));
        assert!(out.server.unwrap().starts_with("10.96.0.10#53"));
    }

    #[test]
    fn a_server_is_required() {
        assert!(require_server(&["example.org"]).is_err());
        assert!(require_server(&["@10.96.0.10", "example.org"]).is_ok());
    }

    #[test]
    fn no_reply_is_a_timeout() {
        let out = parse(
            ";; communications error to 10.96.0.10#53: timed out\n;; no servers could be reached\n",
        );
        assert!(out.timed_out());
    }
}
