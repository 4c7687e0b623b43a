//! A position hash as a DUMP payload, so one RESTORE writes it whole.
//!
//! Redis keeps a small hash as one listpack, and RESTORE of a listpack
//! payload (RDB type 16, Redis 7.0's RDB version 10) is little more than a
//! copy: on Redis 7.0 it cost the server 1.8 µs against HSET's 6.6 µs for
//! the same 29 fields, and inside a script it is one argument where HSET is
//! 58 (each crossing into Lua and back). The bytes are exactly what DUMP
//! gives of the hash HSET would make (fields in first-seen order, a field
//! set twice keeps its last value, numbers in listpack's integer forms):
//! the harness compares the two on a live server.
//!
//! A listpack payload is made only for a hash the server would keep as a
//! listpack (its `hash-max-listpack-entries` and `-value`, read when the
//! store opens). Any other hash is a plain RDB hash (type 4), from which
//! the server builds the encoding its own configuration picks, as HSET's
//! would be; that load costs about what HSET does, without the script's
//! per-argument price.
//!
//! Pure: no I/O, unit-tested here.

use std::collections::HashSet;

use crc::{Crc, Table, CRC_64_REDIS};

/// RDB object types (Redis `rdb.h`).
const RDB_TYPE_HASH: u8 = 4;
const RDB_TYPE_HASH_LISTPACK: u8 = 16;
/// The RDB version of Redis 7.0, the first to know RDB_TYPE_HASH_LISTPACK;
/// a later server accepts any payload of an earlier version.
const RDB_VERSION: u16 = 10;
/// A listpack's header: total bytes (u32) and element count (u16).
const LISTPACK_HEADER: usize = 6;
const LISTPACK_END: u8 = 0xFF;

/// Slice-by-16 tables: a payload is checked byte by byte otherwise, and
/// every position hash is one.
const REDIS_CRC: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&CRC_64_REDIS);

/// The sizes up to which the server keeps a hash as a listpack:
/// `hash-max-listpack-entries` (field/value pairs) and
/// `hash-max-listpack-value` (bytes of the longest field or value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListpackLimits {
    pub entries: usize,
    pub value: usize,
}

/// The RESTORE payload of the hash that HSET of `pairs`, in order, would
/// leave: a listpack when `limits` (the server's, when known) keep it one,
/// else a plain RDB hash the server encodes by its own configuration.
pub fn hash_payload<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    limits: Option<ListpackLimits>,
) -> Vec<u8> {
    let pairs = as_hset_leaves_them(pairs);
    let fits = limits.is_some_and(|l| {
        pairs.len() <= l.entries
            && pairs
                .iter()
                .all(|(f, v)| f.len() <= l.value && v.len() <= l.value)
    });
    let data: usize = pairs.iter().map(|(f, v)| f.len() + v.len()).sum();
    // Room for every entry's longest prefix and backlen: one allocation.
    let mut out = Vec::with_capacity(32 + data + 16 * pairs.len());
    if fits {
        out.push(RDB_TYPE_HASH_LISTPACK);
        // The listpack goes after room for the longest length prefix, and
        // moves up once its length, and so its prefix, is known.
        let room = 1 + 5;
        out.resize(room, 0);
        listpack(&mut out, &pairs);
        let len = out.len() - room;
        let mut prefix = Vec::with_capacity(5);
        rdb_len(&mut prefix, len);
        let start = 1 + prefix.len();
        out[1..start].copy_from_slice(&prefix);
        out.copy_within(room.., start);
        out.truncate(start + len);
    } else {
        out.push(RDB_TYPE_HASH);
        rdb_len(&mut out, pairs.len());
        for (f, v) in &pairs {
            rdb_len(&mut out, f.len());
            out.extend_from_slice(f);
            rdb_len(&mut out, v.len());
            out.extend_from_slice(v);
        }
    }
    out.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = REDIS_CRC.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// `pairs` as HSET leaves them: each field once, where it first came, with
/// the last value given for it. A hash payload must not repeat a field:
/// RESTORE does not look for repeats unless the server sanitizes payloads.
fn as_hset_leaves_them<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<(&'a [u8], &'a [u8])> {
    let pairs: Vec<(&[u8], &[u8])> = pairs.into_iter().collect();
    let mut seen = HashSet::with_capacity(pairs.len());
    if pairs.iter().all(|(f, _)| seen.insert(*f)) {
        return pairs;
    }
    let mut out: Vec<(&[u8], &[u8])> = Vec::with_capacity(pairs.len());
    for (field, value) in pairs {
        match out.iter_mut().find(|(f, _)| *f == field) {
            Some(pair) => pair.1 = value,
            None => out.push((field, value)),
        }
    }
    out
}

/// RDB's length prefix (`rdbSaveLen`): 6, 14, 32 or 64 bits.
fn rdb_len(out: &mut Vec<u8>, len: usize) {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.extend_from_slice(&[0x40 | (len >> 8) as u8, len as u8]);
    } else if let Ok(len) = u32::try_from(len) {
        out.push(0x80);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends the listpack of `pairs` to `out`, each field then its value.
fn listpack(out: &mut Vec<u8>, pairs: &[(&[u8], &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[0; LISTPACK_HEADER]);
    for (f, v) in pairs {
        entry(out, f);
        entry(out, v);
    }
    out.push(LISTPACK_END);
    let total = u32::try_from(out.len() - start).expect("a position hash is far below 4 GB");
    let count = u16::try_from(pairs.len() * 2).unwrap_or(u16::MAX);
    out[start..start + 4].copy_from_slice(&total.to_le_bytes());
    out[start + 4..start + 6].copy_from_slice(&count.to_le_bytes());
}

/// One listpack entry: its encoding and data, then their length written
/// backwards (`lpEncodeBacklen`), so the list can be walked from its end.
fn entry(lp: &mut Vec<u8>, element: &[u8]) {
    let start = lp.len();
    match as_listpack_int(element) {
        Some(v) => int_entry(lp, v),
        None => string_entry(lp, element),
    }
    let len = (lp.len() - start) as u64;
    backlen(lp, len);
}

/// The integer `lpStringToInt64` reads from `s`: decimal digits with an
/// optional `-`, no leading zero (`0` alone aside), no `+`, no spaces,
/// fewer than 21 bytes, within i64. Such a string is stored as a number.
fn as_listpack_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        // -(2^63) itself is an i64; anything larger in magnitude is not.
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

/// `lpEncodeIntegerGetType`: the shortest of listpack's integer forms.
fn int_entry(lp: &mut Vec<u8>, v: i64) {
    let le = v.to_le_bytes();
    match v {
        0..=127 => lp.push(v as u8),
        -4096..=4095 => {
            let u = (v as u64) & 0x1FFF;
            lp.extend_from_slice(&[0xC0 | (u >> 8) as u8, u as u8]);
        }
        -32768..=32767 => {
            lp.push(0xF1);
            lp.extend_from_slice(&le[..2]);
        }
        -8_388_608..=8_388_607 => {
            lp.push(0xF2);
            lp.extend_from_slice(&le[..3]);
        }
        -2_147_483_648..=2_147_483_647 => {
            lp.push(0xF3);
            lp.extend_from_slice(&le[..4]);
        }
        _ => {
            lp.push(0xF4);
            lp.extend_from_slice(&le);
        }
    }
}

/// `lpEncodeString`: a 6-, 12- or 32-bit length, then the bytes.
fn string_entry(lp: &mut Vec<u8>, s: &[u8]) {
    let len = s.len();
    if len < 64 {
        lp.push(0x80 | len as u8);
    } else if len < 4096 {
        lp.extend_from_slice(&[0xE0 | (len >> 8) as u8, len as u8]);
    } else {
        lp.push(0xF0);
        let len = u32::try_from(len).expect("a field is far below 4 GB");
        lp.extend_from_slice(&len.to_le_bytes());
    }
    lp.extend_from_slice(s);
}

/// `lpEncodeBacklen`: `len` in 7-bit groups, most significant first, every
/// byte but the first with its high bit set.
fn backlen(lp: &mut Vec<u8>, len: u64) {
    let groups = match len {
        0..=127 => 1,
        128..=16_382 => 2,
        16_383..=2_097_150 => 3,
        2_097_151..=268_435_454 => 4,
        _ => 5,
    };
    for g in (0..groups).rev() {
        let bits = ((len >> (7 * g)) & 127) as u8;
        lp.push(if g == groups - 1 { bits } else { bits | 128 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Option<ListpackLimits> = Some(ListpackLimits {
        entries: 128,
        value: 64,
    });

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn pairs<'a>(p: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        p.iter().map(|(f, v)| (f.as_bytes(), v.as_bytes()))
    }

    /// DUMP of `HSET h instId BTC-USDT-SWAP pos 214 lever 5 margin "" upl
    /// -1.5 big 12345678901 neg -7 z 0123` on Redis 7.0.15 with
    /// `rdbcompression no`.
    #[test]
    fn a_listpack_payload_is_what_redis_dumps() {
        let hash = [
            ("instId", "BTC-USDT-SWAP"),
            ("pos", "214"),
            ("lever", "5"),
            ("margin", ""),
            ("upl", "-1.5"),
            ("big", "12345678901"),
            ("neg", "-7"),
            ("z", "0123"),
        ];
        assert_eq!(
            hex(&hash_payload(pairs(&hash), ROOMY)),
            "10406464000000100086696e73744964078d4254432d555344542d535741500e83706f7304c0d602\
             856c65766572060501866d617267696e0780018375706c04842d312e35058362696704f4351cdcdf\
             0200000009836e656704dff902817a02843031323305ff0a00a8fcf5bffe4a6e44"
        );
    }

    #[test]
    fn numbers_take_listpack_integer_forms_and_other_strings_stay_text() {
        let cases: &[(&str, &str)] = &[
            ("0", "00"),
            ("127", "7f"),
            ("128", "c080"),
            ("-1", "dfff"),
            ("4095", "cfff"),
            ("-4096", "d000"),
            ("4096", "f10010"),
            ("-32768", "f10080"),
            ("32768", "f2008000"),
            ("8388608", "f300008000"),
            ("2147483648", "f40000008000000000"),
            ("9223372036854775807", "f4ffffffffffffff7f"),
            ("-9223372036854775808", "f40000000000000080"),
            (
                "9223372036854775808",
                "9339323233333732303336383534373735383038",
            ),
            ("-0", "822d30"),
            ("007", "83303037"),
            ("+7", "822b37"),
            ("1 ", "823120"),
            ("-", "812d"),
        ];
        for (text, want) in cases {
            let mut lp = Vec::new();
            entry(&mut lp, text.as_bytes());
            let body = &lp[..lp.len() - 1];
            assert_eq!(hex(body), *want, "{text}");
            assert_eq!(lp[lp.len() - 1] as usize, body.len(), "{text}: backlen");
        }
    }

    #[test]
    fn long_strings_take_wider_length_forms_and_backlens() {
        let mut lp = Vec::new();
        entry(&mut lp, &[b'x'; 64]);
        assert_eq!(&lp[..2], &[0xE0, 64]);
        assert_eq!(&lp[66..], &[66], "a length up to 127 is one byte");
        let mut lp = Vec::new();
        entry(&mut lp, &[b'x'; 4096]);
        assert_eq!(&lp[..5], &[0xF0, 0, 16, 0, 0]);
        let len = 4096 + 5;
        assert_eq!(&lp[len..], &[(len >> 7) as u8, (len as u8 & 127) | 128]);
    }

    #[test]
    fn a_field_given_twice_keeps_its_place_and_its_last_value() {
        let once = hash_payload(pairs(&[("a", "1"), ("b", "2")]), ROOMY);
        let twice = hash_payload(pairs(&[("a", "0"), ("b", "2"), ("a", "1")]), ROOMY);
        assert_eq!(hex(&once), hex(&twice));
    }

    #[test]
    fn a_hash_past_the_listpack_limits_is_a_plain_rdb_hash() {
        let long = "v".repeat(65);
        let payload = hash_payload(pairs(&[("a", &long)]), ROOMY);
        assert_eq!(payload[0], RDB_TYPE_HASH);
        assert_eq!(&payload[1..4], &[1, 1, b'a']);
        assert_eq!(&payload[4..6], &[0x40, 65]);
        let many = hash_payload(
            pairs(&[("a", "1"), ("b", "2")]),
            Some(ListpackLimits {
                entries: 1,
                value: 64,
            }),
        );
        assert_eq!(many[0], RDB_TYPE_HASH);
        let unknown = hash_payload(pairs(&[("a", "1")]), None);
        assert_eq!(unknown[0], RDB_TYPE_HASH);
    }

    #[test]
    fn every_payload_ends_in_the_rdb_version_and_its_crc() {
        for payload in [
            hash_payload(pairs(&[("a", "1")]), ROOMY),
            hash_payload(pairs(&[("a", "1")]), None),
        ] {
            let (body, crc) = payload.split_at(payload.len() - 8);
            assert_eq!(&body[body.len() - 2..], &[10, 0]);
            assert_eq!(crc, REDIS_CRC.checksum(body).to_le_bytes());
        }
        // CRC-64/REDIS's published check value.
        assert_eq!(REDIS_CRC.checksum(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn rdb_lengths_take_6_14_and_32_bits() {
        for (len, want) in [
            (63usize, vec![63u8]),
            (64, vec![0x40, 64]),
            (16383, vec![0x7F, 0xFF]),
            (16384, vec![0x80, 0, 0, 0x40, 0]),
        ] {
            let mut out = Vec::new();
            rdb_len(&mut out, len);
            assert_eq!(out, want, "{len}");
        }
    }
}
