//! The values of a FITS header's standard cards in one pass: the frame
//! reader's fast path for keyword lookups (`fitsheader.py`).
//!
//! A card is 80 bytes; it has a value when bytes 9-10 are the value indicator
//! `"= "` and its keyword (bytes 1-8, trailing blanks dropped) is not
//! `COMMENT`, `HISTORY`, blank or `HIERARCH`. Only values the strict Python
//! parser reads the same way are returned: a string in single quotes (`''`
//! is a quote, trailing blanks dropped) followed by nothing or a `/` comment,
//! `T`/`F`, an integer that fits in `i64`, a real `[+-]?(d+[.d*]|.d+)([EeDd][+-]?d+)?`
//! (correctly rounded, as Python's `float`), or nothing (undefined). Every
//! other valued card (malformed values, strings ending in `&` that a
//! `CONTINUE` card may extend, huge integers) and every keyword that appears
//! more than once is listed by name instead, for the Python parser to read
//! (or to reject with its message). Nothing here panics on any input.

use std::collections::HashMap;

/// One parsed value.
#[derive(Clone, Debug, PartialEq)]
pub enum CardValue {
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
    Undefined,
}

/// Card length in bytes.
const CARD: usize = 80;
/// Keywords of cards that never carry a value (and HIERARCH, read by the Python side).
const NO_VALUE: [&[u8; 8]; 4] = [b"COMMENT ", b"HISTORY ", b"        ", b"HIERARCH"];

/// `(values, others)`: the keywords whose single card parsed, in card order,
/// and the keywords left to the Python parser (repeated or not parsed here).
pub fn header_values(text: &[u8]) -> (Vec<(String, CardValue)>, Vec<String>) {
    let mut count: HashMap<&[u8], usize> = HashMap::new();
    let mut cards: Vec<(&[u8], &[u8])> = Vec::new(); // (keyword, value bytes)
    for card in text.chunks_exact(CARD) {
        if &card[8..10] != b"= " || NO_VALUE.iter().any(|k| &card[..8] == *k) {
            continue;
        }
        let key = trim_end(&card[..8]);
        *count.entry(key).or_insert(0) += 1;
        cards.push((key, &card[10..]));
    }
    let mut values: Vec<(String, CardValue)> = Vec::with_capacity(cards.len());
    let mut others: Vec<String> = Vec::new();
    for (key, raw) in cards {
        let name = String::from_utf8_lossy(key).into_owned();
        match parse_value(raw) {
            Some(v) if count[key] == 1 => values.push((name, v)),
            _ if !others.contains(&name) => others.push(name),
            _ => {}
        }
    }
    (values, others)
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
    &b[..n]
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
    trim_end(&b[start..])
}

/// The value of a card's bytes 11-80, or None when the Python parser must read it.
fn parse_value(raw: &[u8]) -> Option<CardValue> {
    if raw.iter().any(|&c| !(b' '..=b'~').contains(&c)) {
        return None; // only printable ASCII here (the structure reader guarantees it)
    }
    let s = trim(raw);
    if s.first() == Some(&b'\'') {
        return parse_string(s);
    }
    let token = trim_end(match s.iter().position(|&c| c == b'/') {
        Some(slash) => &s[..slash],
        None => s,
    });
    match token {
        [] => Some(CardValue::Undefined),
        b"T" => Some(CardValue::Bool(true)),
        b"F" => Some(CardValue::Bool(false)),
        _ => parse_number(token),
    }
}

/// A quoted string at the start of `s` followed by nothing or a comment.
fn parse_string(s: &[u8]) -> Option<CardValue> {
    let mut out: Vec<u8> = Vec::new();
    let mut i = 1;
    loop {
        let j = i + s[i..].iter().position(|&c| c == b'\'')?;
        out.extend_from_slice(&s[i..j]);
        if s.get(j + 1) == Some(&b'\'') {
            out.push(b'\'');
            i = j + 2;
            continue;
        }
        let rest = &s[j + 1..];
        let rest = &rest[rest.iter().position(|&c| c != b' ').unwrap_or(rest.len())..];
        if !(rest.is_empty() || rest[0] == b'/') {
            return None;
        }
        let value = trim_end(&out);
        if value.last() == Some(&b'&') {
            return None; // a long string may continue in CONTINUE cards
        }
        return Some(CardValue::Str(String::from_utf8_lossy(value).into_owned()));
    }
}

fn digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// An integer (`[+-]?d+`, within i64) or a real of the grammar in the module docs.
fn parse_number(t: &[u8]) -> Option<CardValue> {
    let sign = usize::from(matches!(t.first(), Some(b'+' | b'-')));
    let body = &t[sign..];
    let int_digits = digits(body);
    if int_digits == body.len() {
        return if int_digits == 0 { None } else { std::str::from_utf8(t).ok()?.parse::<i64>().ok().map(CardValue::Int) };
    }
    let mut i = int_digits;
    let mut mantissa_digits = int_digits;
    if body[i] == b'.' {
        let frac = digits(&body[i + 1..]);
        mantissa_digits += frac;
        i += 1 + frac;
    }
    if mantissa_digits == 0 {
        return None;
    }
    if i < body.len() {
        if !matches!(body[i], b'E' | b'e' | b'D' | b'd') {
            return None;
        }
        i += 1;
        i += usize::from(matches!(body.get(i), Some(b'+' | b'-')));
        let exp = digits(&body[i..]);
        if exp == 0 || i + exp != body.len() {
            return None;
        }
    }
    let text: String = t.iter().map(|&c| if c == b'D' || c == b'd' { 'E' } else { c as char }).collect();
    text.parse::<f64>().ok().map(CardValue::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(s: &str) -> Vec<u8> {
        format!("{s:<80}").into_bytes()
    }

    fn values_of(cards: &[&str]) -> (Vec<(String, CardValue)>, Vec<String>) {
        header_values(&cards.iter().flat_map(|c| card(c)).collect::<Vec<u8>>())
    }

    #[test]
    fn the_simple_forms_parse() {
        let (v, o) = values_of(&[
            "NAXIS   =                    2 / axes",
            "CRVAL1  =   1.500000000000E+02",
            "CD1_1   =  -1.7D-3",
            "OBSID   = 'It''s  '           / quoted",
            "SIMPLE  =                    T",
            "BLANK   =",
            "COMMENT = not a value",
            "HIERARCH MP_HOT = 10",
            "NEG     = -.5E+1",
            "INT     = +007",
            "DOT     = 5.",
        ]);
        let expect = vec![
            ("NAXIS".to_string(), CardValue::Int(2)),
            ("CRVAL1".to_string(), CardValue::Float(150.0)),
            ("CD1_1".to_string(), CardValue::Float(-1.7e-3)),
            ("OBSID".to_string(), CardValue::Str("It's".into())),
            ("SIMPLE".to_string(), CardValue::Bool(true)),
            ("BLANK".to_string(), CardValue::Undefined),
            ("NEG".to_string(), CardValue::Float(-5.0)),
            ("INT".to_string(), CardValue::Int(7)),
            ("DOT".to_string(), CardValue::Float(5.0)),
        ];
        assert_eq!(v, expect);
        assert!(o.is_empty(), "{o:?}");
    }

    #[test]
    fn what_python_must_judge_is_listed() {
        let (v, o) = values_of(&[
            "A       = 1.2.3",
            "B       = 'open",
            "C       = 'long&'",
            "D       = 99999999999999999999",
            "E       = nan",
            "F       = 1",
            "F       = 2",
            "G       = 'x' junk",
            "H       = 1E",
            "I       = .",
            "J       = 1 2",
        ]);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(o, ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]);
    }

    #[test]
    fn partial_cards_and_odd_bytes_do_not_panic() {
        let mut t = card("X       = 'a\u{7f}'");
        t.extend_from_slice(b"Y       = 1");
        let (v, o) = header_values(&t);
        assert!(v.is_empty());
        assert_eq!(o, ["X"]);
        assert_eq!(header_values(b""), (vec![], vec![]));
    }
}
