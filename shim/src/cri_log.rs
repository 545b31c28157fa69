//! The CRI container log format that kubelet reads and rotates:
//! `<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\n`, one line per
//! line of output; a line longer than [`MAX_LINE`] is cut into partial (`P`)
//! chunks and closed by a full (`F`) one.

use chrono::{DateTime, SecondsFormat, Utc};

/// The longest content of one log line; longer output lines are split.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's standard output (and a terminal's combined output).
    Stdout,
    /// The process's standard error.
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns one stream's raw output into CRI log lines, keeping the unfinished
/// line between calls.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for one stream.
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Appends the CRI lines that `chunk` completes to `out`.
    pub fn push(&mut self, chunk: &[u8], now: DateTime<Utc>, out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..nl]);
            // A line that ends here may still be too long: its head goes out
            // as partial chunks, the tail (at most MAX_LINE) as the full line.
            self.emit_partials(now, out, |len| len > MAX_LINE);
            self.flush_pending(now, true, out);
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        self.emit_partials(now, out, |len| len >= MAX_LINE);
    }

    fn emit_partials(
        &mut self,
        now: DateTime<Utc>,
        out: &mut Vec<u8>,
        too_long: impl Fn(usize) -> bool,
    ) {
        while too_long(self.pending.len()) {
            let tail = self.pending.split_off(MAX_LINE);
            let head = std::mem::replace(&mut self.pending, tail);
            write_line(self.stream, now, false, &head, out);
        }
    }

    /// Writes what is left when the stream ends (a last line without
    /// newline) as a full line.
    pub fn finish(&mut self, now: DateTime<Utc>, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            self.flush_pending(now, true, out);
        }
    }

    fn flush_pending(&mut self, now: DateTime<Utc>, full: bool, out: &mut Vec<u8>) {
        write_line(self.stream, now, full, &self.pending, out);
        self.pending.clear();
    }
}

fn write_line(stream: Stream, now: DateTime<Utc>, full: bool, content: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(now.to_rfc3339_opts(SecondsFormat::Nanos, true).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.tag().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456789Z")
            .unwrap()
            .into()
    }

    #[test]
    fn lines_and_partial_chunks() {
        let mut s = LineSplitter::new(Stream::Stderr);
        let mut out = Vec::new();
        s.push(b"hello\nwor", t(), &mut out);
        s.push(b"ld\n", t(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-22T10:00:00.123456789Z stderr F hello\n2026-11-22T10:00:00.123456789Z stderr F world\n"
        );
    }

    #[test]
    fn long_line_is_split_into_p_then_f() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        let line = vec![b'x'; MAX_LINE * 2 + 5];
        s.push(&line, t(), &mut out);
        s.push(b"\n", t(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains(" stdout P ") && lines[0].ends_with(&"x".repeat(MAX_LINE)));
        assert!(lines[1].contains(" stdout P "));
        assert!(lines[2].ends_with(" stdout F xxxxx"));
    }

    #[test]
    fn long_line_split_even_when_its_newline_comes_with_the_overflow() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(&vec![b'y'; 12_288], t(), &mut out);
        let mut tail = vec![b'y'; 7_712];
        tail.push(b'\n');
        s.push(&tail, t(), &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{}", lines.len());
        assert!(lines[0].contains(" stdout P ") && lines[0].ends_with(&"y".repeat(MAX_LINE)));
        assert!(lines[1].ends_with(&format!(" stdout F {}", "y".repeat(20_000 - MAX_LINE))));
    }

    #[test]
    fn unfinished_line_written_at_end() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"no newline", t(), &mut out);
        assert!(out.is_empty());
        s.finish(t(), &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("stdout F no newline\n")
        );
    }

    #[test]
    fn empty_line_is_kept() {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        s.push(b"\n", t(), &mut out);
        assert!(String::from_utf8(out).unwrap().ends_with("stdout F \n"));
    }
}
