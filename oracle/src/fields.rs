//! A hash's fields as one buffer: verify reads some six hundred thousand
//! hashes at 100k users, and a map of two owned byte strings per field
//! made their decoding and freeing a quarter of its CPU. Here a hash is
//! two allocations, its bytes and its fields' spans, sorted by name.

use std::fmt;

/// Field names and values, by name (each name once: a later value for a
/// name replaces an earlier one, as HSET does).
#[derive(Clone, Default)]
pub struct Fields {
    bytes: Vec<u8>,
    /// Per field: where its name starts, where its name ends and its value
    /// starts, and where its value ends, in `bytes`; sorted by name.
    spans: Vec<Span>,
}

#[derive(Clone, Copy)]
struct Span {
    /// The name's first eight bytes, zero-padded, big-endian: names mostly
    /// differ there, so sorting compares integers, not byte strings.
    head: u64,
    start: u32,
    mid: u32,
    end: u32,
}

fn head(name: &[u8]) -> u64 {
    let mut eight = [0u8; 8];
    let n = name.len().min(8);
    eight[..n].copy_from_slice(&name[..n]);
    u64::from_be_bytes(eight)
}

impl Fields {
    /// The fields of `pairs`, in any order.
    pub fn from_pairs<'p, I>(pairs: I) -> Fields
    where
        I: IntoIterator<Item = (&'p [u8], &'p [u8])>,
        I::IntoIter: Clone,
    {
        let pairs = pairs.into_iter();
        let (count, len) = pairs
            .clone()
            .fold((0, 0), |(c, l), (n, v)| (c + 1, l + n.len() + v.len()));
        let mut fields = Fields {
            bytes: Vec::with_capacity(len),
            spans: Vec::with_capacity(count),
        };
        for (name, value) in pairs {
            fields.push(name, value);
        }
        fields.settle();
        fields
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        let mid = self.bytes.len();
        self.bytes.extend_from_slice(value);
        let at = |at: usize| u32::try_from(at).expect("a hash under 4 GiB");
        self.spans.push(Span {
            head: head(name),
            start: at(start),
            mid: at(mid),
            end: at(self.bytes.len()),
        });
    }

    /// Sorts the spans by name, keeping the last value of a repeated name.
    fn settle(&mut self) {
        let bytes = &self.bytes;
        let name = |s: &Span| &bytes[s.start as usize..s.mid as usize];
        // Zero-padding keeps the heads' order the names' order; equal
        // heads fall back to the names. Stable: of equal names, the one
        // pushed last stays last.
        self.spans
            .sort_by(|a, b| a.head.cmp(&b.head).then_with(|| name(a).cmp(name(b))));
        if !self
            .spans
            .windows(2)
            .any(|w| w[0].head == w[1].head && name(&w[0]) == name(&w[1]))
        {
            return;
        }
        let mut kept: Vec<Span> = Vec::with_capacity(self.spans.len());
        for s in self.spans.drain(..) {
            match kept.last_mut() {
                Some(last) if name(last) == name(&s) => *last = s,
                _ => kept.push(s),
            }
        }
        self.spans = kept;
    }

    fn at(&self, span: &Span) -> (&[u8], &[u8]) {
        let (start, mid, end) = (span.start as usize, span.mid as usize, span.end as usize);
        (&self.bytes[start..mid], &self.bytes[mid..end])
    }

    /// Sets `name` to `value` (rebuilding the spans: for tests and files,
    /// not for bulk reads).
    pub fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.push(&name, &value);
        self.settle();
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let i = self
            .spans
            .binary_search_by(|s| s.head.cmp(&head(name)).then_with(|| self.at(s).0.cmp(name)))
            .ok()?;
        Some(self.at(&self.spans[i]).1)
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Name and value of each field, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|s| self.at(s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.iter().map(|(name, _)| name)
    }
}

impl FromIterator<(Vec<u8>, Vec<u8>)> for Fields {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Vec<u8>)>>(pairs: I) -> Fields {
        let pairs: Vec<_> = pairs.into_iter().collect();
        Fields::from_pairs(pairs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Fields {}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (n.escape_ascii().to_string(), v.escape_ascii().to_string())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Fields {
        Fields::from_pairs(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn fields_are_found_by_name_whatever_order_they_came_in() {
        let f = of(&[("pos", "3"), ("instId", "BTC"), ("avgPx", "")]);
        assert_eq!(f.get(b"instId"), Some(&b"BTC"[..]));
        assert_eq!(f.get(b"avgPx"), Some(&b""[..]));
        assert_eq!(f.get(b"pos"), Some(&b"3"[..]));
        assert_eq!(f.get(b"po"), None);
        let names: Vec<&[u8]> = f.keys().collect();
        assert_eq!(names, [&b"avgPx"[..], b"instId", b"pos"]);
        assert_eq!(f, of(&[("avgPx", ""), ("pos", "3"), ("instId", "BTC")]));
        assert_ne!(f, of(&[("avgPx", ""), ("pos", "4"), ("instId", "BTC")]));
        assert_ne!(f, of(&[("avgPx", ""), ("pos", "3")]));
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value() {
        let mut f = of(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(f.len(), 2);
        assert_eq!(f.get(b"a"), Some(&b"3"[..]));
        f.insert(b"b".to_vec(), b"4".to_vec());
        assert_eq!(f.len(), 2);
        assert_eq!(f.get(b"b"), Some(&b"4"[..]));
        let owned: Fields = vec![
            (b"x".to_vec(), b"1".to_vec()),
            (b"x".to_vec(), b"2".to_vec()),
        ]
        .into_iter()
        .collect();
        assert_eq!(owned, of(&[("x", "2")]));
    }

    #[test]
    fn a_name_and_value_split_differently_are_different_fields() {
        // One buffer holds both: spans, not the concatenation, are compared.
        assert_ne!(of(&[("ab", "c")]), of(&[("a", "bc")]));
    }
}
