//! A bulk load as `redis-cli --pipe` does it: raw RESP streamed down one
//! socket while another thread reads the replies, then an `ECHO` marker to
//! know the server has answered everything. Used to seed the benchmarks'
//! keyspaces and to time the write floor (`crate::floor`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use crate::floor::write_command;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeOutcome {
    pub replies: u64,
    pub errors: u64,
    /// The first error reply, if any.
    pub first_error: Option<String>,
}

/// Sends `resp` (complete commands whose replies are one line each: integers,
/// simple strings, errors) to `127.0.0.1:port` and waits for every reply.
pub fn pipe(port: u16, resp: &[u8]) -> std::io::Result<PipeOutcome> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let marker = format!("keyshift-pipe-end-{}", std::process::id());
    let mut writer = stream.try_clone()?;
    let reader = std::thread::scope(|s| {
        let reading = s.spawn(|| read_until_marker(&stream, &marker));
        let written = (|| {
            for chunk in resp.chunks(1 << 16) {
                writer.write_all(chunk)?;
            }
            write_command(&mut writer, &["ECHO", marker.as_str()])?;
            writer.flush()
        })();
        let read = reading.join().expect("pipe reader thread");
        written.and(read)
    })?;
    Ok(reader)
}

fn read_until_marker(stream: &TcpStream, marker: &str) -> std::io::Result<PipeOutcome> {
    let mut lines = BufReader::with_capacity(1 << 16, stream);
    let mut out = PipeOutcome {
        replies: 0,
        errors: 0,
        first_error: None,
    };
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection before answering every command",
            ));
        }
        match line.as_bytes().first() {
            Some(b'$') => {
                // A bulk reply: only the marker's ECHO sends one.
                line.clear();
                lines.read_line(&mut line)?;
                if line.trim_end() == marker {
                    return Ok(out);
                }
                out.replies += 1;
            }
            Some(b'-') => {
                out.replies += 1;
                out.errors += 1;
                out.first_error
                    .get_or_insert_with(|| line.trim_end().to_owned());
            }
            _ => out.replies += 1,
        }
    }
}
