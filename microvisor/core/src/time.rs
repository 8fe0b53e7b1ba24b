//! Time arithmetic: Xen's TSC-to-nanoseconds scale (`vcpu_time_info`'s
//! `tsc_to_system_mul` and `tsc_shift`), the TSC frequency from a
//! calibration, and the CMOS real-time clock's date as seconds since the
//! Unix epoch. The hypervisor's `time` module reads the counters and the
//! RTC registers and writes what guests see; the arithmetic is here.

/// Xen's scale for a counter of `hz`: `(mul, shift)` with
/// `ns = ((delta << shift) * mul) >> 32` (a negative shift shifts right),
/// `mul` below 2^32. The shift brings the frequency into (1 GHz, 4 GHz],
/// so `mul` keeps at least 30 significant bits. `hz` 0 counts as 1.
pub fn scale_for(hz: u64) -> (u32, i8) {
    let mut shift: i8 = 0;
    let mut f = hz.max(1);
    while f <= 1_000_000_000 {
        f <<= 1;
        shift += 1;
    }
    while f > 4_000_000_000 {
        f >>= 1;
        shift -= 1;
    }
    (((1_000_000_000u128 << 32) / u128::from(f)) as u32, shift)
}

/// Nanoseconds in `delta` counter ticks at scale `(mul, shift)`
/// ([`scale_for`]), as a guest computes them from its `vcpu_time_info`.
#[inline]
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta << shift
    } else {
        delta >> (-i32::from(shift))
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// A scale's shift ([`scale_for`]) as two shifts, left then right, one of
/// them 0, for [`scale_delta_split`].
pub fn split_shift(shift: i8) -> (u32, u32) {
    if shift >= 0 {
        (shift as u32, 0)
    } else {
        (0, (-i32::from(shift)) as u32)
    }
}

/// [`scale_delta`] with the shift split ([`split_shift`]): the same
/// nanoseconds without a branch on the shift's sign (the hypervisor's own
/// clock, read a few times on every switch). Shifts are below 64.
#[inline(always)]
pub fn scale_delta_split(delta: u64, mul: u32, left: u32, right: u32) -> u64 {
    let d = delta.wrapping_shl(left).wrapping_shr(right);
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// The counter frequency in Hz from `ticks` counted over `elapsed_ns`
/// (0 ns counts as 1).
pub fn hz_from(ticks: u64, elapsed_ns: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000 / u128::from(elapsed_ns.max(1))) as u64
}

/// The CMOS RTC's date and time registers as read: seconds (0x00),
/// minutes (0x02), hours (0x04, the PM bit masked off), day (0x07), month
/// (0x08), year in the century (0x09), in BCD unless the status B register
/// says binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcFields {
    pub sec: u8,
    pub min: u8,
    pub hour: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    /// Status register B's bit 2 is clear: the fields are BCD.
    pub bcd: bool,
}

/// Seconds since 1970-01-01 00:00 UTC of an RTC reading (years 2000-2099),
/// or `None` when the fields are not a date (no RTC, or garbage).
pub fn rtc_to_unix(r: RtcFields) -> Option<u64> {
    let conv = |v: u8| -> Option<u64> {
        if r.bcd {
            let (hi, lo) = (v >> 4, v & 0x0f);
            (hi <= 9 && lo <= 9).then_some(u64::from(hi) * 10 + u64::from(lo))
        } else {
            Some(u64::from(v))
        }
    };
    let (s, m, h) = (conv(r.sec)?, conv(r.min)?, conv(r.hour)?);
    let (d, mo, y) = (conv(r.day)?, conv(r.month)?, conv(r.year)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || y > 99 || h > 23 || m > 59 || s > 59 {
        return None;
    }
    Some(days_from_civil(2000 + y, mo, d) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days from 1970-01-01 to year `y` (at least 1970), month `m` (1-12), day
/// `d` of the proleptic Gregorian calendar.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    // Years counted from March, so the leap day ends a year.
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy / 400;
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_1ghz_counter_is_nanoseconds() {
        let (mul, shift) = scale_for(1_000_000_000);
        assert_eq!(scale_delta(123_456_789, mul, shift), 123_456_789);
        assert_eq!(shift, 1);
        assert_eq!(mul, 1 << 31);
    }

    #[test]
    fn fast_counters_shift_right() {
        let (mul, shift) = scale_for(10_000_000_000);
        assert!(shift < 0);
        assert_eq!(scale_delta(10_000_000_000, mul, shift), 999_999_999);
    }

    #[test]
    fn calibration() {
        assert_eq!(hz_from(25_000_000, 10_000_000), 2_500_000_000);
        assert_eq!(hz_from(5, 0), 5_000_000_000);
    }

    #[test]
    fn rtc_dates() {
        let r = |sec, min, hour, day, month, year, bcd| RtcFields {
            sec,
            min,
            hour,
            day,
            month,
            year,
            bcd,
        };
        // 2000-01-01 00:00:00.
        assert_eq!(rtc_to_unix(r(0, 0, 0, 1, 1, 0, false)), Some(946_684_800));
        // 2026-12-06 19:29:34, in BCD and in binary.
        assert_eq!(
            rtc_to_unix(r(0x34, 0x29, 0x19, 0x06, 0x12, 0x26, true)),
            Some(1_796_585_374)
        );
        assert_eq!(
            rtc_to_unix(r(34, 29, 19, 6, 12, 26, false)),
            Some(1_796_585_374)
        );
        // 2024-02-29 (a leap day) 12:00:00.
        assert_eq!(
            rtc_to_unix(r(0, 0, 12, 29, 2, 24, false)),
            Some(1_709_208_000)
        );
        // Not dates: month 0, day 0, a BCD nibble above 9, an absent RTC.
        assert_eq!(rtc_to_unix(r(0, 0, 0, 1, 0, 0, false)), None);
        assert_eq!(rtc_to_unix(r(0, 0, 0, 0, 1, 0, false)), None);
        assert_eq!(rtc_to_unix(r(0x0a, 0, 0, 1, 1, 0, true)), None);
        assert_eq!(
            rtc_to_unix(r(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, true)),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// For any counter from 1 MHz to 20 GHz the scale is exact to within
        /// one part per million plus a nanosecond over an hour's ticks.
        #[test]
        fn scale_is_accurate(hz in 1_000_000u64..20_000_000_000, frac in 0u64..=1000) {
            let (mul, shift) = scale_for(hz);
            let delta = hz.saturating_mul(3600) / 1000 * frac;
            let exact = (u128::from(delta) * 1_000_000_000 / u128::from(hz)) as u64;
            let got = scale_delta(delta, mul, shift);
            prop_assert!(got.abs_diff(exact) <= exact / 1_000_000 + 1, "{hz} Hz, {delta}: {got} vs {exact}");
        }

        /// The split shift gives what the guest's formula gives, for every
        /// shift a scale can have and any counter delta.
        #[test]
        fn split_scale_is_scale_delta(hz in 1_000_000u64..20_000_000_000, shift in -40i8..=40, delta in any::<u64>()) {
            let (mul, _) = scale_for(hz);
            let (left, right) = split_shift(shift);
            prop_assert_eq!(scale_delta_split(delta, mul, left, right), scale_delta(delta, mul, shift));
        }

        /// Any RTC bytes give a date or None, never a panic.
        #[test]
        fn rtc_never_panics(b in any::<[u8; 6]>(), bcd in any::<bool>()) {
            let _ = rtc_to_unix(RtcFields { sec: b[0], min: b[1], hour: b[2], day: b[3], month: b[4], year: b[5], bcd });
        }
    }
}
