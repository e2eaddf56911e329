//! Loopback ports, polling, and a tiny HTTP/1.1 client for the API under test.
//!
//! The client is deliberately small: one request per connection (`Connection: close`), the body
//! read to the end, `Content-Length` or chunked bodies. It is not for streams such as
//! Server-Sent Events, which never end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

/// Timeout for connecting, and for each read or write, of [`http_request`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, let it go).
///
/// Another process could take it before the caller binds it; the window is tiny, and
/// [`crate::Mosquitto`] retries on a fresh port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address for a bound listener: {e}"))
        .port()
}

/// Call `f` every `poll_interval` until it returns `Some`, or give up after `timeout`.
///
/// `f` is always called at least once, and once more at the deadline.
///
/// ```
/// use std::time::Duration;
/// let mut n = 0;
/// let v = osprey_tests::wait_until(Duration::from_secs(1), Duration::from_millis(1), || {
///     n += 1;
///     (n == 3).then_some(n)
/// });
/// assert_eq!(v, Some(3));
/// ```
pub fn wait_until<T>(
    timeout: Duration,
    poll_interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(poll_interval.min(deadline - now));
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header names (lower-cased) and values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON, with the body in the message.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body:\n{}",
                self.status,
                self.text()
            )
        })
    }
}

/// `GET url` and parse the JSON body.
///
/// # Panics
///
/// When the request fails, the status is not 2xx or the body is not JSON; the message has the
/// URL, status and body.
pub fn http_get_json(url: &str) -> serde_json::Value {
    let response = http_get(url);
    if !(200..300).contains(&response.status) {
        panic!(
            "GET {url}: status {}, body:\n{}",
            response.status,
            response.text()
        );
    }
    response.json()
}

/// `GET url`, any status.
///
/// # Panics
///
/// When the request cannot be made or the response is not HTTP.
pub fn http_get(url: &str) -> HttpResponse {
    http_request("GET", url, None)
        .unwrap_or_else(|e| panic!("GET {url} failed: {e} (is the server up?)"))
}

/// One HTTP/1.1 request to an `http://host:port/path` URL, with an optional
/// `(content type, body)`. Errors are strings fit for a test failure message; a non-2xx status
/// is not an error.
pub fn http_request(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
) -> Result<HttpResponse, String> {
    http_request_with(method, url, &[], body)
}

/// [`http_request`] with extra header lines (`"Authorization: Bearer …"`).
pub fn http_request_with(
    method: &str,
    url: &str,
    headers: &[&str],
    body: Option<(&str, &[u8])>,
) -> Result<HttpResponse, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| format!("set timeouts: {e}"))?;

    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Accept: application/json, */*\r\nUser-Agent: osprey-tests\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    if let Some((content_type, bytes)) = body {
        request.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    request.push_str("\r\n");
    let mut out = request.into_bytes();
    if let Some((_, bytes)) = body {
        out.extend_from_slice(bytes);
    }
    stream
        .write_all(&out)
        .map_err(|e| format!("send request: {e}"))?;

    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read response: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no end of headers in response: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|e| format!("response headers are not UTF-8: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = &raw[head_end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        dechunk(body)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|e| format!("bad content-length {len:?}: {e}"))?;
        body.get(..len)
            .ok_or_else(|| format!("body shorter than content-length {len}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(response)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body: missing chunk size line")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("chunked body: bad chunk size {size_hex:?}: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body
            .get(..size)
            .ok_or("chunked body: chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// Opens `GET path` (a server-sent event stream, e.g. `/api/fleet/events?limit=3`) on
/// `base_url` (`http://host:port`) and reads it on a thread: each event as `(name, data as
/// JSON)`, `Null` for data that is not JSON. Dropping the receiver ends the thread at the next
/// event.
///
/// # Panics
///
/// When the connection cannot be made.
pub fn sse_events(
    base_url: &str,
    path: &str,
) -> std::sync::mpsc::Receiver<(String, serde_json::Value)> {
    use std::io::{BufRead, BufReader};
    let addr = base_url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut name, mut data) = (String::new(), String::new());
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            // Chunked transfer: chunk sizes come as lines of their own, and are ignored here.
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_owned();
            } else if line.is_empty() && !data.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                if tx.send((std::mem::take(&mut name), value)).is_err() {
                    return;
                }
                data.clear();
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\n{}").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn parses_chunked_body() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\n[1,\r\n2;ext=1\r\n2]\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "[1,2]");
    }

    #[test]
    fn wait_until_gives_up_after_timeout() {
        let start = Instant::now();
        let v: Option<()> =
            wait_until(Duration::from_millis(50), Duration::from_millis(10), || {
                None
            });
        assert!(v.is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
