//! Consistent-hashing load balancers, with Envoy's hash functions (checked against Envoy's test
//! vectors) and construction: RING_HASH (Ketama-style ring of `address_i` hashes, xxHash64 or
//! MurmurHash2, scaled between the ring-size bounds by normalized weight) and MAGLEV (Envoy's
//! weighted permutation table, filled from the hosts sorted by hash key). The differential
//! suite (`tests/differential/lb.rs`) checks that Envoy 1.40 and remora choose the same host
//! for every key.

use super::host::Host;
use crate::model::cluster::LbPolicy;
use std::sync::Arc;

/// A consistent-hash table over a list of hosts; entries are indexes into that list.
#[derive(Debug)]
pub enum HashTable {
    /// Sorted (hash, host index).
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
}

/// Envoy's `MurmurHash::STD_HASH_SEED`.
const MURMUR_SEED: u64 = 0xc70f_6907;

/// xxHash64 with seed 0, Envoy's `HashUtil::xxHash64`.
#[inline]
pub fn xx(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// Envoy's `MurmurHash::murmurHash2` (64-bit MurmurHash64A).
pub fn murmur2(key: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let len = key.len();
    let mut h = seed ^ (len as u64).wrapping_mul(M);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut k = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// What a host hashes as: its address (`ip:port`), or its hostname.
fn key(host: &Host, use_hostname: bool) -> String {
    if use_hostname && !host.hostname.is_empty() {
        host.hostname.to_string()
    } else {
        host.address.to_string()
    }
}

impl HashTable {
    /// The table for `hosts` under a hashing policy.
    pub fn build(policy: &LbPolicy, hosts: &[Arc<Host>]) -> Self {
        match *policy {
            LbPolicy::Maglev {
                table_size,
                use_hostname,
            } => HashTable::Maglev(maglev(hosts, table_size, use_hostname)),
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
                murmur,
                use_hostname,
            } => HashTable::Ring(ring(
                hosts,
                min_ring_size,
                max_ring_size,
                murmur,
                use_hostname,
            )),
            _ => HashTable::Ring(Vec::new()),
        }
    }

    /// The host index for a hash; `attempt` > 0 (a retry avoiding previous hosts) moves
    /// along the ring, or perturbs the Maglev lookup, as Envoy does.
    pub fn pick(&self, hash: u64, attempt: u32) -> Option<usize> {
        match self {
            HashTable::Ring(ring) => {
                if ring.is_empty() {
                    return None;
                }
                let mut i = ring.partition_point(|(h, _)| *h < hash);
                if i == ring.len() {
                    i = 0;
                }
                if attempt > 0 {
                    i = (i + attempt as usize) % ring.len();
                }
                Some(ring[i].1 as usize)
            }
            HashTable::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                let mut h = hash;
                if attempt > 0 {
                    h ^= (!0u64).wrapping_sub(u64::from(attempt)).wrapping_add(1);
                }
                Some(table[(h % table.len() as u64) as usize] as usize)
            }
        }
    }
}

/// Host weights normalized to sum to 1.
fn normalized(hosts: &[Arc<Host>]) -> Vec<f64> {
    let total: f64 = hosts.iter().map(|h| f64::from(h.weight.max(1))).sum();
    hosts
        .iter()
        .map(|h| f64::from(h.weight.max(1)) / total)
        .collect()
}

fn ring(
    hosts: &[Arc<Host>],
    min_ring_size: u64,
    max_ring_size: u64,
    murmur: bool,
    use_hostname: bool,
) -> Vec<(u64, u32)> {
    if hosts.is_empty() {
        return Vec::new();
    }
    let weights = normalized(hosts);
    let min_weight = weights.iter().copied().fold(1.0, f64::min);
    // Scale so that the lightest host gets a whole number of entries, within the bounds.
    let scale = ((min_weight * min_ring_size as f64).ceil() / min_weight).min(max_ring_size as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let mut current = 0.0;
    let mut target = 0.0;
    for (idx, (h, w)) in hosts.iter().zip(&weights).enumerate() {
        let base = key(h, use_hostname);
        target += scale * w;
        let mut i: u64 = 0;
        while current < target {
            let k = format!("{base}_{i}");
            let hash = if murmur {
                murmur2(k.as_bytes(), MURMUR_SEED)
            } else {
                xx(k.as_bytes())
            };
            ring.push((hash, idx as u32));
            i += 1;
            current += 1.0;
        }
    }
    ring.sort_unstable_by_key(|(h, _)| *h);
    ring
}

fn maglev(hosts: &[Arc<Host>], table_size: u64, use_hostname: bool) -> Vec<u32> {
    if hosts.is_empty() {
        return Vec::new();
    }
    struct Entry {
        idx: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    let weights = normalized(hosts);
    let max_weight = weights.iter().copied().fold(0.0, f64::max);
    // Envoy fills the table from the hosts sorted by their hash key (so that the table does not
    // depend on the order the hosts came in).
    let mut keyed: Vec<(String, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (key(h, use_hostname), i))
        .collect();
    keyed.sort();
    let mut entries: Vec<Entry> = keyed
        .into_iter()
        .map(|(k, i)| {
            let w = &weights[i];
            Entry {
                idx: i as u32,
                offset: xx(k.as_bytes()) % table_size,
                skip: xxhash_rust::xxh64::xxh64(k.as_bytes(), 1) % (table_size - 1) + 1,
                weight: *w,
                target: 0.0,
                next: 0,
            }
        })
        .collect();
    let mut table = vec![u32::MAX; table_size as usize];
    let mut filled: u64 = 0;
    let mut iteration: u64 = 1;
    while filled < table_size {
        for e in entries.iter_mut() {
            if filled >= table_size {
                break;
            }
            // A host of the largest weight takes a slot every iteration; one of a third of it,
            // every third iteration.
            if (iteration as f64) * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            let mut c = (e.offset + e.skip * e.next) % table_size;
            while table[c as usize] != u32::MAX {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % table_size;
            }
            table[c as usize] = e.idx;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::{Health, Locality};

    fn hosts(n: u16, weight: impl Fn(u16) -> u32) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                Host::new(
                    format!("10.0.0.{i}:80").parse().unwrap(),
                    "h".into(),
                    weight(i),
                    Health::Healthy,
                    Locality::default(),
                    0,
                )
            })
            .collect()
    }

    fn ring_policy() -> LbPolicy {
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 << 20,
            murmur: false,
            use_hostname: false,
        }
    }

    #[test]
    fn hashes_match_envoys() {
        // Envoy's own expectations (test/common/common/hash_test.cc).
        assert_eq!(xx(b"foo"), 3728699739546630719);
        assert_eq!(xx(b"foo\nbar"), 8917841378505826757);
        assert_eq!(xx(b""), 17241709254077376921);
        assert_eq!(murmur2(b"foo", MURMUR_SEED), 9631199822919835226);
        assert_eq!(murmur2(b"bar", MURMUR_SEED), 11474628671133349555);
        assert_eq!(murmur2(b"foo\nbar", MURMUR_SEED), 16306510975912980159);
        assert_eq!(murmur2(b"lyft", MURMUR_SEED), 12847078931730529320);
        assert_eq!(murmur2(b"", MURMUR_SEED), 6142509188972423790);
    }

    #[test]
    fn ring_size_and_weights() {
        let hs = hosts(3, |_| 1);
        let HashTable::Ring(r) = HashTable::build(&ring_policy(), &hs) else {
            panic!()
        };
        assert_eq!(r.len(), 1026, "ceil(1/3 × 1024) × 3");
        assert!(r.windows(2).all(|w| w[0].0 <= w[1].0));
        // A host of weight 2 gets twice the entries (the lighter one its whole share of 1024).
        let hs = hosts(2, |i| if i == 0 { 2 } else { 1 });
        let HashTable::Ring(r) = HashTable::build(&ring_policy(), &hs) else {
            panic!()
        };
        let n0 = r.iter().filter(|e| e.1 == 0).count();
        let n1 = r.iter().filter(|e| e.1 == 1).count();
        assert_eq!((n0, n1), (684, 342));
    }

    #[test]
    fn same_key_same_host_and_little_movement() {
        for policy in [
            ring_policy(),
            LbPolicy::Maglev {
                table_size: 65537,
                use_hostname: false,
            },
        ] {
            let four = hosts(4, |_| 1);
            let t4 = HashTable::build(&policy, &four);
            let three = &four[..3];
            let t3 = HashTable::build(&policy, three);
            // Ring hash: each remaining host also gets more ring points (Envoy's ring keeps its
            // size), which takes some keys from the others; Maglev moves almost none.
            let allowed = if matches!(policy, LbPolicy::Maglev { .. }) {
                200
            } else {
                800
            };
            let mut moved = 0;
            let mut counts = [0usize; 4];
            for k in 0..4000u64 {
                let h = xx(&k.to_le_bytes());
                let a = t4.pick(h, 0).unwrap();
                assert_eq!(a, t4.pick(h, 0).unwrap(), "stable");
                counts[a] += 1;
                let b = t3.pick(h, 0).unwrap();
                // Keys on the remaining hosts stay where they were (up to Maglev's small churn).
                if a < 3 && a != b {
                    moved += 1;
                }
            }
            assert!(moved < allowed, "{policy:?}: {moved} keys moved");
            assert!(counts.iter().all(|c| (700..1300).contains(c)), "{counts:?}");
        }
    }

    #[test]
    fn maglev_table_does_not_depend_on_host_order() {
        // Envoy fills the table from the hosts sorted by hash key; "10.0.0.10:80" sorts before
        // "10.0.0.2:80".
        let policy = LbPolicy::Maglev {
            table_size: 307,
            use_hostname: false,
        };
        let hs = hosts(12, |i| u32::from(i % 4) + 1);
        let mut rev = hs.clone();
        rev.reverse();
        let (a, b) = (
            HashTable::build(&policy, &hs),
            HashTable::build(&policy, &rev),
        );
        for k in 0..2000u64 {
            let h = xx(&k.to_le_bytes());
            let (i, j) = (a.pick(h, 0).unwrap(), b.pick(h, 0).unwrap());
            assert_eq!(hs[i].address, rev[j].address);
        }
    }

    #[test]
    fn maglev_weights() {
        let hs = hosts(2, |i| if i == 0 { 3 } else { 1 });
        let t = HashTable::build(
            &LbPolicy::Maglev {
                table_size: 65537,
                use_hostname: false,
            },
            &hs,
        );
        let HashTable::Maglev(table) = &t else {
            panic!()
        };
        let heavy = table.iter().filter(|i| **i == 0).count() as f64 / table.len() as f64;
        assert!((0.72..0.78).contains(&heavy), "{heavy}");
    }

    #[test]
    fn a_retry_attempt_usually_lands_on_another_host() {
        for policy in [
            ring_policy(),
            LbPolicy::Maglev {
                table_size: 65537,
                use_hostname: false,
            },
        ] {
            let t = HashTable::build(&policy, &hosts(4, |_| 1));
            let moved = (0..1000u64)
                .map(|k| xx(&k.to_le_bytes()))
                .filter(|h| t.pick(*h, 1) != t.pick(*h, 0))
                .count();
            // Four equal hosts: the next ring entry belongs to another host about three times
            // in four; the perturbed Maglev slot (all bits of the hash flipped) more often.
            assert!(moved > 600, "{policy:?}: {moved} of 1000 moved");
        }
    }
}
