//! A small strict JSON reader (RFC 8259) that keeps each value's source
//! text. DESIGN §2 copies non-string values "as compact JSON text", numbers
//! as written, so the oracle must see the text, not a re-printed number.
//! Written for the oracle alone: it shares nothing with the engine's parser.

/// Deeper than this is not judged (the value is ambiguous input).
pub const MAX_DEPTH: usize = 128;

/// One JSON value and the exact text it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node<'a> {
    pub raw: &'a str,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Null,
    Bool(bool),
    Number,
    /// A string; `None` when its escapes do not decode to Unicode (a lone
    /// surrogate such as `\ud800`): valid JSON text, but no string.
    Str(Option<String>),
    Array(Vec<Node<'a>>),
    /// Members in source order, duplicates kept; a name that does not
    /// decode is `None`.
    Object(Vec<(Option<String>, Node<'a>)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not JSON: what was wrong and the byte offset.
    Syntax { at: usize, what: &'static str },
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Syntax { at, what } => write!(f, "{what} at byte {at}"),
            Error::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
        }
    }
}

/// Reads one JSON document; surrounding whitespace allowed, nothing else.
pub fn parse(text: &str) -> Result<Node<'_>, Error> {
    let mut r = Reader { text, at: 0 };
    r.skip_ws();
    let node = r.value(0)?;
    r.skip_ws();
    if r.at != text.len() {
        return Err(r.err("trailing characters"));
    }
    Ok(node)
}

/// The text with the whitespace between tokens removed; strings, numbers
/// and member order exactly as written.
pub fn compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &'static str) -> Error {
        Error::Syntax { at: self.at, what }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, literal: &'static str, what: &'static str) -> Result<(), Error> {
        if self.text[self.at..].starts_with(literal) {
            self.at += literal.len();
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node<'a>, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let start = self.at;
        let kind = match self.peek() {
            Some(b'n') => self.expect("null", "bad literal").map(|_| Kind::Null)?,
            Some(b't') => self
                .expect("true", "bad literal")
                .map(|_| Kind::Bool(true))?,
            Some(b'f') => self
                .expect("false", "bad literal")
                .map(|_| Kind::Bool(false))?,
            Some(b'"') => Kind::Str(self.string()?),
            Some(b'[') => self.array(depth)?,
            Some(b'{') => self.object(depth)?,
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Kind::Number
            }
            Some(_) => return Err(self.err("unexpected character")),
            None => return Err(self.err("unexpected end")),
        };
        Ok(Node {
            raw: &self.text[start..self.at],
            kind,
        })
    }

    fn array(&mut self, depth: usize) -> Result<Kind<'a>, Error> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Kind::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Kind::Array(items));
                }
                _ => return Err(self.err("expected , or ]")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Kind<'a>, Error> {
        self.at += 1;
        // Room for a position's fields at once, not grown four times.
        let mut members = Vec::with_capacity(16);
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Kind::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a member name"));
            }
            let name = self.string()?;
            self.skip_ws();
            self.expect(":", "expected :")?;
            self.skip_ws();
            members.push((name, self.value(depth + 1)?));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Kind::Object(members));
                }
                _ => return Err(self.err("expected , or }")),
            }
        }
    }

    /// A string literal; `Ok(None)` when it is well-formed JSON but an
    /// escape names a lone surrogate.
    fn string(&mut self) -> Result<Option<String>, Error> {
        self.at += 1;
        let mut out = String::new();
        let mut decodes = true;
        loop {
            // A run of plain characters is copied whole: most strings are
            // one such run.
            let plain = self.text.as_bytes()[self.at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(self.text.len() - self.at);
            // The run ends at an ASCII byte or the end: a char boundary.
            let run = &self.text[self.at..self.at + plain];
            self.at += plain;
            let rest = &self.text[self.at..];
            let Some(c) = rest.chars().next() else {
                return Err(self.err("unterminated string"));
            };
            self.at += c.len_utf8();
            // A string with no escape is its run, copied once.
            if c == '"' && out.is_empty() {
                return Ok(decodes.then(|| run.to_owned()));
            }
            out.push_str(run);
            match c {
                '"' => return Ok(decodes.then_some(out)),
                '\\' => match self.escape()? {
                    Some(decoded) => out.push(decoded),
                    None => decodes = false,
                },
                c if (c as u32) < 0x20 => return Err(self.err("control character in string")),
                c => out.push(c),
            }
        }
    }

    /// After a backslash: the character it stands for, or `None` for a
    /// lone surrogate.
    fn escape(&mut self) -> Result<Option<char>, Error> {
        let Some(c) = self.peek() else {
            return Err(self.err("unterminated escape"));
        };
        self.at += 1;
        let simple = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(self.err("bad escape")),
        };
        Ok(Some(simple))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.err("bad \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.err("bad \\u escape"));
        }
        self.at += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<Option<char>, Error> {
        let first = self.hex4()?;
        match first {
            0xD800..=0xDBFF => {
                if !self.text[self.at..].starts_with("\\u") {
                    return Ok(None);
                }
                let save = self.at;
                self.at += 2;
                let second = self.hex4()?;
                if (0xDC00..=0xDFFF).contains(&second) {
                    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    Ok(char::from_u32(code))
                } else {
                    // The second escape is read again on its own.
                    self.at = save;
                    Ok(None)
                }
            }
            0xDC00..=0xDFFF => Ok(None),
            v => Ok(char::from_u32(v)),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    fn number(&mut self) -> Result<(), Error> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(self.err("bad fraction"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("bad exponent"));
            }
        }
        Ok(())
    }
}

/// The sign and zero-ness of a JSON number literal, read from its digits
/// (not through a float, which would turn `1e-400` into 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Negative,
    Zero,
    Positive,
}

/// `Some(sign)` when `text` is exactly a JSON number literal.
pub fn number_sign(text: &str) -> Option<Sign> {
    let mut r = Reader { text, at: 0 };
    r.number().ok()?;
    if r.at != text.len() {
        return None;
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    if mantissa.bytes().all(|b| matches!(b, b'-' | b'0' | b'.')) {
        Some(Sign::Zero)
    } else if text.starts_with('-') {
        Some(Sign::Negative)
    } else {
        Some(Sign::Positive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_number_text_and_member_order() {
        let n = parse(r#" {"b": 3.50, "a": [1e5, -0]} "#).unwrap();
        let Kind::Object(members) = n.kind else {
            panic!("object")
        };
        assert_eq!(members[0].0.as_deref(), Some("b"));
        assert_eq!(members[0].1.raw, "3.50");
        assert_eq!(compact(members[1].1.raw), "[1e5,-0]");
    }

    #[test]
    fn compact_leaves_spaces_inside_strings() {
        assert_eq!(
            compact("{ \"a b\" : \"c \\\" d\" }"),
            "{\"a b\":\"c \\\" d\"}"
        );
    }

    #[test]
    fn duplicates_are_kept() {
        let Kind::Object(m) = parse(r#"{"a":1,"a":2}"#).unwrap().kind else {
            panic!()
        };
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn decodes_escapes_and_flags_lone_surrogates() {
        let n = parse(r#"["\u00e9\ud83d\ude00\n", "\ud800", "\udc00x"]"#).unwrap();
        let Kind::Array(items) = n.kind else { panic!() };
        assert_eq!(items[0].kind, Kind::Str(Some("é😀\n".into())));
        assert_eq!(items[1].kind, Kind::Str(None));
        assert_eq!(items[2].kind, Kind::Str(None));
    }

    #[test]
    fn rejects_what_rfc_8259_rejects() {
        for bad in [
            "",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "[1 2]",
            "\"a\tb\"",
            "nul",
            "{a:1}",
            "[1]x",
            "\"\\x\"",
            "NaN",
            "1e",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(parse(&deep), Err(Error::TooDeep));
    }

    #[test]
    fn number_signs_come_from_the_digits() {
        assert_eq!(number_sign("-0.000"), Some(Sign::Zero));
        assert_eq!(number_sign("0e10"), Some(Sign::Zero));
        assert_eq!(number_sign("1e-400"), Some(Sign::Positive));
        assert_eq!(number_sign("-2.5"), Some(Sign::Negative));
        assert_eq!(number_sign(" 1"), None);
        assert_eq!(number_sign("abc"), None);
    }
}
