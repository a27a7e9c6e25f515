//! SIP message syntax (RFC 3261 §7, §20 and §25): the head of a message (start line and
//! header fields), the typed views the user-agent server needs (Via, name-addr, CSeq, …), the
//! strict checks that decide between "process" and "400 Bad Request", and the writer for the
//! messages we send.
//!
//! # Why the lexer is ours and not `rsip`'s
//!
//! `rsip` 0.4 was measured against the 49 messages of RFC 4475 (`tests/torture.rs`). It rejects
//! valid requests (line folding, `Name : value` with LWS before the colon, a user part with a
//! `;` parameter such as `sip:user;par=u%40example.net@example.com`, extension methods such as
//! `RE%47IST%45R`, which then cannot be answered with 501), accepts invalid ones
//! (`SipMessage::try_from` succeeds on `badinv01`, `quotbal`, `badaspec` and `baddn`; its typed
//! Via reads `192.0.2.15;;,;,,` as a Via with an empty branch) and does not size bodies by
//! `Content-Length` (`dblreq` keeps the trailing INVITE as its body). So this
//! module lexes and checks messages itself, leniently where RFC 4475 asks for liberal parsing
//! and strictly where it asks for a 400, and never panics on any input. Header values are kept
//! as received (after unfolding), so what is copied into a response (Via, From, To, Call-ID,
//! CSeq) is byte-for-byte what the peer sent. `rsip` stays the independent parser the tests use
//! to check that everything we emit is well-formed SIP (except Request-URIs, which its URI
//! grammar also gets wrong: those are checked with [`check_uri`]).
//!
//! Compact header names (`i`, `m`, `e`, `l`, `f`, `s`, `k`, `t`, `v`, `c`, `x`, …) and known
//! long names in any letter case are normalised to their canonical long form while lexing;
//! unknown header names are kept as received.

use std::fmt;

/// The RFC 3261 magic cookie that starts every branch parameter of a compliant client.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Largest message head (start line and header fields) accepted, in bytes.
pub const MAX_HEAD: usize = 32 * 1024;

/// Largest body accepted, in bytes (an SDP offer is a few kilobytes at most).
pub const MAX_BODY: usize = 64 * 1024;

/// Most header fields accepted in one message.
pub const MAX_HEADERS: usize = 256;

/// What is wrong with a message. The `Display` text is safe to use as a Reason-Phrase: it never
/// echoes bytes from the network (only header names, fixed descriptions and numbers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but line breaks.
    #[error("empty message")]
    Empty,
    /// The first line is neither a request line nor a status line: nothing can be answered.
    #[error("not a SIP message")]
    NotSip,
    /// The head or the body is larger than this endpoint accepts.
    #[error("message too large")]
    TooLarge,
    /// The request line is not `Method SP Request-URI SP SIP-Version` with single spaces.
    #[error("malformed request line")]
    RequestLine,
    /// The status line is not `SIP-Version SP 3DIGIT SP Reason-Phrase` with a code in 100..=699.
    #[error("malformed status line")]
    StatusLine,
    /// A SIP version other than 2.0 (answered with 505).
    #[error("unsupported SIP version")]
    Version,
    /// A header line without a colon, with a name that is not a token, or a continuation line
    /// before the first header field.
    #[error("malformed header line")]
    HeaderLine,
    /// A mandatory header field is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A single-valued header field appears more than once.
    #[error("more than one {0} header")]
    Duplicate(&'static str),
    /// A header field value does not follow its grammar.
    #[error("malformed {header} header: {problem}")]
    Header {
        /// Canonical name of the header field.
        header: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The Request-URI does not follow the URI grammar.
    #[error("malformed Request-URI: {0}")]
    RequestUri(&'static str),
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMethod,
    /// Several Content-Length header fields with different values: the body cannot be framed.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
    /// Content-Length announces more bytes than the datagram carries.
    #[error("Content-Length {declared} exceeds the {received} body bytes received")]
    BodyTruncated {
        /// The Content-Length value.
        declared: usize,
        /// What arrived after the head.
        received: usize,
    },
}

impl ParseError {
    fn header(header: &'static str, problem: &'static str) -> Self {
        Self::Header { header, problem }
    }
}

/// A request method. Methods are case-sensitive; anything that is a token but not one of the
/// known methods is an [`Method::Extension`] (answered with 501 by the endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// Any other token.
    Extension(String),
}

impl Method {
    /// The method named by `token` (case-sensitive, as RFC 3261 §7.1 requires).
    pub fn from_token(token: &str) -> Self {
        match token {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "OPTIONS" => Self::Options,
            "REGISTER" => Self::Register,
            "INFO" => Self::Info,
            "UPDATE" => Self::Update,
            "PRACK" => Self::Prack,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            "REFER" => Self::Refer,
            "MESSAGE" => Self::Message,
            "PUBLISH" => Self::Publish,
            other => Self::Extension(other.to_string()),
        }
    }

    /// The method as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Register => "REGISTER",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Extension(token) => token,
        }
    }

    /// Whether this is a method defined by RFC 3261 or one of its common extensions.
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Extension(_))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header field, after unfolding, with its name in canonical form when the name is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Canonical long name (`Call-ID`, `Via`, …) or the name as received for unknown fields.
    pub name: String,
    /// The value with surrounding whitespace removed and folded lines joined by one space.
    pub value: String,
}

/// The header fields of a message, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// Appends a header field (the name is normalised like a received one).
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push(Header {
            name: canonical_name(name),
            value: value.to_string(),
        });
    }

    /// All header fields in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    /// Number of header fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no header fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first value of the field `name` (case-insensitive; compact forms are already long).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of the field `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The value of a single-valued field: `Ok(None)` when absent, an error when it appears
    /// twice with different values.
    pub fn single(&self, name: &'static str) -> Result<Option<&str>, ParseError> {
        let mut values = self.get_all(name);
        let first = values.next();
        if let Some(first) = first {
            if values.any(|v| v != first) {
                return Err(ParseError::Duplicate(name));
            }
        }
        Ok(first)
    }

    /// Like [`Headers::single`] but the field is mandatory.
    pub fn required(&self, name: &'static str) -> Result<&str, ParseError> {
        self.single(name)?.ok_or(ParseError::Missing(name))
    }
}

/// The request line, as lexed (leniently: [`check_request`] decides whether it is well formed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    /// The method token.
    pub method: Method,
    /// The Request-URI (whatever stands between the method and the version).
    pub uri: String,
    /// The SIP-Version token.
    pub version: String,
    /// The whole line as received.
    pub raw: String,
}

/// The status line of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// The SIP-Version token.
    pub version: String,
    /// The status code (100..=699).
    pub code: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// A request.
    Request(RequestLine),
    /// A response.
    Response(StatusLine),
}

/// A lexed message head. Header-level syntax problems do not stop lexing (the request may still
/// be answerable with a 400); the first one is kept in `defect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The start line.
    pub start: StartLine,
    /// The header fields.
    pub headers: Headers,
    /// The first malformed header line, if any.
    pub defect: Option<ParseError>,
}

impl Head {
    /// Attaches the body framed by the transport.
    pub fn into_message(self, body: Vec<u8>) -> Message {
        match self.start {
            StartLine::Request(line) => Message::Request(Request {
                line,
                headers: self.headers,
                body,
                defect: self.defect,
            }),
            StartLine::Response(status) => Message::Response(Response {
                status,
                headers: self.headers,
                body,
            }),
        }
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request line.
    pub line: RequestLine,
    /// The header fields.
    pub headers: Headers,
    /// The body, exactly Content-Length bytes.
    pub body: Vec<u8>,
    /// The first malformed header line, if any.
    pub defect: Option<ParseError>,
}

impl Request {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.line.method
    }
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status line.
    pub status: StatusLine,
    /// The header fields.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

// ---------------------------------------------------------------------------------------------
// Lexing

/// Compact forms (RFC 3261 §7.3.3 and the extensions registered with IANA).
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Long names whose canonical spelling we restore whatever the case received.
const KNOWN: &[&str] = &[
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "P-Asserted-Identity",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Session-Expires",
    "Subject",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "User-to-User",
    "Via",
    "Warning",
    "WWW-Authenticate",
];

/// The canonical form of a header name: compact forms expanded, known names re-cased, unknown
/// names as given.
pub fn canonical_name(name: &str) -> String {
    if let [single] = name.as_bytes() {
        let lower = single.to_ascii_lowercase();
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| *c == lower) {
            return (*long).to_string();
        }
    }
    KNOWN
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .map(|known| (*known).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// `token` characters of RFC 3261 §25.1.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

fn is_lws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Trims SIP linear white space (SP and HTAB only, unlike `str::trim`).
pub fn trim_lws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Finds the empty line that ends a message head. Returns the length of the head (including the
/// line break of its last line) and the offset where the body starts. Bare LF line ends are
/// accepted as well as CRLF.
pub fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(offset) = buf.get(from..)?.iter().position(|&b| b == b'\n') {
        let line_end = from + offset + 1;
        let rest = buf.get(line_end..)?;
        if rest.starts_with(b"\r\n") {
            return Some((line_end, line_end + 2));
        }
        if rest.starts_with(b"\n") {
            return Some((line_end, line_end + 1));
        }
        from = line_end;
    }
    None
}

/// Number of leading CR/LF bytes (keep-alives and the CRLFs RFC 3261 §7.5 says to ignore
/// before a start line).
pub fn leading_line_breaks(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// Lexes a message head (everything before the empty line). Fails only when the start line is
/// not SIP at all or the head is too large; malformed header lines are recorded in
/// [`Head::defect`].
pub fn parse_head(bytes: &[u8]) -> Result<Head, ParseError> {
    if bytes.len() > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let first = loop {
        match lines.next() {
            None => return Err(ParseError::Empty),
            Some("") => continue,
            Some(line) => break line,
        }
    };
    let start = parse_start_line(first)?;
    let mut headers: Vec<Header> = Vec::new();
    let mut defect = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            match headers.last_mut() {
                Some(header) => {
                    header.value.push(' ');
                    header.value.push_str(trim_lws(line));
                }
                None => {
                    defect.get_or_insert(ParseError::HeaderLine);
                }
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            defect.get_or_insert(ParseError::HeaderLine);
            continue;
        };
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            defect.get_or_insert(ParseError::HeaderLine);
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooLarge);
        }
        headers.push(Header {
            name: canonical_name(name),
            value: trim_lws(value).to_string(),
        });
    }
    for header in &mut headers {
        let trimmed = trim_lws(&header.value);
        if trimmed.len() != header.value.len() {
            header.value = trimmed.to_string();
        }
    }
    Ok(Head {
        start,
        headers: Headers(headers),
        defect,
    })
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("SIP/"))
    {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().ok_or(ParseError::StatusLine)?;
        let reason = parts.next().unwrap_or_default();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StatusLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::StatusLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StatusLine);
        }
        return Ok(StartLine::Response(StatusLine {
            version: version.to_string(),
            code,
            reason: reason.to_string(),
        }));
    }
    let method_end = line.find(' ').ok_or(ParseError::NotSip)?;
    let method = line.get(..method_end).ok_or(ParseError::NotSip)?;
    if !is_token(method) {
        return Err(ParseError::NotSip);
    }
    let trimmed = line.trim_end_matches(' ');
    let version_start = trimmed
        .rfind(' ')
        .map(|p| p + 1)
        .ok_or(ParseError::NotSip)?;
    let version = trimmed.get(version_start..).ok_or(ParseError::NotSip)?;
    if !version
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("SIP/"))
    {
        return Err(ParseError::NotSip);
    }
    let uri = if version_start > method_end + 1 {
        line.get(method_end + 1..version_start - 1).unwrap_or("")
    } else {
        ""
    };
    Ok(StartLine::Request(RequestLine {
        method: Method::from_token(method),
        uri: uri.trim_matches(' ').to_string(),
        version: version.to_string(),
        raw: line.to_string(),
    }))
}

/// The body length announced by the Content-Length field(s): `Ok(None)` when absent. Several
/// fields with one value are tolerated; different values, a sign or anything but digits is an
/// error, and so is a value above [`MAX_BODY`].
pub fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut found = None;
    for value in headers.get_all("Content-Length") {
        let n = parse_decimal(value, MAX_BODY as u64).ok_or(ParseError::header(
            "Content-Length",
            "not a number in range",
        ))? as usize;
        if found.is_some_and(|previous| previous != n) {
            return Err(ParseError::ConflictingContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Parses `1*DIGIT` with an upper bound, without overflow.
fn parse_decimal(s: &str, max: u64) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut n: u64 = 0;
    for b in s.bytes() {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}

// ---------------------------------------------------------------------------------------------
// Typed views

/// A header or URI parameter: `name` or `name=value` (value kept as received, quotes included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter name.
    pub name: String,
    /// The value, if any.
    pub value: Option<String>,
}

fn find_param<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// One via-parm of a Via header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `SIP/2.0` (protocol name and version, without the LWS the sender may have put around
    /// the slashes).
    pub protocol: String,
    /// The transport token (`UDP`, `TCP`, …).
    pub transport: String,
    /// The sent-by host (a name, an IPv4 address or a bracketed IPv6 reference).
    pub host: String,
    /// The sent-by port, if given.
    pub port: Option<u16>,
    /// The via-params in order.
    pub params: Vec<Param>,
    /// The via-parm exactly as received.
    pub raw: String,
}

impl Via {
    /// The branch parameter, if any.
    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").and_then(|p| p.value.as_deref())
    }

    /// Whether the branch carries the RFC 3261 magic cookie followed by an identifier.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }

    /// A parameter: `None` if absent, `Some(None)` if present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name).map(|p| p.value.as_deref())
    }

    /// `host[:port]`, lower-cased, for transaction matching.
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{}", self.host.to_ascii_lowercase(), port),
            None => self.host.to_ascii_lowercase(),
        }
    }

    /// The via-parm written back canonically with `extra` parameters set (replacing a valueless
    /// parameter of the same name, e.g. `rport`).
    pub fn to_string_with(&self, extra: &[(&str, String)]) -> String {
        let mut out = format!("{}/{} {}", self.protocol, self.transport, self.host);
        if let Some(port) = self.port {
            out.push_str(&format!(":{port}"));
        }
        for param in &self.params {
            if extra
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(&param.name))
            {
                continue;
            }
            out.push(';');
            out.push_str(&param.name);
            if let Some(value) = &param.value {
                out.push('=');
                out.push_str(value);
            }
        }
        for (name, value) in extra {
            out.push_str(&format!(";{name}={value}"));
        }
        out
    }
}

/// Every via-parm of every Via field, top first.
pub fn parse_vias(headers: &Headers) -> Result<Vec<Via>, ParseError> {
    let mut vias = Vec::new();
    for value in headers.get_all("Via") {
        for part in split_list(value) {
            vias.push(parse_via_parm(part).map_err(|p| ParseError::header("Via", p))?);
        }
    }
    if vias.is_empty() {
        return Err(ParseError::Missing("Via"));
    }
    Ok(vias)
}

fn parse_via_parm(raw: &str) -> Result<Via, &'static str> {
    let raw = trim_lws(raw);
    if raw.is_empty() {
        return Err("empty value");
    }
    let mut cur = Cursor::new(raw);
    let name = cur.token().ok_or("missing protocol name")?;
    cur.lws();
    if !cur.eat(b'/') {
        return Err("malformed sent-protocol");
    }
    cur.lws();
    let version = cur.token().ok_or("malformed sent-protocol")?;
    cur.lws();
    if !cur.eat(b'/') {
        return Err("malformed sent-protocol");
    }
    cur.lws();
    let transport = cur.token().ok_or("malformed sent-protocol")?;
    if !cur.lws() {
        return Err("missing sent-by");
    }
    let host = cur.host().ok_or("malformed sent-by host")?;
    cur.lws();
    let port = if cur.eat(b':') {
        cur.lws();
        let digits = cur.take_while(|b| b.is_ascii_digit());
        let port = parse_decimal(digits, u64::from(u16::MAX)).ok_or("malformed sent-by port")?;
        Some(port as u16)
    } else {
        None
    };
    cur.lws();
    let params = cur.params()?;
    if !cur.at_end() {
        return Err("unexpected characters");
    }
    Ok(Via {
        protocol: format!("{name}/{version}"),
        transport: transport.to_string(),
        host: host.to_string(),
        port,
        params,
        raw: raw.to_string(),
    })
}

/// A From, To, Contact, Route or Record-Route value: `[display-name] <URI> *(;param)` or
/// `URI *(;param)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as received (quotes and escapes included), if any.
    pub display_name: Option<String>,
    /// The URI without angle brackets (`*` for a wildcard Contact).
    pub uri: String,
    /// The header parameters (after the URI) in order.
    pub params: Vec<Param>,
}

impl NameAddr {
    /// The tag parameter, if any.
    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").and_then(|p| p.value.as_deref())
    }

    /// A header parameter: `None` if absent, `Some(None)` if present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name).map(|p| p.value.as_deref())
    }
}

/// Parses one name-addr or addr-spec value (From, To, one element of Contact/Route lists).
pub fn parse_name_addr(value: &str) -> Result<NameAddr, &'static str> {
    let s = trim_lws(value);
    if s.is_empty() {
        return Err("empty value");
    }
    let mut cur = Cursor::new(s);
    let display_name;
    let uri;
    if cur.peek() == Some(b'"') {
        display_name = Some(cur.quoted_string()?.to_string());
        cur.lws();
        if !cur.eat(b'<') {
            return Err("display name not followed by <URI>");
        }
        uri = cur.until(b'>').ok_or("missing >")?;
    } else if let Some(lt) = s.find('<') {
        let display = trim_lws(s.get(..lt).unwrap_or(""));
        if !display.is_empty()
            && !display
                .split([' ', '\t'])
                .all(|t| t.is_empty() || is_token(t))
        {
            return Err("display name must be tokens or a quoted string");
        }
        display_name = (!display.is_empty()).then(|| display.to_string());
        cur.pos = lt + 1;
        uri = cur.until(b'>').ok_or("missing >")?;
    } else {
        display_name = None;
        let end = s.find(';').unwrap_or(s.len());
        uri = trim_lws(s.get(..end).unwrap_or(""));
        if uri.contains(['?', ',']) {
            return Err("a URI with headers or commas must be enclosed in <>");
        }
        cur.pos = end;
    }
    if uri.is_empty() {
        return Err("empty URI");
    }
    if uri.contains([' ', '\t']) {
        return Err("whitespace inside the URI");
    }
    if uri != "*" {
        check_uri(uri)?;
    }
    cur.lws();
    let params = cur.params()?;
    if !cur.at_end() {
        return Err("unexpected characters after the URI");
    }
    Ok(NameAddr {
        display_name,
        uri: uri.to_string(),
        params,
    })
}

/// Parses a comma-separated list of name-addr values (Contact, Route, Record-Route) across every
/// field of that name.
pub fn parse_name_addr_list(
    headers: &Headers,
    name: &'static str,
) -> Result<Vec<NameAddr>, ParseError> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        for part in split_list(value) {
            out.push(parse_name_addr(part).map_err(|p| ParseError::header(name, p))?);
        }
    }
    Ok(out)
}

/// The CSeq header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number.
    pub seq: u32,
    /// The method.
    pub method: Method,
}

/// Parses `1*DIGIT LWS Method`.
pub fn parse_cseq(value: &str) -> Result<CSeq, &'static str> {
    let mut cur = Cursor::new(trim_lws(value));
    let digits = cur.take_while(|b| b.is_ascii_digit());
    if digits.is_empty() {
        return Err("missing sequence number");
    }
    let seq = parse_decimal(digits, u64::from(u32::MAX)).ok_or("sequence number out of range")?;
    if !cur.lws() {
        return Err("missing method");
    }
    let method = cur.token().ok_or("missing method")?;
    if !cur.at_end() {
        return Err("unexpected characters");
    }
    Ok(CSeq {
        seq: seq as u32,
        method: Method::from_token(method),
    })
}

/// Parses a comma-separated list of tokens (Require, Supported, …). Empty elements are skipped.
pub fn parse_token_list(value: &str) -> Result<Vec<String>, &'static str> {
    value
        .split(',')
        .map(trim_lws)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if is_token(t) {
                Ok(t.to_string())
            } else {
                Err("not a token")
            }
        })
        .collect()
}

/// `type/subtype` of a Content-Type or Accept element, lower-cased, without parameters.
pub fn media_type(value: &str) -> Option<(String, String)> {
    let main = trim_lws(value.split(';').next().unwrap_or(""));
    let (ty, sub) = main.split_once('/')?;
    let (ty, sub) = (trim_lws(ty), trim_lws(sub));
    (is_token(ty) && is_token(sub)).then(|| (ty.to_ascii_lowercase(), sub.to_ascii_lowercase()))
}

/// Whether the Accept fields allow `application/sdp` (true when there is no Accept field).
pub fn accepts_sdp(headers: &Headers) -> bool {
    let mut any = false;
    for value in headers.get_all("Accept") {
        any = true;
        for element in split_list(value) {
            if let Some((ty, sub)) = media_type(element) {
                let type_ok = ty == "*" || ty == "application";
                let sub_ok = sub == "*" || (ty == "application" && sub == "sdp");
                if type_ok && sub_ok {
                    return true;
                }
            }
        }
    }
    !any
}

/// Splits a header value at top-level commas (not inside quoted strings or angle brackets).
pub fn split_list(value: &str) -> Vec<&str> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut in_angle = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'<' if !in_quotes => in_angle = true,
            b'>' if !in_quotes => in_angle = false,
            b',' if !in_quotes && !in_angle => {
                parts.push(value.get(start..i).unwrap_or(""));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(value.get(start..).unwrap_or(""));
    parts
}

/// Splits `scheme:rest` when the scheme follows RFC 3986 (`ALPHA *( ALPHA / DIGIT / + / - / . )`).
pub fn split_scheme(uri: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

/// For a SIP or SIPS URI: whether a URI parameter `name` is present (`;lr`, `;transport=…`).
pub fn uri_has_param(uri: &str, name: &str) -> bool {
    let Some((_, rest)) = split_scheme(uri) else {
        return false;
    };
    let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
    let host_part = host_part.split('?').next().unwrap_or("");
    host_part.split(';').skip(1).any(|param| {
        let param_name = param.split('=').next().unwrap_or("");
        trim_lws(param_name).eq_ignore_ascii_case(name)
    })
}

/// A SIP or SIPS URI without its `?headers` part (for use as a Request-URI).
pub fn strip_uri_headers(uri: &str) -> &str {
    match split_scheme(uri) {
        Some((scheme, _))
            if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") =>
        {
            uri.split('?').next().unwrap_or(uri)
        }
        _ => uri,
    }
}

/// Small cursor over an ASCII-delimited grammar. Every predicate used with `take_while` is
/// false for non-ASCII bytes, so every slice boundary is on a character boundary.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn lws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii() && keep(b)) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or("")
    }

    fn token(&mut self) -> Option<&'a str> {
        let token = self.take_while(is_token_byte);
        (!token.is_empty()).then_some(token)
    }

    /// A hostname, IPv4 address or `[IPv6]` reference.
    fn host(&mut self) -> Option<&'a str> {
        if self.peek() == Some(b'[') {
            let start = self.pos;
            self.pos += 1;
            let inner = self.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if inner.is_empty() || !self.eat(b']') {
                return None;
            }
            return self.s.get(start..self.pos);
        }
        let host =
            self.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        (!host.is_empty()).then_some(host)
    }

    /// A quoted string starting at the cursor; returns it with its quotes.
    fn quoted_string(&mut self) -> Result<&'a str, &'static str> {
        let start = self.pos;
        if !self.eat(b'"') {
            return Err("expected a quoted string");
        }
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string"),
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if b.is_ascii() => self.pos += 1,
                        _ => return Err("invalid escape in quoted string"),
                    }
                }
                Some(b'"') => {
                    self.pos += 1;
                    return self.s.get(start..self.pos).ok_or("invalid quoted string");
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Everything up to the next `end` byte (which is consumed).
    fn until(&mut self, end: u8) -> Option<&'a str> {
        let rest = self.s.as_bytes().get(self.pos..)?;
        let offset = rest.iter().position(|&b| b == end)?;
        let found = self.s.get(self.pos..self.pos + offset)?;
        self.pos += offset + 1;
        Some(found)
    }

    /// `*( LWS ";" LWS name [ LWS "=" LWS value ] )`; stops before anything else.
    fn params(&mut self) -> Result<Vec<Param>, &'static str> {
        let mut params = Vec::new();
        loop {
            let save = self.pos;
            self.lws();
            if !self.eat(b';') {
                self.pos = save;
                return Ok(params);
            }
            self.lws();
            let name = self.token().ok_or("empty parameter")?;
            self.lws();
            let value = if self.eat(b'=') {
                self.lws();
                if self.peek() == Some(b'"') {
                    Some(self.quoted_string()?.to_string())
                } else {
                    let value =
                        self.take_while(|b| is_token_byte(b) || matches!(b, b'[' | b']' | b':'));
                    if value.is_empty() {
                        return Err("parameter without a value after =");
                    }
                    Some(value.to_string())
                }
            } else {
                None
            };
            self.lws();
            params.push(Param {
                name: name.to_string(),
                value,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request checks

/// The fields every request must carry, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFields {
    /// Every via-parm, top first.
    pub vias: Vec<Via>,
    /// The From field.
    pub from: NameAddr,
    /// The To field.
    pub to: NameAddr,
    /// The Call-ID.
    pub call_id: String,
    /// The CSeq.
    pub cseq: CSeq,
    /// Max-Forwards, if present.
    pub max_forwards: Option<u8>,
    /// Every Contact value.
    pub contacts: Vec<NameAddr>,
    /// Every Record-Route value, in order.
    pub record_route: Vec<NameAddr>,
    /// The Request-URI scheme, lower-cased.
    pub uri_scheme: String,
}

/// Checks the syntax of a request and returns its mandatory fields. The order of the checks
/// decides which error a message with several problems gets: start line, version, Via, CSeq,
/// Call-ID, From, To, Max-Forwards, Contact/Route/Record-Route, Request-URI, then the CSeq
/// method (only for known methods, so that an extension method is answered 501, not 400).
pub fn check_request(request: &Request) -> Result<RequestFields, ParseError> {
    if let Some(defect) = &request.defect {
        return Err(defect.clone());
    }
    let line = &request.line;
    let rebuilt = format!("{} {} {}", line.method, line.uri, line.version);
    if line.uri.is_empty() || line.uri.contains([' ', '\t']) || rebuilt != line.raw {
        return Err(ParseError::RequestLine);
    }
    if !line.version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::Version);
    }
    let headers = &request.headers;
    let vias = parse_vias(headers)?;
    let cseq = parse_cseq(headers.required("CSeq")?).map_err(|p| ParseError::header("CSeq", p))?;
    let call_id = headers.required("Call-ID")?;
    if call_id.contains([' ', '\t']) {
        return Err(ParseError::header("Call-ID", "whitespace inside the value"));
    }
    let from =
        parse_name_addr(headers.required("From")?).map_err(|p| ParseError::header("From", p))?;
    let to = parse_name_addr(headers.required("To")?).map_err(|p| ParseError::header("To", p))?;
    let max_forwards = match headers.single("Max-Forwards")? {
        Some(value) => Some(parse_decimal(value, 255).ok_or(ParseError::header(
            "Max-Forwards",
            "not a number in 0..=255",
        ))? as u8),
        None => None,
    };
    let contacts = parse_name_addr_list(headers, "Contact")?;
    let record_route = parse_name_addr_list(headers, "Record-Route")?;
    parse_name_addr_list(headers, "Route")?;
    headers.single("Content-Type")?;
    let uri_scheme = check_request_uri(&line.uri)?;
    if line.method.is_known() && cseq.method != line.method {
        return Err(ParseError::CSeqMethod);
    }
    Ok(RequestFields {
        vias,
        from,
        to,
        call_id: call_id.to_string(),
        cseq,
        max_forwards,
        contacts,
        record_route,
        uri_scheme,
    })
}

/// Checks the Request-URI grammar and returns its scheme, lower-cased. For SIP and SIPS URIs
/// headers (`?…`) are refused (RFC 3261 §19.1.1).
fn check_request_uri(uri: &str) -> Result<String, ParseError> {
    let (scheme, rest) = split_scheme(uri).ok_or(ParseError::RequestUri("missing scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme == "sip" || scheme == "sips" {
        let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
        if host_part.contains('?') {
            return Err(ParseError::RequestUri("headers are not allowed"));
        }
    }
    check_uri(uri).map_err(ParseError::RequestUri)?;
    Ok(scheme)
}

/// Checks a URI: a scheme, then only the characters RFC 3261 §25.1 allows in a URI (unreserved,
/// reserved, `%HH` escapes, `[` `]` around IPv6 references; `#`, common unescaped in dialled
/// digits, is tolerated); for SIP and SIPS URIs a host and a port in 1..=65535 if one is given.
pub fn check_uri(uri: &str) -> Result<(), &'static str> {
    let (scheme, rest) = split_scheme(uri).ok_or("URI without a scheme")?;
    if rest.is_empty() {
        return Err("nothing after the URI scheme");
    }
    let bytes = uri.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let escaped = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !escaped {
                return Err("malformed % escape in the URI");
            }
            i += 3;
            continue;
        }
        if !(b.is_ascii_alphanumeric() || b"-_.!~*'();/?:@&=+$,[]#".contains(&b)) {
            return Err("invalid character in the URI");
        }
        i += 1;
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let host_part = rest.split_once('@').map_or(rest, |(_, host)| host);
        let hostport = host_part.split([';', '?']).next().unwrap_or("");
        let port = match hostport.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => None,
                Some((_, after)) => {
                    Some(after.strip_prefix(':').ok_or("malformed IPv6 reference")?)
                }
                None => return Err("malformed IPv6 reference"),
            },
            None => hostport.split_once(':').map(|(_, port)| port),
        };
        let host = hostport.split(':').next().unwrap_or("");
        if host.is_empty() {
            return Err("URI without a host");
        }
        if let Some(port) = port {
            if parse_decimal(port, u64::from(u16::MAX)).is_none_or(|p| p == 0) {
                return Err("invalid port in the URI");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Builds an outgoing message. Header values are stripped of CR and LF so that nothing copied
/// from a request can inject header lines.
#[derive(Debug)]
pub struct MessageWriter {
    buf: Vec<u8>,
}

impl MessageWriter {
    /// Starts a response (`reason` is sanitised with [`reason_phrase`]).
    pub fn response(code: u16, reason: &str) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(format!("SIP/2.0 {code} {}\r\n", reason_phrase(reason)).as_bytes());
        Self { buf }
    }

    /// Starts a request.
    pub fn request(method: &str, uri: &str) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(format!("{method} {} SIP/2.0\r\n", single_line(uri)).as_bytes());
        Self { buf }
    }

    /// Adds a header field.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(single_line(value).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Adds Content-Length, the empty line and the body.
    pub fn finish(mut self, body: &[u8]) -> Vec<u8> {
        self.header("Content-Length", &body.len().to_string());
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(body);
        self.buf
    }
}

fn single_line(value: &str) -> String {
    value.replace(['\r', '\n'], " ")
}

/// Makes `text` a valid Reason-Phrase (RFC 3261 §25.1): characters outside
/// reserved/unreserved/UTF-8/SP/HTAB become spaces, and it is cut at 120 bytes.
pub fn reason_phrase(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let allowed = c == ' '
            || c == '\t'
            || c.is_ascii_alphanumeric()
            || ";/?:@&=+$,-_.!~*'()".contains(c)
            || !c.is_ascii() && !c.is_control();
        let c = if allowed { c } else { ' ' };
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    out
}

/// A quoted-string holding `text` (quotes and backslashes escaped, control characters dropped).
pub fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The standard reason phrase of a status code.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => match code / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).expect("head")
    }

    #[test]
    fn compact_and_cased_names_are_canonical() {
        for (given, canonical) in [
            ("v", "Via"),
            ("V", "Via"),
            ("i", "Call-ID"),
            ("l", "Content-Length"),
            ("m", "Contact"),
            ("k", "Supported"),
            ("x", "Session-Expires"),
            ("cAlL-iD", "Call-ID"),
            ("cseq", "CSeq"),
            ("user-to-user", "User-to-User"),
            ("X-Custom", "X-Custom"),
        ] {
            assert_eq!(canonical_name(given), canonical, "{given}");
        }
    }

    #[test]
    fn folding_and_lws_before_colon() {
        let h = head(
            "INVITE sip:a@b SIP/2.0\r\nTO :\r\n sip:a@b ;tag = x\r\ncseq: 9\r\n  INVITE\r\n\r\n",
        );
        assert_eq!(h.headers.get("To"), Some("sip:a@b ;tag = x"));
        assert_eq!(h.headers.get("CSeq"), Some("9 INVITE"));
        assert!(h.defect.is_none());
    }

    #[test]
    fn garbage_start_lines_are_not_sip() {
        assert_eq!(parse_head(b"hello"), Err(ParseError::NotSip));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotSip));
        assert_eq!(parse_head(b"\r\n\r\n"), Err(ParseError::Empty));
        assert_eq!(parse_head(b"SIP/2.0 99 x\r\n"), Err(ParseError::StatusLine));
        assert_eq!(
            parse_head(b"SIP/2.0 4294967301 x\r\n"),
            Err(ParseError::StatusLine)
        );
    }

    #[test]
    fn header_line_without_colon_is_a_defect() {
        let h = head("OPTIONS sip:a@b SIP/2.0\r\nVia SIP/2.0/UDP x\r\n\r\n");
        assert_eq!(h.defect, Some(ParseError::HeaderLine));
    }

    #[test]
    fn via_with_lws_and_params() {
        let mut headers = Headers::default();
        headers.push(
            "v",
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
        );
        headers.push(
            "Via",
            "SIP/2.0/UDP [2001:db8::1]:5070;rport;received=192.0.2.1",
        );
        let vias = parse_vias(&headers).expect("vias");
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].transport, "TCP");
        assert_eq!(vias[0].host, "spindle.example.com");
        assert_eq!(vias[0].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(vias[1].branch(), Some("z9hG4bK30239"));
        assert_eq!(vias[2].host, "[2001:db8::1]");
        assert_eq!(vias[2].port, Some(5070));
        assert_eq!(vias[2].param("rport"), Some(None));
        assert_eq!(
            vias[2].to_string_with(&[("rport", "9".into())]),
            "SIP/2.0/UDP [2001:db8::1]:5070;received=192.0.2.1;rport=9"
        );
    }

    #[test]
    fn malformed_vias() {
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;,;,,",
            "SIP/2.0/UDP",
            "SIP/2.0 host",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host;branch=",
        ] {
            let mut headers = Headers::default();
            headers.push("Via", bad);
            assert!(parse_vias(&headers).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let a = parse_name_addr(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8"#,
        )
        .expect("quoted");
        assert_eq!(a.uri, "sip:jdrosen@example.com");
        assert_eq!(a.tag(), Some("98asjd8"));
        let b = parse_name_addr("caller<sip:caller@example.com>;tag=323").expect("token display");
        assert_eq!(b.display_name.as_deref(), Some("caller"));
        let c = parse_name_addr("sip:+1@gw.example.net;unknownparam").expect("addr-spec");
        assert_eq!(c.uri, "sip:+1@gw.example.net");
        assert_eq!(c.param("unknownparam"), Some(None));
        let d = parse_name_addr("isbn:2983792873").expect("other scheme");
        assert_eq!(d.uri, "isbn:2983792873");
        for bad in [
            r#""Mr. J. User <sip:j.user@example.com>"#,
            "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            r#""Watson, Thomas" < sip:t.watson@example.org >"#,
            "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            r#""Joe" <sip:joe@example.org>;;;;"#,
            "<sip:a@b",
            "",
        ] {
            assert!(parse_name_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cseq_forms() {
        assert_eq!(
            parse_cseq("0009 INVITE"),
            Ok(CSeq {
                seq: 9,
                method: Method::Invite
            })
        );
        assert!(parse_cseq("36893488147419103232 REGISTER").is_err());
        assert!(parse_cseq("1").is_err());
        assert!(parse_cseq("INVITE").is_err());
        assert!(parse_cseq("1 INVITE x").is_err());
    }

    #[test]
    fn content_length_rules() {
        let mut h = Headers::default();
        assert_eq!(content_length(&h), Ok(None));
        h.push("l", "5");
        h.push("Content-Length", "5");
        assert_eq!(content_length(&h), Ok(Some(5)));
        h.push("Content-Length", "13");
        assert_eq!(
            content_length(&h),
            Err(ParseError::ConflictingContentLength)
        );
        let mut n = Headers::default();
        n.push("Content-Length", "-999");
        assert!(content_length(&n).is_err());
        let mut big = Headers::default();
        big.push("Content-Length", "99999999999999999999999");
        assert!(content_length(&big).is_err());
    }

    #[test]
    fn request_uri_rules() {
        assert_eq!(check_request_uri("sip:user@example.com"), Ok("sip".into()));
        assert_eq!(
            check_request_uri("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"),
            Ok("sip".into())
        );
        assert_eq!(
            check_request_uri("soap.beep://192.0.2.103:3002"),
            Ok("soap.beep".into())
        );
        assert!(check_request_uri("<sip:user@example.com>").is_err());
        assert!(check_request_uri("sip:user@example.com?Route=%3Csip:example.com%3E").is_err());
        assert!(check_request_uri("sip:").is_err());
        assert!(check_request_uri("sip:a@b.example.c<om").is_err());
        assert!(check_request_uri("sip:alice@198.51.100.7:65536").is_err());
        assert!(check_request_uri("sip:alice@[2001:db8::1]:5060;transport=tcp").is_ok());
        assert!(check_request_uri("sip:%zz@example.com").is_err());
        assert!(check_request_uri("sip:*67%23123@example.com").is_ok());
    }

    #[test]
    fn accept_rules() {
        let mut h = Headers::default();
        assert!(accepts_sdp(&h));
        h.push("Accept", "text/nobodyKnowsThis");
        assert!(!accepts_sdp(&h));
        h.push("Accept", "application/*;q=0.5");
        assert!(accepts_sdp(&h));
    }

    #[test]
    fn reason_phrases_are_safe() {
        assert_eq!(reason_phrase("a\"b<c>\r\nd"), "a b c   d");
        assert!(reason_phrase(&"x".repeat(500)).len() <= 120);
        assert_eq!(quote(r#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
    }

    #[test]
    fn uri_params() {
        assert!(uri_has_param("sip:p1.example.com;lr", "lr"));
        assert!(uri_has_param(
            "sip:user@p1.example.com;transport=tcp;LR",
            "lr"
        ));
        assert!(!uri_has_param("sip:user;lr=1@p1.example.com", "lr"));
        assert_eq!(strip_uri_headers("sip:a@b?Route=x"), "sip:a@b");
    }
}
