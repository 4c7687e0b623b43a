//! How observe and verify read in bulk: through the client's connection
//! (redis-rs: TLS, unix sockets, cluster), or, on a plain TCP server,
//! through sockets of their own whose replies are decoded in place.
//!
//! redis-rs decodes every bulk string of a reply into a `Vec` of its own;
//! at 100k users that is 6 million strings, and it was a third of verify's
//! CPU. Here a round's replies stay in the buffer they were read into, as
//! ranges (redis-protocol's `decode_range`), and a [`Reply`] borrows from
//! it: only what the oracle keeps is copied. Commands are still built and
//! encoded by redis-rs (`Pipeline::get_packed_pipeline`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshift_engine::connection::{connection_info, response_timeout, RedisConn};
use keyshift_engine::EngineError;
use redis::{ConnectionAddr, Value};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a failed read was doing, for the operator's message.
const DURING: &str = "reading keys to judge them";

/// One reply, borrowed from the round it came in. Status replies (`+OK`,
/// TYPE's `+hash`) are `Data` like bulk strings; RESP3 maps (a RESP3
/// client's HGETALL) are flattened to key, value, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    Nil,
    Int(i64),
    Data(&'a [u8]),
    Items(Vec<Reply<'a>>),
    /// The server's error (`WRONGTYPE ...`, `NOPERM ...`).
    Error(String),
    /// A RESP3 type no read here asks for (double, boolean, ...).
    Other,
}

impl<'a> Reply<'a> {
    pub fn int(&self) -> Result<i64, EngineError> {
        match self {
            Reply::Int(n) => Ok(*n),
            other => Err(other.unexpected("an integer")),
        }
    }

    pub fn data(&self) -> Result<&'a [u8], EngineError> {
        match self {
            Reply::Data(d) => Ok(d),
            other => Err(other.unexpected("a string")),
        }
    }

    /// An integer sent as a string (TIME's, SCAN's cursor).
    pub fn int_text(&self) -> Result<i64, EngineError> {
        let data = self.data()?;
        std::str::from_utf8(data)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.unexpected("a number"))
    }

    pub fn items(&self) -> Result<&[Reply<'a>], EngineError> {
        match self {
            Reply::Items(items) => Ok(items),
            other => Err(other.unexpected("an array")),
        }
    }

    /// Why a reply is not what was asked: the server's refusal as such
    /// (NOPERM: the ACL), anything else as an unexpected shape.
    fn unexpected(&self, wanted: &str) -> EngineError {
        match self {
            Reply::Error(e) if e.starts_with("NOPERM") => EngineError::NoPermission {
                during: DURING,
                denied: e.clone(),
            },
            other => EngineError::unexpected_reply(DURING, format!("{other:?}, not {wanted}")),
        }
    }

    fn from_value(value: &'a Value) -> Reply<'a> {
        match value {
            Value::Nil => Reply::Nil,
            Value::Int(n) => Reply::Int(*n),
            Value::BulkString(d) => Reply::Data(d),
            Value::SimpleString(s) => Reply::Data(s.as_bytes()),
            Value::VerbatimString { text, .. } => Reply::Data(text.as_bytes()),
            Value::Okay => Reply::Data(b"OK"),
            Value::Array(items) | Value::Set(items) => {
                Reply::Items(items.iter().map(Reply::from_value).collect())
            }
            Value::Map(pairs) => Reply::Items(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [Reply::from_value(k), Reply::from_value(v)])
                    .collect(),
            ),
            Value::Attribute { data, .. } => Reply::from_value(data),
            Value::ServerError(e) => Reply::Error(match e.details() {
                Some(details) => format!("{} {details}", e.code()),
                None => e.code().to_owned(),
            }),
            _ => Reply::Other,
        }
    }

    fn from_frame(buf: &'a [u8], frame: &RangeFrame) -> Reply<'a> {
        match frame {
            RangeFrame::Null => Reply::Nil,
            RangeFrame::Integer(n) => Reply::Int(*n),
            RangeFrame::BulkString((start, end)) | RangeFrame::SimpleString((start, end)) => {
                Reply::Data(&buf[*start..*end])
            }
            RangeFrame::Error((start, end)) => {
                Reply::Error(String::from_utf8_lossy(&buf[*start..*end]).into_owned())
            }
            RangeFrame::Array(items) => {
                Reply::Items(items.iter().map(|f| Reply::from_frame(buf, f)).collect())
            }
        }
    }
}

/// The replies of one round, in the order the commands were sent.
pub struct Replies(Held);

enum Held {
    Client(Vec<Value>),
    /// The socket they were read on, which holds them: it goes back to
    /// `home`'s idle sockets, buffer and all, when they are dropped.
    Wire {
        socket: Option<Socket>,
        home: Arc<Sockets>,
    },
}

impl Replies {
    pub fn len(&self) -> usize {
        match &self.0 {
            Held::Client(values) => values.len(),
            Held::Wire { socket, .. } => socket.as_ref().map_or(0, |s| s.frames.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<Reply<'_>> {
        match &self.0 {
            Held::Client(values) => values.get(i).map(Reply::from_value),
            Held::Wire { socket, .. } => socket.as_ref()?.reply(i),
        }
    }

    /// The last reply (a round's closing TIME).
    pub fn last(&self) -> Option<Reply<'_>> {
        self.get(self.len().checked_sub(1)?)
    }

    pub fn iter(&self) -> impl Iterator<Item = Reply<'_>> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        if let Held::Wire { socket, home } = &mut self.0 {
            if let Some(socket) = socket.take() {
                home.put_back(socket);
            }
        }
    }
}

/// Where bulk reads go. Cheap to clone.
#[derive(Clone)]
pub enum Reader {
    /// The client's connection: TLS, unix sockets, a cluster.
    Client(RedisConn),
    /// Sockets of the reader's own to one plain TCP server.
    Wire(Arc<Sockets>),
}

impl From<&RedisConn> for Reader {
    fn from(conn: &RedisConn) -> Self {
        Reader::Client(conn.clone())
    }
}

impl Reader {
    /// Sockets of its own when `conn` is one server reached by plain TCP
    /// (`url` is what `conn` was opened with); else `conn` itself.
    pub fn open(url: &str, conn: &RedisConn) -> Result<Reader, EngineError> {
        if !matches!(conn, RedisConn::Standalone(_)) {
            return Ok(Reader::from(conn));
        }
        let info = connection_info(url)?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Ok(Reader::from(conn));
        };
        let settings = info.redis_settings();
        Ok(Reader::Wire(Arc::new(Sockets {
            host: host.clone(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            url: keyshift_engine::redact_url(url),
            idle: Mutex::new(Vec::new()),
        })))
    }

    /// Sends `pipe` (not atomic; errors come back in their places) and
    /// returns its replies. An empty pipeline asks nothing.
    pub async fn query(&self, mut pipe: redis::Pipeline) -> Result<Replies, EngineError> {
        if pipe.is_empty() {
            return Ok(Replies(Held::Client(Vec::new())));
        }
        match self {
            Reader::Client(conn) => {
                pipe.ignore_errors();
                let values: Vec<Value> = pipe
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(EngineError::redis(DURING))?;
                Ok(Replies(Held::Client(values)))
            }
            Reader::Wire(sockets) => Sockets::query(sockets, &pipe).await,
        }
    }

    /// One SCAN step: the next cursor and the keys. Through the client a
    /// cluster's SCAN walks every primary (`RedisConn::scan_raw`).
    pub async fn scan(&self, cursor: u64, args: &[&[u8]]) -> anyhow::Result<(u64, Vec<Vec<u8>>)> {
        match self {
            Reader::Client(conn) => {
                let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
                let reply = conn.scan_raw(cursor, &args).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            Reader::Wire(sockets) => {
                let mut pipe = redis::pipe();
                pipe.cmd("SCAN").arg(cursor).arg(args);
                let replies = Sockets::query(sockets, &pipe).await?;
                let reply = replies
                    .get(0)
                    .ok_or_else(|| EngineError::unexpected_reply(DURING, "no reply to SCAN"))?;
                let [next, keys] = reply.items()? else {
                    return Err(reply.unexpected("a SCAN reply").into());
                };
                let keys = keys.items()?.iter().map(|k| k.data().map(<[u8]>::to_vec));
                Ok((next.int_text()? as u64, keys.collect::<Result<_, _>>()?))
            }
        }
    }
}

/// Idle sockets to one server, and how to open another: a round takes
/// one (or opens one) and puts it back when its replies are all in.
pub struct Sockets {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    /// For messages: the URL without its credentials.
    url: String,
    idle: Mutex<Vec<Socket>>,
}

/// A socket and the buffers its last round was read into (kept from
/// round to round: a round's replies are a few hundred kB).
struct Socket {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Each reply's frame, with the offset in `buf` its ranges count from.
    frames: Vec<(usize, RangeFrame)>,
}

/// Bytes asked of the socket per read, at least.
const READ_SIZE: usize = 64 * 1024;
/// A buffer grown past this by a large round (a user with thousands of
/// positions) is not kept for the next.
const KEPT_BUFFER: usize = 4 * 1024 * 1024;

impl Sockets {
    async fn query(home: &Arc<Sockets>, pipe: &redis::Pipeline) -> Result<Replies, EngineError> {
        let idle = home.idle.lock().expect("socket pool").pop();
        let mut socket = match idle {
            Some(socket) => socket,
            None => home.connect().await?,
        };
        // A socket whose round failed is dropped: replies may still be in
        // flight on it, and they would answer the next round.
        within(socket.round(&pipe.get_packed_pipeline(), pipe.len())).await?;
        Ok(Replies(Held::Wire {
            socket: Some(socket),
            home: Arc::clone(home),
        }))
    }

    fn put_back(&self, mut socket: Socket) {
        if socket.buf.capacity() > KEPT_BUFFER {
            socket.buf = Vec::new();
        }
        socket.frames.clear();
        self.idle.lock().expect("socket pool").push(socket);
    }

    async fn connect(&self) -> Result<Socket, EngineError> {
        let unreachable = |e: std::io::Error| EngineError::Unreachable {
            url: self.url.clone(),
            source: e.into(),
        };
        let stream = within(async {
            TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(unreachable)
        })
        .await?;
        stream.set_nodelay(true).map_err(unreachable)?;
        let mut socket = Socket {
            stream,
            buf: Vec::new(),
            frames: Vec::new(),
        };
        let mut hello = redis::pipe();
        if let Some(password) = &self.password {
            let auth = hello.cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password);
        }
        if self.db != 0 {
            hello.cmd("SELECT").arg(self.db);
        }
        if !hello.is_empty() {
            within(socket.round(&hello.get_packed_pipeline(), hello.len())).await?;
            // The same credentials opened the client's connection already:
            // a refusal here is the server's (its text names no password).
            let refusal = (0..hello.len()).find_map(|i| match socket.reply(i) {
                Some(Reply::Error(e)) => Some(e),
                _ => None,
            });
            if let Some(e) = refusal {
                return Err(EngineError::Refused(format!(
                    "{} refused verify's second connection: {e}",
                    self.url
                )));
            }
        }
        Ok(socket)
    }
}

/// Fails a wait longer than the response timeout, as the client would.
async fn within<T>(
    work: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<T, EngineError> {
    let limit: Duration = response_timeout();
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(EngineError::Redis {
            during: DURING,
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply within {} ms", limit.as_millis()),
            )
            .into(),
        })
    })
}

impl Socket {
    /// Writes `request` and reads `count` replies into the buffer.
    async fn round(&mut self, request: &[u8], count: usize) -> Result<(), EngineError> {
        let io = |e: std::io::Error| EngineError::Redis {
            during: DURING,
            source: e.into(),
        };
        self.stream.write_all(request).await.map_err(io)?;
        self.buf.clear();
        self.frames.clear();
        let mut at = 0;
        while self.frames.len() < count {
            match decode_range(&self.buf[at..]) {
                Ok(Some((frame, used))) => {
                    self.frames.push((at, frame));
                    at += used;
                }
                Ok(None) => {
                    // A frame cut short is parsed again from its start:
                    // reading at least as much again as is buffered keeps
                    // that linear.
                    self.buf.reserve(READ_SIZE.max(self.buf.len() - at));
                    if self.stream.read_buf(&mut self.buf).await.map_err(io)? == 0 {
                        return Err(io(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        )));
                    }
                }
                Err(e) => {
                    return Err(EngineError::unexpected_reply(
                        DURING,
                        format!("a reply that is not RESP2: {e:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    fn reply(&self, i: usize) -> Option<Reply<'_>> {
        let (at, frame) = self.frames.get(i)?;
        Some(Reply::from_frame(&self.buf[*at..], frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<Reply<'_>> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = decode_range(&bytes[at..]).unwrap() {
            out.push(Reply::from_frame(&bytes[at..], &frame));
            at += used;
        }
        out
    }

    #[test]
    fn replies_borrow_their_bytes_from_the_round() {
        let bytes =
            b"*4\r\n$1\r\na\r\n$3\r\n1\r\n\r\n$0\r\n\r\n$-1\r\n:-2\r\n+hash\r\n-WRONGTYPE no\r\n";
        assert_eq!(
            frames(bytes),
            vec![
                Reply::Items(vec![
                    Reply::Data(b"a"),
                    Reply::Data(b"1\r\n"),
                    Reply::Data(b""),
                    Reply::Nil
                ]),
                Reply::Int(-2),
                Reply::Data(b"hash"),
                Reply::Error("WRONGTYPE no".into()),
            ]
        );
    }

    #[test]
    fn a_client_reply_reads_the_same_as_a_wire_reply() {
        let map = Value::Map(vec![(
            Value::BulkString(b"f".to_vec()),
            Value::BulkString(b"v".to_vec()),
        )]);
        assert_eq!(
            Reply::from_value(&map),
            Reply::Items(vec![Reply::Data(b"f"), Reply::Data(b"v")])
        );
        assert_eq!(
            Reply::from_value(&Value::SimpleString("set".into())),
            Reply::Data(b"set")
        );
        assert_eq!(Reply::from_value(&Value::Nil), Reply::Nil);
    }

    #[test]
    fn a_refusal_by_the_acl_says_so() {
        let refused = Reply::Error("NOPERM this user has no permissions to run 'hget'".into());
        assert!(matches!(
            refused.int(),
            Err(EngineError::NoPermission { .. })
        ));
        assert!(Reply::Data(b"12").int_text().is_ok_and(|n| n == 12));
        assert!(Reply::Data(b"x").int_text().is_err());
    }
}
