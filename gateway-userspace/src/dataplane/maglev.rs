//! Maglev lookup tables (Eisenbud et al., NSDI 2016) with weights: pure code, so the disruption and weight
//! properties are unit-tested here rather than through packets.
//!
//! Each entry fills its preferred slots in permutation order; an entry with weight `w` takes a turn `w/max_w`
//! times per round, so its share of slots follows its weight. Entries are named by a stable string (the endpoint),
//! so a table rebuilt after one entry changes keeps most slots where they were.
use gateway_common::MAGLEV_TABLE_SIZE;

/// One candidate for the table: a backend id (0 = reject) and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Stable name that seeds the entry's permutation (e.g. `198.18.11.2:3000`).
    pub name: String,
    pub id: u32,
    pub weight: u64,
}

/// Builds the table. Entries with weight 0 get no slot. With no entry of positive weight, every slot is 0
/// (reject).
pub fn build(entries: &[Entry]) -> Vec<u32> {
    let m = MAGLEV_TABLE_SIZE as u64;
    let mut table = vec![0u32; MAGLEV_TABLE_SIZE];
    let live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() {
        return table;
    }
    let mut filled = vec![false; MAGLEV_TABLE_SIZE];
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|e| {
            let offset = fnv1a(e.name.as_bytes(), 0xcbf2_9ce4_8422_2325) % m;
            let skip = fnv1a(e.name.as_bytes(), 0x8422_2325_cbf2_9ce4) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_weight = live.iter().map(|e| e.weight).max().unwrap_or(1);
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut count = 0usize;
    while count < MAGLEV_TABLE_SIZE {
        for (i, entry) in live.iter().enumerate() {
            credit[i] += entry.weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let (offset, skip) = perms[i];
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while filled[slot] {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            filled[slot] = true;
            table[slot] = entry.id;
            next[i] += 1;
            count += 1;
            if count == MAGLEV_TABLE_SIZE {
                break;
            }
        }
    }
    table
}

/// FNV-1a, 64-bit: a fixed, documented hash so tables are identical across agent versions and restarts.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = seed;
    for b in bytes {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<Entry> {
        (1..=n)
            .map(|i| Entry {
                name: format!("198.18.11.{i}:3000"),
                id: i,
                weight: 1,
            })
            .collect()
    }

    fn share(table: &[u32], id: u32) -> f64 {
        table.iter().filter(|&&s| s == id).count() as f64 / table.len() as f64
    }

    #[test]
    fn equal_weights_share_evenly() {
        let table = build(&entries(4));
        for id in 1..=4 {
            let s = share(&table, id);
            assert!((s - 0.25).abs() < 0.01, "backend {id} got {s}");
        }
    }

    #[test]
    fn weights_are_honoured_and_zero_gets_nothing() {
        let e = vec![
            Entry {
                name: "a".into(),
                id: 1,
                weight: 70,
            },
            Entry {
                name: "b".into(),
                id: 2,
                weight: 30,
            },
            Entry {
                name: "c".into(),
                id: 3,
                weight: 0,
            },
        ];
        let table = build(&e);
        assert!((share(&table, 1) - 0.70).abs() < 0.01);
        assert!((share(&table, 2) - 0.30).abs() < 0.01);
        assert_eq!(share(&table, 3), 0.0);
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let before = build(&entries(10));
        let mut fewer = entries(10);
        fewer.remove(4);
        let after = build(&fewer);
        let moved =
            before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / before.len() as f64;
        // The removed backend's 10% must move; Maglev keeps the extra churn small.
        assert!((0.10..0.16).contains(&moved), "moved {moved}");
        // Slots that did not belong to the removed backend mostly stay.
        let kept = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 5 && b == a)
            .count() as f64;
        assert!(kept / (before.len() as f64 * 0.9) > 0.94);
    }

    #[test]
    fn no_live_entry_rejects_everything() {
        assert!(build(&[]).iter().all(|&s| s == 0));
        let zero = vec![Entry {
            name: "a".into(),
            id: 1,
            weight: 0,
        }];
        assert!(build(&zero).iter().all(|&s| s == 0));
    }

    #[test]
    fn tables_are_deterministic() {
        assert_eq!(build(&entries(7)), build(&entries(7)));
    }
}
