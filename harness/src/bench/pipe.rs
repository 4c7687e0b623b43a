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

/// Sends `resp` (complete commands, any replies) to `127.0.0.1:port` and waits for every reply.
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
    loop {
        match read_reply(&mut lines)? {
            Reply::Bulk(Some(b)) if b == marker.as_bytes() => return Ok(out),
            Reply::Error(e) => {
                out.replies += 1;
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
            _ => out.replies += 1,
        }
    }
}

/// A top-level reply, as much of it as the pipe needs: errors are counted,
/// a bulk string may be the end marker, anything else is just counted.
enum Reply {
    Error(String),
    Bulk(Option<Vec<u8>>),
    Other,
}

/// Reads one complete RESP2 reply, arrays (HGETALL, SMEMBERS) included.
fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection before answering every command",
        ));
    }
    let body = line.trim_end();
    let len = || -> std::io::Result<i64> {
        body[1..].parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a RESP length: {body:?}"),
            )
        })
    };
    match body.as_bytes().first() {
        Some(b'-') => Ok(Reply::Error(body.to_owned())),
        Some(b'$') => {
            let n = len()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        Some(b'*') => {
            for _ in 0..len()?.max(0) {
                read_reply(r)?;
            }
            Ok(Reply::Other)
        }
        _ => Ok(Reply::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_replies_are_read_whole_and_errors_counted() {
        let wire =
            b"*4\r\n$1\r\na\r\n$-1\r\n*1\r\n:5\r\n$3\r\nxyz\r\n-ERR no\r\n:7\r\n$3\r\nend\r\n";
        let mut r = std::io::Cursor::new(&wire[..]);
        assert!(matches!(read_reply(&mut r).unwrap(), Reply::Other));
        assert!(matches!(read_reply(&mut r).unwrap(), Reply::Error(e) if e == "-ERR no"));
        assert!(matches!(read_reply(&mut r).unwrap(), Reply::Other));
        assert!(matches!(read_reply(&mut r).unwrap(), Reply::Bulk(Some(b)) if b == b"end"));
        assert!(read_reply(&mut r).is_err(), "end of input is an error");
    }
}
