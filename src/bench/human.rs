//! Figures the way a person reads them, for the bench's summary and progress lines.

use std::time::Duration;

/// A duration the way a person reads it: `357 µs`, `4.30 ms`, `1.25 s`.
pub fn human_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A count or rate: `12,345` or `12,345.6` below 100 with one decimal.
pub fn human_number(value: f64) -> String {
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.1}");
    }
    let whole = value.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if whole < 0 { format!("-{grouped}") } else { grouped }
}

/// Bytes in KiB, MiB or GiB.
pub fn human_bytes(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes < 1024.0 * 1024.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else if bytes < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", bytes / 1024.0 / 1024.0 / 1024.0)
    }
}
