//! Pure helpers of the sampler: parsing `/proc/loadavg`, `/proc/stat` and `smartctl --json`
//! output, and turning counter deltas into rates. No I/O here, so every rule is unit-tested
//! with fixture strings.

use std::time::Duration;

/// Most SMART attributes taken from one `smartctl` answer (ATA tables have about 30).
pub const SMART_ATTRIBUTES_MAX: usize = 64;

/// The 1-minute load average, the first field of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    let v: f64 = text.split_whitespace().next()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Cumulative CPU time of all cores, in `/proc/stat` ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks not spent idle or waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// The aggregate `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal
/// (guest time is already counted in user and nice, so it is left out).
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// Fraction of CPU time spent busy between two `/proc/stat` readings, in [0, 1]; `None`
/// when no time passed or the counters went backwards.
pub fn busy_ratio(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    let busy = now.busy.checked_sub(prev.busy)?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// Bytes per second from two readings of a link's monotonic byte counter. `None` when there
/// is no earlier reading, when the counter went backwards (the link was forgotten and
/// counts afresh: the delta means nothing), or when no time passed.
pub fn rate_per_second(prev: Option<u64>, now: u64, elapsed: Duration) -> Option<f64> {
    if elapsed.is_zero() {
        return None;
    }
    let delta = now.checked_sub(prev?)?;
    Some(delta as f64 / elapsed.as_secs_f64())
}

/// Increase of a monotonic counter since the last reading (0 on the first one).
pub fn counter_delta(prev: Option<u64>, now: u64) -> u64 {
    prev.map_or(0, |p| now.saturating_sub(p))
}

/// SMART attributes from `smartctl --json -A DEVICE` output: `(series suffix, value)`, e.g.
/// `("5", 0.0)` for ATA attribute 5 (its raw value) or `("nvme_media_errors", 0.0)` for the
/// numeric fields of an NVMe health log. At most [`SMART_ATTRIBUTES_MAX`]. An answer
/// without either table (a device without SMART) gives an empty list; output that is not
/// JSON is an error.
pub fn parse_smartctl(json: &str) -> Result<Vec<(String, f64)>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("smartctl output is not JSON: {e}"))?;
    let mut out = Vec::new();
    if let Some(table) = v.pointer("/ata_smart_attributes/table").and_then(|t| t.as_array()) {
        for row in table {
            let id = row.get("id").and_then(|i| i.as_u64());
            let raw = row.pointer("/raw/value").and_then(|r| r.as_u64());
            if let (Some(id), Some(raw)) = (id, raw) {
                out.push((id.to_string(), raw as f64));
            }
        }
    }
    if let Some(log) = v.get("nvme_smart_health_information_log").and_then(|l| l.as_object()) {
        for (k, val) in log {
            // Only plain numbers: arrays (per-sensor temperatures) are left out.
            if let Some(n) = val.as_f64() {
                out.push((format!("nvme_{k}"), n));
            }
        }
    }
    out.truncate(SMART_ATTRIBUTES_MAX);
    Ok(out)
}

/// Major and minor numbers of a Linux device number (`st_dev`), glibc's encoding.
pub fn dev_major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_is_the_first_field() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/1234 5678\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("abc 1 2"), None);
    }

    #[test]
    fn proc_stat_counts_idle_and_iowait_as_not_busy() {
        let text = "cpu  100 10 50 800 40 0 0 0 7 0\ncpu0 50 5 25 400 20 0 0 0 0 0\nintr 1 2 3\n";
        let t = parse_proc_stat(text).unwrap();
        assert_eq!(t, CpuTimes { busy: 160, total: 1000 });
        let later = CpuTimes { busy: 260, total: 1400 };
        assert_eq!(busy_ratio(t, later), Some(0.25));
        assert_eq!(busy_ratio(t, t), None, "no time passed");
        assert_eq!(busy_ratio(later, t), None, "counters went backwards");
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn rates_only_within_one_connection() {
        let s = Duration::from_secs(2);
        assert_eq!(rate_per_second(Some(1000), 5000, s), Some(2000.0));
        assert_eq!(rate_per_second(None, 5000, s), None, "first reading");
        assert_eq!(rate_per_second(Some(9000), 5000, s), None, "went backwards");
        assert_eq!(rate_per_second(Some(1000), 5000, Duration::ZERO), None);
        assert_eq!(counter_delta(None, 5), 0);
        assert_eq!(counter_delta(Some(3), 5), 2);
        assert_eq!(counter_delta(Some(9), 5), 0);
    }

    /// Trimmed from real `smartctl 7.3 --json -A /dev/sda` output.
    const ATA: &str = r#"{
      "json_format_version": [1, 0],
      "smartctl": {"version": [7, 3], "exit_status": 0},
      "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
      "ata_smart_attributes": {
        "revision": 16,
        "table": [
          {"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "worst": 100, "thresh": 10,
           "flags": {"value": 51, "string": "PO--CK "}, "raw": {"value": 8, "string": "8"}},
          {"id": 9, "name": "Power_On_Hours", "value": 92, "worst": 92, "thresh": 0,
           "raw": {"value": 36011, "string": "36011"}},
          {"id": 194, "name": "Temperature_Celsius", "value": 64, "worst": 45, "thresh": 0,
           "raw": {"value": 163210035236, "string": "36 (Min/Max 19/38)"}},
          {"id": 197, "name": "Current_Pending_Sector", "raw": {"string": "no value"}}
        ]
      }
    }"#;

    #[test]
    fn smartctl_ata_table_gives_raw_values_by_id() {
        let a = parse_smartctl(ATA).unwrap();
        assert_eq!(
            a,
            vec![
                ("5".to_string(), 8.0),
                ("9".to_string(), 36011.0),
                ("194".to_string(), 163_210_035_236.0),
            ]
        );
    }

    #[test]
    fn smartctl_nvme_log_and_no_smart_and_garbage() {
        let nvme = r#"{"nvme_smart_health_information_log": {"critical_warning": 0,
            "temperature": 41, "media_errors": 2, "temperature_sensors": [41, 50]}}"#;
        let mut a = parse_smartctl(nvme).unwrap();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            a,
            vec![
                ("nvme_critical_warning".to_string(), 0.0),
                ("nvme_media_errors".to_string(), 2.0),
                ("nvme_temperature".to_string(), 41.0),
            ]
        );
        let none = r#"{"smartctl": {"exit_status": 2, "messages": [{"string": "Permission denied"}]}}"#;
        assert_eq!(parse_smartctl(none).unwrap(), vec![]);
        assert!(parse_smartctl("smartctl: command failed").is_err());
    }

    #[test]
    fn smartctl_answers_are_bounded() {
        let rows: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"id": {i}, "raw": {{"value": {i}}}}}"#))
            .collect();
        let json = format!(r#"{{"ata_smart_attributes": {{"table": [{}]}}}}"#, rows.join(","));
        assert_eq!(parse_smartctl(&json).unwrap().len(), SMART_ATTRIBUTES_MAX);
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // 8:1 (sda1) and 259:3 (an NVMe partition), as stat reports them.
        assert_eq!(dev_major_minor(0x801), (8, 1));
        assert_eq!(dev_major_minor((259 << 8) | 3), (259, 3));
        // makedev(8, 300): the minor's high bits sit above the major's.
        assert_eq!(dev_major_minor(44 | (8 << 8) | (256 << 12)), (8, 300));
    }
}
