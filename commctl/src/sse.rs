//! A parser of server-sent events (the `text/event-stream` format): bytes in,
//! whole events out, whatever way the bytes were cut into chunks.
//!
//! Lines end with LF, CRLF or CR; an empty line ends an event; a line starting
//! with `:` is a comment (the server's keep-alives); `field: value` loses one
//! space after the colon; `data` lines are joined with LF; `retry` and unknown
//! fields are ignored. An event without data is not dispatched.

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub id: Option<String>,
    /// `message` when the stream named none.
    pub event: String,
    pub data: String,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a LF at the start of the next one
    /// belongs to that line end.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    /// Comments seen (keep-alives), for callers that care.
    pub comments: u64,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(Event {
                    id: self.id.clone(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keepalive\n\n",
        "id: 1\n",
        "event: ClusterRestart.updated\n",
        "data: {\"model\":\"ClusterRestart\",\"event\":\"updated\",\"cluster\":\"prod\",\"document\":{\"status\":\"in_process\"}}\n",
        "\n",
        "id: 2\r\nevent: Host.updated\r\ndata: {\"model\":\"Host\"}\r\n\r\n",
        "id: 3\revent: multi\rdata: a\rdata:b\r\r",
        "event: no-data\n\n",
        "data: ünïcödé\n\n",
    );

    fn expected() -> Vec<Event> {
        vec![
            Event {
                id: Some("1".into()),
                event: "ClusterRestart.updated".into(),
                data: r#"{"model":"ClusterRestart","event":"updated","cluster":"prod","document":{"status":"in_process"}}"#
                    .into(),
            },
            Event { id: Some("2".into()), event: "Host.updated".into(), data: r#"{"model":"Host"}"#.into() },
            Event { id: Some("3".into()), event: "multi".into(), data: "a\nb".into() },
            Event { id: Some("3".into()), event: "message".into(), data: "ünïcödé".into() },
        ]
    }

    #[test]
    fn whole_stream_at_once() {
        let mut parser = Parser::new();
        assert_eq!(parser.push(STREAM.as_bytes()), expected());
        assert_eq!(parser.comments, 1);
    }

    #[test]
    fn any_chunking_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for size in 1..=bytes.len() {
            let mut parser = Parser::new();
            let events: Vec<Event> = bytes.chunks(size).flat_map(|c| parser.push(c)).collect();
            assert_eq!(events, expected(), "chunks of {size} bytes");
        }
        // Cut at every single position, into two pieces (CR|LF and UTF-8 splits included).
        for cut in 0..bytes.len() {
            let mut parser = Parser::new();
            let mut events = parser.push(&bytes[..cut]);
            events.extend(parser.push(&bytes[cut..]));
            assert_eq!(events, expected(), "cut at {cut}");
        }
    }

    #[test]
    fn an_unfinished_event_is_not_dispatched() {
        let mut parser = Parser::new();
        assert!(parser.push(b"data: half").is_empty());
        assert!(parser.push(b"\n").is_empty());
        assert_eq!(parser.push(b"\n").len(), 1);
    }
}
