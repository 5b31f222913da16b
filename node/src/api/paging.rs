//! Pages of the client plane's listings (KV `List`, `ListObjects`): the page size a request
//! gets and the opaque cursors that continue a listing where its previous page ended.
//!
//! A cursor names the last entry of the page it came with (a tag, then the key in hex and,
//! for objects, the version), so each page is an independent read that starts strictly
//! after it: no state is kept between pages, and an entry present during the whole walk is
//! listed exactly once. Owns that format and its validation. Must not read data.

use tonic::Status;

/// Tag of a KV cursor.
const KV_TAG: char = 'k';
/// Tag of an object listing cursor.
const OBJECTS_TAG: char = 'o';

/// Entries one page may hold: the request's `limit`, where 0 or anything above the node's
/// `limits.list_page_max` means that maximum.
pub fn page_size(requested: u32, list_page_max: u32) -> usize {
    let max = list_page_max.max(1);
    (if requested == 0 { max } else { requested.min(max) }) as usize
}

/// The cursor continuing a KV listing after `key`.
pub fn kv_cursor(key: &str) -> String {
    format!("{KV_TAG}{}", hex(key.as_bytes()))
}

/// The key a KV cursor continues after; `None` for the first page. Refused unless it came
/// from a listing of `prefix`.
pub fn kv_after(cursor: &str, prefix: &str) -> Result<Option<String>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let key = cursor
        .strip_prefix(KV_TAG)
        .and_then(unhex)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad_cursor)?;
    if !key.starts_with(prefix) {
        return Err(bad_cursor());
    }
    Ok(Some(key))
}

/// The cursor continuing an object listing after version `version` of `key`.
pub fn objects_cursor(key: &str, version: u64) -> String {
    format!("{OBJECTS_TAG}{}.{version}", hex(key.as_bytes()))
}

/// The (key, version) an object listing cursor continues after; `None` for the first page.
/// A listing of latest versions goes on with the next key (version `u64::MAX`). Refused
/// unless it came from a listing of `prefix`.
pub fn objects_after(cursor: &str, prefix: &str, all_versions: bool) -> Result<Option<(String, u64)>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let (key, version) = cursor
        .strip_prefix(OBJECTS_TAG)
        .and_then(|c| c.split_once('.'))
        .and_then(|(k, v)| {
            let key = String::from_utf8(unhex(k)?).ok()?;
            Some((key, v.parse::<u64>().ok()?))
        })
        .ok_or_else(bad_cursor)?;
    if !key.starts_with(prefix) {
        return Err(bad_cursor());
    }
    Ok(Some((key, if all_versions { version } else { u64::MAX })))
}

fn bad_cursor() -> Status {
    Status::invalid_argument(
        "cursor is not one this listing returned: pass the previous page's next_cursor unchanged, with the same \
         prefix (or empty for the first page)",
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn page_size_is_the_request_capped_by_the_node() {
        assert_eq!(page_size(0, 1000), 1000);
        assert_eq!(page_size(5, 1000), 5);
        assert_eq!(page_size(5000, 1000), 1000);
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        for key in ["a", "p/ü/ß\u{1}", "x.y.z"] {
            assert_eq!(kv_after(&kv_cursor(key), "").unwrap().as_deref(), Some(key));
            let c = objects_cursor(key, 7);
            assert_eq!(objects_after(&c, "", true).unwrap(), Some((key.to_string(), 7)));
            assert_eq!(objects_after(&c, "", false).unwrap(), Some((key.to_string(), u64::MAX)));
        }
        assert_eq!(kv_after("", "p").unwrap(), None);
        assert_eq!(objects_after("", "p", true).unwrap(), None);
        for bad in ["zz", "k0", "kzz", "o61", "o61.x", &objects_cursor("a", 1)] {
            assert_eq!(
                kv_after(bad, "").unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
        assert!(objects_after(&kv_cursor("a"), "", true).is_err());
        // A cursor of another prefix would skip or repeat entries.
        assert!(kv_after(&kv_cursor("b/1"), "a/").is_err());
        assert!(objects_after(&objects_cursor("b/1", 1), "a/", true).is_err());
    }
}
