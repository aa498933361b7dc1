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

/// Bytes that Python's `str.strip()` removes from latin-1 text (the reader
/// decodes headers as latin-1).
fn py_space(c: u8) -> bool {
    matches!(c, 9..=13 | 0x1c..=0x20 | 0x85 | 0xa0)
}

/// `(end, garbage)` of one chunk of whole header blocks: the byte offset of
/// its END card (card-aligned `END`, the rest of the card blank in Python's
/// sense) or None, and whether a byte before it (before the chunk's end when
/// there is no END card) is not FITS header text (ASCII 32-126).
pub fn header_end(chunk: &[u8]) -> (Option<usize>, bool) {
    let end = chunk.chunks_exact(CARD).position(|card| &card[..3] == b"END" && card[3..].iter().all(|&c| py_space(c))).map(|i| i * CARD);
    let garbage = chunk[..end.unwrap_or(chunk.len())].iter().any(|&c| !(b' '..=b'~').contains(&c));
    (end, garbage)
}

/// The mandatory keywords of a header (FITS 4.0 section 4.4.1), read by
/// [`mandatory_cards`]; `extname` is the value of the first EXTNAME card when
/// it is a string.
#[derive(Clone, Debug, PartialEq)]
pub struct Mandatory {
    /// XTENSION's string (None for a primary header).
    pub xtension: Option<String>,
    pub bitpix: i64,
    /// NAXIS1, NAXIS2, ... in card order.
    pub dims: Vec<i64>,
    pub pcount: i64,
    pub gcount: i64,
    pub extname: Option<String>,
}

const BITPIX: [i64; 6] = [8, 16, 32, 64, -32, -64];

/// The value of card number `i` of `text` when it is keyword `key` with a value
/// this module reads exactly as the Python parser.
fn card_value(text: &[u8], i: usize, key: &str) -> Option<CardValue> {
    let card = text.get(i * CARD..(i + 1) * CARD)?;
    let name = key.as_bytes();
    if name.len() > 8 || &card[..name.len()] != name || card[name.len()..8].iter().any(|&c| c != b' ') || &card[8..10] != b"= " {
        return None;
    }
    parse_value(&card[10..])
}

fn int_card(text: &[u8], i: usize, key: &str, ok: impl Fn(i64) -> bool) -> Option<i64> {
    match card_value(text, i, key)? {
        CardValue::Int(v) if ok(v) => Some(v),
        _ => None,
    }
}

/// The mandatory keywords of the header `text` (whole cards before END, FITS
/// header text) when they are all valid, in their standard positions, and read
/// here exactly as the Python reader (`fitsstructure._mandatory`) reads them;
/// None otherwise, and the Python reader judges the header (with its
/// messages). So a header this accepts gets the same values either way.
pub fn mandatory_cards(text: &[u8], primary: bool) -> Option<Mandatory> {
    let xtension = if primary {
        match card_value(text, 0, "SIMPLE")? {
            CardValue::Bool(true) => None,
            _ => return None,
        }
    } else {
        match card_value(text, 0, "XTENSION")? {
            CardValue::Str(s) => Some(s),
            _ => return None,
        }
    };
    let bitpix = int_card(text, 1, "BITPIX", |b| BITPIX.contains(&b))?;
    let naxis = int_card(text, 2, "NAXIS", |n| (0..=999).contains(&n))? as usize;
    let mut dims = Vec::with_capacity(naxis);
    for i in 1..=naxis {
        dims.push(int_card(text, 2 + i, &format!("NAXIS{i}"), |d| d >= 0)?);
    }
    let (pcount, gcount) =
        if primary { (0, 1) } else { (int_card(text, 3 + naxis, "PCOUNT", |v| v >= 0)?, int_card(text, 4 + naxis, "GCOUNT", |v| v >= 0)?) };
    Some(Mandatory { xtension, bitpix, dims, pcount, gcount, extname: extname(text)? })
}

/// `Some(value)` of the first EXTNAME card (`Some(None)`: none, or not a
/// string); None when the Python reader must judge it (a value not read here,
/// or a HIERARCH card named EXTNAME, which the Python reader counts too).
fn extname(text: &[u8]) -> Option<Option<String>> {
    let mut found = None;
    for card in text.chunks_exact(CARD) {
        if card.starts_with(b"HIERARCH ") {
            if let Some(eq) = card[9..].iter().position(|&c| c == b'=') {
                if trim(&card[9..9 + eq]).eq_ignore_ascii_case(b"EXTNAME") {
                    return None;
                }
            }
        } else if found.is_none() && card.starts_with(b"EXTNAME = ") {
            found = Some(parse_value(&card[10..])?);
        }
    }
    Some(match found {
        Some(CardValue::Str(s)) => Some(s),
        _ => None,
    })
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

    fn header(cards: &[&str]) -> Vec<u8> {
        cards.iter().flat_map(|c| card(c)).collect()
    }

    #[test]
    fn end_card_and_garbage_before_it() {
        let mut t = header(&["SIMPLE  =                    T", "EXTEND  = T", "END"]);
        t.resize(2880, b' ');
        assert_eq!(header_end(&t), (Some(160), false));
        t[170] = b'\t'; // after END: not looked at
        assert_eq!(header_end(&t), (Some(160), false));
        t[20] = 0;
        assert_eq!(header_end(&t), (Some(160), true));
        let mut t = header(&["SIMPLE  =                    T", "END     x"]);
        assert_eq!(header_end(&t), (None, false));
        t[83] = 0xa0; // Python's strip() removes it: an END card
        t[88] = b' ';
        assert_eq!(header_end(&t), (Some(80), false));
    }

    #[test]
    fn mandatory_keywords_in_their_places() {
        let t = header(&[
            "XTENSION= 'IMAGE   '           / image",
            "BITPIX  =                  -32",
            "NAXIS   =                    2",
            "NAXIS1  =                 2040",
            "NAXIS2  =                   10",
            "PCOUNT  =                    0",
            "GCOUNT  =                    1",
            "EXTNAME = 'IMAGE'",
        ]);
        let m = mandatory_cards(&t, false).unwrap();
        assert_eq!(
            m,
            Mandatory { xtension: Some("IMAGE".into()), bitpix: -32, dims: vec![2040, 10], pcount: 0, gcount: 1, extname: Some("IMAGE".into()) }
        );
        let p = header(&["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    0"]);
        assert_eq!(mandatory_cards(&p, true).unwrap().extname, None);
        assert_eq!(mandatory_cards(&p, false), None);
    }

    #[test]
    fn anything_unusual_is_left_to_python() {
        let good = ["XTENSION= 'IMAGE'", "BITPIX  = 16", "NAXIS   = 1", "NAXIS1  = 5", "PCOUNT  = 0", "GCOUNT  = 1"];
        assert!(mandatory_cards(&header(&good), false).is_some());
        for (i, bad) in [
            (1, "BITPIX  = 17"),
            (1, "BITPIX  = 16.0"),
            (2, "NAXIS   = -1"),
            (3, "NAXIS1  = 99999999999999999999"),
            (3, "NAXIS1 = 5"),
            (4, "GCOUNT  = 0"),
            (5, "PCOUNT  = 0"),
            (0, "XTENSION= 5"),
        ] {
            let mut cards = good.to_vec();
            cards[i] = bad;
            assert_eq!(mandatory_cards(&header(&cards), false), None, "{bad}");
        }
        let mut cards = good.to_vec();
        cards.push("HIERARCH  extname = 'X'");
        assert_eq!(mandatory_cards(&header(&cards), false), None);
        cards.pop();
        cards.push("EXTNAME = 'open");
        assert_eq!(mandatory_cards(&header(&cards), false), None);
        cards.pop();
        cards.push("EXTNAME = 7");
        assert_eq!(mandatory_cards(&header(&cards), false).unwrap().extname, None);
        assert_eq!(mandatory_cards(&header(&good[..5]), false), None);
        assert_eq!(mandatory_cards(b"", true), None);
    }
}
