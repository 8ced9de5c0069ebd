//! Values that came in binary read back into the text their type's output function writes
//! (`DateStyle = ISO`, `TimeZone = UTC`), for the key types continuous verification looks rows
//! up by (`catalog::KEY_TYPES`): the keys it keeps are text, whichever form the stream has.

/// A signed integer of 2, 4 or 8 bytes in binary (big-endian).
pub(crate) fn binary_int(b: &[u8]) -> Option<i64> {
    Some(match b.len() {
        2 => i16::from_be_bytes(b.try_into().ok()?).into(),
        4 => i32::from_be_bytes(b.try_into().ok()?).into(),
        8 => i64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// A key value in text as the type's output function writes it, from its binary form (`base`:
/// the built-in type it has, one of `catalog::KEY_TYPES`); left as it is when it cannot be.
#[cfg(test)]
pub(crate) fn key_text(v: &crate::stream::Value, base: u32) -> crate::stream::Value {
    use crate::stream::Value;
    let Value::Binary(b) = v else { return v.clone() };
    let mut out = Vec::new();
    if write_key_text(b, base, &mut out) { Value::Text(out.into()) } else { v.clone() }
}

/// [`key_text`] of a value's binary form `b`, written after what `out` holds (the hot path of
/// recording changed keys: the common types take no allocation of their own); false, and
/// `out` as it was, when it cannot be.
pub(crate) fn write_key_text(b: &[u8], base: u32, out: &mut Vec<u8>) -> bool {
    use std::io::Write;
    let text = match base {
        16 if b.len() == 1 => {
            out.push(if b[0] != 0 { b't' } else { b'f' });
            return true;
        }
        20 | 21 | 23 => {
            return binary_int(b).is_some_and(|n| write!(out, "{n}").is_ok());
        }
        26 => {
            return <[u8; 4]>::try_from(b)
                .is_ok_and(|o| write!(out, "{}", u32::from_be_bytes(o)).is_ok());
        }
        2950 if b.len() == 16 => {
            for (k, x) in b.iter().enumerate() {
                if matches!(k, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                let _ = write!(out, "{x:02x}");
            }
            return true;
        }
        // text, name, bpchar, varchar: the same characters in both forms.
        25 | 19 | 1042 | 1043 => {
            out.extend_from_slice(b);
            return true;
        }
        1082 => <[u8; 4]>::try_from(b).ok().map(|d| date_text(i32::from_be_bytes(d))),
        1114 | 1184 => <[u8; 8]>::try_from(b)
            .ok()
            .map(|t| timestamp_text(i64::from_be_bytes(t), if base == 1184 { "+00" } else { "" })),
        1700 => numeric_text(b),
        _ => None,
    };
    text.is_some_and(|t| {
        out.extend_from_slice(t.as_bytes());
        true
    })
}

/// A year, month and day from days since 2000-01-01 (the proleptic Gregorian calendar, years
/// astronomical: 0 is 1 BC).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 730_425; // 2000-01-01 is day 730,425 after 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `date` (days since 2000-01-01) as `DateStyle = ISO` writes it.
fn date_text(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let (date, era) = ymd_of(i64::from(d));
            format!("{date}{era}")
        }
    }
}

/// `YYYY-MM-DD` of days since 2000-01-01, and the ` BC` that goes at the end of the text.
fn ymd_of(days: i64) -> (String, &'static str) {
    let (year, month, day) = civil(days);
    let (shown, era) = if year <= 0 { (1 - year, " BC") } else { (year, "") };
    (format!("{shown:04}-{month:02}-{day:02}"), era)
}

/// A `timestamp` (microseconds since 2000-01-01) as `DateStyle = ISO` writes it, `zone` after
/// the time (`+00`: a `timestamptz`, in UTC).
fn timestamp_text(us: i64, zone: &str) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let (days, rest) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
            let (date, era) = ymd_of(days);
            let (secs, micros) = (rest / 1_000_000, rest % 1_000_000);
            let fraction = if micros == 0 {
                String::new()
            } else {
                format!(".{micros:06}").trim_end_matches('0').to_string()
            };
            format!(
                "{date} {:02}:{:02}:{:02}{fraction}{zone}{era}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            )
        }
    }
}

/// A `numeric` in binary (digit count, weight, sign, display scale, base-10000 digits) as
/// text.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| b.get(i..i + 2).map(|w| u16::from_be_bytes([w[0], w[1]]));
    let (ndigits, weight, sign, dscale) =
        (word(0)? as usize, word(2)? as i16 as i64, word(4)?, word(6)? as usize);
    let digits: Vec<u16> = (0..ndigits).map(|k| word(8 + 2 * k)).collect::<Option<_>>()?;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    // The base-10000 digit of weight w (10000^w): digits[weight - w], 0 beyond them.
    let at =
        |w: i64| usize::try_from(weight - w).ok().and_then(|k| digits.get(k)).map_or(0, |d| *d);
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&at(weight).to_string());
        for w in (0..weight).rev() {
            out.push_str(&format!("{:04}", at(w)));
        }
    }
    if dscale > 0 {
        let mut fraction = String::new();
        let mut w = -1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", at(w)));
            w -= 1;
        }
        out.push('.');
        out.push_str(&fraction[..dscale]);
    }
    Some(out)
}
