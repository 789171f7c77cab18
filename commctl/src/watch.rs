//! `… status --watch`: follows an operation live.
//!
//! The event stream is opened first, then the record and the cluster are
//! read (the stream never replays history, so nothing that happens between
//! the two is missed), then every event about the operation, the cluster or
//! its hosts updates the display. On a terminal the display is redrawn in
//! place every second (elapsed time); otherwise a new block is printed each
//! time something changed. When the stream breaks it is opened again and the
//! record re-read (also after 45 s without even a keep-alive, and after an
//! `event: lagged`, which says events were dropped for this reader). A server
//! without the event stream (404) is polled every
//! second instead. The watch ends when the record's status is no longer
//! `in_process`.

use std::{io::IsTerminal, time::Duration};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::{
    client::Client,
    commands::Ctx,
    error::{Error, Result},
    output::Format,
    progress::{OpKind, Progress},
    sse,
};

/// The server sends a keep-alive comment every 15 s: after this long without
/// a byte the stream is taken as broken and opened again.
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// The events path for one cluster's operation.
pub fn events_path(kind: OpKind, cluster: &str) -> String {
    format!("/api/v0/events?cluster={cluster}&models={},Host,Cluster,clusterexec", kind.model())
}

/// Draws the display: in place on a terminal, block by block elsewhere.
struct Display {
    tty: bool,
    enabled: bool,
    drawn_lines: usize,
    last_block: Vec<String>,
}

impl Display {
    fn show(&mut self, progress: &Progress, force: bool) {
        if !self.enabled {
            return;
        }
        let lines = progress.render(time::OffsetDateTime::now_utc());
        if self.tty {
            // Lines are cut to the terminal's width so that none wraps: the
            // redraw moves up exactly as many rows as were drawn.
            let width = terminal_width().unwrap_or(usize::MAX).saturating_sub(1).max(20);
            let lines: Vec<String> = lines.iter().map(|l| clip(l, width)).collect();
            let mut out = String::new();
            if self.drawn_lines > 0 {
                // Up to the first line drawn, then clear to the end of the screen.
                out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn_lines));
            }
            for line in &lines {
                out.push_str(line);
                out.push('\n');
            }
            crate::out!("{out}");
            self.drawn_lines = lines.len();
        } else {
            // Elapsed time alone is no reason to print again.
            let without_time: Vec<String> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == 0 {
                        l.rsplit_once(", elapsed").map_or(l.as_str(), |(h, _)| h).to_string()
                    } else {
                        l.clone()
                    }
                })
                .collect();
            if !force && without_time == self.last_block {
                return;
            }
            self.last_block = without_time;
            crate::outln!("{}\n", lines.join("\n"));
        }
    }
}

/// The terminal's width in columns (standard output), if it is one.
fn terminal_width() -> Option<usize> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// At most `width` characters, the last one `…` when cut.
pub fn clip(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

async fn read_state(
    client: &Client,
    kind: OpKind,
    cluster: &str,
) -> Result<(Value, Vec<String>, Vec<(String, String)>)> {
    let record = client.get(&format!("/api/v0/cluster/{cluster}/{}", kind.name())).await?;
    let cluster_record = client.get(&format!("/api/v0/cluster/{cluster}")).await?;
    let hostset: Vec<String> = cluster_record
        .get("hostset")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let hosts = client.get("/api/v0/hosts").await.unwrap_or(Value::Null);
    let statuses = hosts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let address = h.get("address")?.as_str()?;
            hostset
                .iter()
                .any(|m| m == address)
                .then(|| (address.to_string(), h.get("status").and_then(Value::as_str).unwrap_or_default().to_string()))
        })
        .collect();
    Ok((record, hostset, statuses))
}

/// Opens the stream; `None` when the server has none (404).
async fn open_stream(client: &Client, kind: OpKind, cluster: &str) -> Result<Option<Incoming>> {
    match client.events(&events_path(kind, cluster)).await {
        Ok(body) => Ok(Some(body)),
        Err(err)
            if err.status() == Some(404)
                && !matches!(&err, Error::Server { message, .. } if message.contains(cluster)) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Follows the operation until it ends.
pub async fn watch(ctx: &Ctx, kind: OpKind, cluster: &str) -> Result<()> {
    let client = ctx.client().await?;
    let mut stream = open_stream(client, kind, cluster).await?;
    if stream.is_none() {
        eprintln!("commctl: the server has no event stream; polling the record every second");
    }
    let (record, hostset, statuses) = read_state(client, kind, cluster).await?;
    let mut progress = Progress::new(kind, cluster, hostset, record);
    progress.host_status.extend(statuses);
    let mut display = Display {
        tty: std::io::stdout().is_terminal(),
        enabled: ctx.format == Format::Table,
        drawn_lines: 0,
        last_block: Vec::new(),
    };
    display.show(&progress, true);
    let mut parser = sse::Parser::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    while !progress.is_over() {
        let frame = async {
            match stream.as_mut() {
                // Nothing, not even a keep-alive, for STREAM_SILENCE: the connection is gone.
                Some(body) => tokio::time::timeout(STREAM_SILENCE, body.frame()).await.unwrap_or(None),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = frame => match frame {
                Some(Ok(frame)) => {
                    failures = 0;
                    if let Some(data) = frame.data_ref() {
                        let mut changed = false;
                        let mut lagged = false;
                        for event in parser.push(data) {
                            lagged |= event.event == "lagged";
                            changed |= progress.apply(&event);
                        }
                        if lagged {
                            // Events were dropped for this slow reader: read the state again.
                            let (record, _, statuses) = read_state(client, kind, cluster).await?;
                            progress.record = record;
                            progress.host_status.extend(statuses);
                            changed = true;
                        }
                        if changed {
                            display.show(&progress, false);
                        }
                    }
                }
                _ => {
                    // The stream ended or broke: open it again, then re-read what may have been missed.
                    failures += 1;
                    if failures > 1 {
                        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
                    }
                    parser = sse::Parser::new();
                    stream = match open_stream(client, kind, cluster).await {
                        Ok(s) => s,
                        Err(err) if failures < 10 => {
                            eprintln!("commctl: the event stream broke ({err}); trying again");
                            continue;
                        }
                        Err(err) => return Err(err),
                    };
                    let (record, _, statuses) = read_state(client, kind, cluster).await?;
                    progress.record = record;
                    progress.host_status.extend(statuses);
                    display.show(&progress, false);
                }
            },
            _ = tick.tick() => {
                if stream.is_none() {
                    let (record, _, statuses) = read_state(client, kind, cluster).await?;
                    progress.record = record;
                    progress.host_status.extend(statuses);
                    display.show(&progress, false);
                } else if display.tty {
                    display.show(&progress, false);
                }
            }
        }
    }
    display.show(&progress, display.tty);
    if ctx.format != Format::Table {
        ctx.emit(&progress.record, None);
    }
    if progress.ended_badly() {
        let reason =
            progress.record.get("reason").and_then(Value::as_str).filter(|r| !r.is_empty()).unwrap_or(progress.phase());
        return Err(Error::OperationFailed(format!(
            "the {} of cluster {cluster} ended {} ({reason})",
            kind.name(),
            if progress.phase() == "aborted" { "aborted" } else { progress.status() }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_lines_never_wrap() {
        assert_eq!(clip("short", 20), "short");
        assert_eq!(clip("reason: a very long reason indeed", 20), "reason: a very long…");
        assert_eq!(clip("reason: a very long reason indeed", 20).chars().count(), 20);
    }
}
