//! Just enough DER reading of an X.509 certificate for the libpq rules webpki does not cover:
//! the subject Common Name and subjectAltName entries (libpq falls back to the CN when a
//! certificate has no matching SAN type), and the validity period (for a self-signed server
//! certificate trusted directly, as the PostgreSQL docs' recipe produces).

use std::net::IpAddr;

/// The parts of a certificate used for libpq's host-name check and pinned-certificate expiry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct CertInfo {
    pub(super) common_names: Vec<String>,
    pub(super) dns_names: Vec<String>,
    pub(super) ip_addresses: Vec<IpAddr>,
    /// Seconds since the Unix epoch.
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

/// Reads one DER element (single-byte tags only), advancing `input`.
fn read<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, after) = rest.split_at_checked(len)?;
    *input = after;
    Some((tag, content))
}

fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
    match read(input)? {
        (t, content) if t == tag => Some(content),
        _ => None,
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Parses a DER certificate; `None` if it is not one.
pub(super) fn parse(der: &[u8]) -> Option<CertInfo> {
    let mut input = der;
    let mut cert = expect(&mut input, SEQUENCE)?;
    let mut tbs = expect(&mut cert, SEQUENCE)?;
    let mut info = CertInfo::default();

    let (tag, _) = read(&mut tbs)?;
    if tag == 0xa0 {
        read(&mut tbs)?; // serialNumber after the explicit version
    }
    expect(&mut tbs, SEQUENCE)?; // signature algorithm
    expect(&mut tbs, SEQUENCE)?; // issuer
    let mut validity = expect(&mut tbs, SEQUENCE)?;
    let (t, v) = read(&mut validity)?;
    info.not_before = parse_time(t, v)?;
    let (t, v) = read(&mut validity)?;
    info.not_after = parse_time(t, v)?;
    let mut subject = expect(&mut tbs, SEQUENCE)?;
    while !subject.is_empty() {
        let mut rdn = expect(&mut subject, SET)?;
        while !rdn.is_empty() {
            let mut attr = expect(&mut rdn, SEQUENCE)?;
            let oid = expect(&mut attr, OID)?;
            let (tag, value) = read(&mut attr)?;
            if oid == OID_COMMON_NAME
                && let Some(s) = decode_string(tag, value)
            {
                info.common_names.push(s);
            }
        }
    }
    expect(&mut tbs, SEQUENCE)?; // subjectPublicKeyInfo
    while !tbs.is_empty() {
        let (tag, content) = read(&mut tbs)?;
        if tag != 0xa3 {
            continue;
        }
        let mut outer = content;
        let mut extensions = expect(&mut outer, SEQUENCE)?;
        while !extensions.is_empty() {
            let mut ext = expect(&mut extensions, SEQUENCE)?;
            let oid = expect(&mut ext, OID)?;
            let (mut tag, mut value) = read(&mut ext)?;
            if tag == 0x01 {
                (tag, value) = read(&mut ext)?; // skip "critical"
            }
            if oid != OID_SUBJECT_ALT_NAME || tag != OCTET_STRING {
                continue;
            }
            let mut v = value;
            let mut names = expect(&mut v, SEQUENCE)?;
            while !names.is_empty() {
                match read(&mut names)? {
                    (0x82, dns) => {
                        info.dns_names.push(String::from_utf8_lossy(dns).into_owned());
                    }
                    (0x87, ip) => {
                        if let Ok(b) = <[u8; 4]>::try_from(ip) {
                            info.ip_addresses.push(IpAddr::from(b));
                        } else if let Ok(b) = <[u8; 16]>::try_from(ip) {
                            info.ip_addresses.push(IpAddr::from(b));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Some(info)
}

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (treated as Latin-1).
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_owned),
        0x14 => Some(value.iter().map(|b| char::from(*b)).collect()),
        // BMPString (UTF-16BE).
        0x1e => {
            let units: Vec<u16> =
                value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn parse_time(tag: u8, value: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let hour = num(rest + 4..rest + 6)?;
    let minute = num(rest + 6..rest + 8)?;
    let second = num(rest + 8..rest + 10)?;
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// libpq's host-name check (`verify-full`): for a DNS name, the dNSName SANs, or the CN when
/// there are none; for an IP address, the iPAddress SANs or a dNSName SAN spelling it, or the
/// CN when there are no iPAddress SANs. A leading `*.` matches one label, case-insensitively.
pub(super) fn libpq_name_matches(info: &CertInfo, host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        if info.ip_addresses.contains(&ip)
            || info.dns_names.iter().any(|n| n.eq_ignore_ascii_case(host))
        {
            return true;
        }
        return info.ip_addresses.is_empty() && info.common_names.iter().any(|cn| cn == host);
    }
    let names = if info.dns_names.is_empty() { &info.common_names } else { &info.dns_names };
    names.iter().any(|pattern| name_matches(pattern, host))
}

fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    // libpq's wildcard_certificate_match: "*.suffix" matches exactly one label.
    let Some(suffix) = pattern.strip_prefix('*').filter(|s| s.starts_with('.') && s.len() > 1)
    else {
        return false;
    };
    host.len() > suffix.len()
        && host.is_char_boundary(host.len() - suffix.len())
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && !host[..host.len() - suffix.len()].contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_time(0x17, b"700101000001Z"), Some(1));
        assert_eq!(parse_time(0x18, b"20380119031408Z"), Some(2_147_483_648));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x17, b"bad"), None);
    }

    #[test]
    fn wildcards_like_libpq() {
        assert!(name_matches("*.example.com", "db.example.com"));
        assert!(name_matches("*.EXAMPLE.com", "db.example.COM"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("db*.example.com", "db1.example.com"));
        assert!(name_matches("db.example.com", "db.example.com."));
    }

    #[test]
    fn san_and_cn_rules() {
        let cn_only =
            CertInfo { common_names: vec!["db.example.com".into()], ..Default::default() };
        assert!(libpq_name_matches(&cn_only, "db.example.com"));
        assert!(!libpq_name_matches(&cn_only, "other.example.com"));
        let with_san = CertInfo {
            common_names: vec!["db.example.com".into()],
            dns_names: vec!["alias.example.com".into()],
            ..Default::default()
        };
        assert!(!libpq_name_matches(&with_san, "db.example.com"), "CN ignored when SANs exist");
        assert!(libpq_name_matches(&with_san, "alias.example.com"));
        let ip_cn = CertInfo { common_names: vec!["10.0.0.5".into()], ..Default::default() };
        assert!(libpq_name_matches(&ip_cn, "10.0.0.5"));
        let ip_san = CertInfo {
            common_names: vec!["10.0.0.5".into()],
            ip_addresses: vec!["10.0.0.6".parse().unwrap()],
            ..Default::default()
        };
        assert!(!libpq_name_matches(&ip_san, "10.0.0.5"));
        assert!(libpq_name_matches(&ip_san, "10.0.0.6"));
    }
}
