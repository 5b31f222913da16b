//! Damage to encoded bytes, for the decoder property tests (`*_props.rs`): bit flips,
//! truncation, extension, and overwrites with the byte strings a decoder's length fields look
//! like at their worst. One mutator for every decoder; each test picks its overwrites.

use proptest::prelude::*;

/// One change to a valid encoding.
#[derive(Debug, Clone)]
pub(crate) enum Damage {
    FlipBit(usize, u8),
    Truncate(usize),
    Extend(Vec<u8>),
    /// Bytes written over the encoding (wholly inside it when it is long enough).
    Overwrite(usize, Vec<u8>),
}

/// Any damage; overwrites are drawn from `overwrites`.
pub(crate) fn arb_damage(overwrites: impl Strategy<Value = Vec<u8>> + 'static) -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(a, b)| Damage::FlipBit(a, b)),
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Extend),
        (any::<usize>(), overwrites).prop_map(|(a, b)| Damage::Overwrite(a, b)),
    ]
}

/// `b` with `d` applied (positions taken modulo the length; nothing to damage in an empty
/// input but by extension).
pub(crate) fn damage(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::FlipBit(at, bit) if !b.is_empty() => {
            let at = at % b.len();
            b[at] ^= 1 << bit;
        }
        Damage::Truncate(at) if !b.is_empty() => b.truncate(at % b.len()),
        Damage::Extend(more) => b.extend_from_slice(more),
        Damage::Overwrite(at, x) if !b.is_empty() => {
            let at = at % (b.len().saturating_sub(x.len()) + 1);
            for (y, v) in b[at..].iter_mut().zip(x) {
                *y = *v;
            }
        }
        _ => {}
    }
    b
}
