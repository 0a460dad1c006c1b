//! RFC 3339 timestamps in UTC with microseconds, formatted without allocating.

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a Unix time in nanoseconds.
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    #[must_use]
    pub fn from_unix_ns(unix_ns: i64) -> Self {
        thread_local! {
            /// The last second formatted: records come in bursts within one second.
            static LAST: std::cell::Cell<(i64, Rfc3339)> =
                const { std::cell::Cell::new((i64::MIN, Rfc3339(*b"0000-00-00T00:00:00.000000Z"))) };
        }
        let micros = unix_ns.div_euclid(1_000);
        let secs = micros.div_euclid(1_000_000);
        let frac = micros.rem_euclid(1_000_000);
        let (last_secs, mut out) = LAST.get();
        if last_secs != secs {
            out = Self::whole_second(secs);
            LAST.set((secs, out));
        }
        let mut frac = frac;
        for i in (20..26).rev() {
            // A decimal digit always fits in a byte.
            out.0[i] = b'0' + u8::try_from(frac % 10).unwrap_or(0);
            frac /= 10;
        }
        out
    }

    /// `YYYY-MM-DDTHH:MM:SS.000000Z` for a Unix time in seconds.
    fn whole_second(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (0..width).rev() {
                // A digit always fits in a byte.
                out[at + i] = b'0' + u8::try_from(v.rem_euclid(10)).unwrap_or(0);
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, sod / 3600);
        put(14, 2, sod / 60 % 60);
        put(17, 2, sod % 60);
        Self(out)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        // SAFETY: only ASCII digits and the punctuation above are ever stored.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_795_490_710_123_456_789, "2026-11-24T03:25:10.123456Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999Z"),
            (-1_000, "1969-12-31T23:59:59.999999Z"),
        ];
        for (ns, want) in cases {
            assert_eq!(Rfc3339::from_unix_ns(ns).as_str(), want, "{ns}");
        }
    }
}
