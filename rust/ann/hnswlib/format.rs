//! The layout `HierarchicalNSW::saveIndex` writes (hnswlib >= 0.5), checked field by field
//! against the parameters the store built the index with, and every link against the element
//! count and the levels, as hnswlib's search would follow them.

/// What a cached index must be: tokens `start..start + count`, keys of `dim` float32, built
/// with `m` and `ef_construction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub start: u64,
    pub count: u64,
    pub dim: u32,
    pub m: u32,
    pub ef_construction: u32,
}

/// offsetLevel0, max_elements, cur_element_count, size_data_per_element, label_offset,
/// offsetData (u64 each), maxlevel (i32), enterpoint_node (u32), maxM, maxM0, M (u64),
/// mult (f64), ef_construction (u64).
const HEADER: usize = 96;
/// Levels are drawn as -ln(u) / ln(M): beyond this the file was not written by hnswlib.
const MAX_LEVEL: u64 = 64;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// One link list at `at`: `[count: u16, deleted: u8, 0: u8][ids: u32 x cap]`. Returns its ids.
fn links(b: &[u8], at: usize, cap: u64, count: u64, what: &str) -> Result<Vec<u32>, String> {
    let n = u16_at(b, at) as u64;
    if b[at + 2] != 0 || b[at + 3] != 0 {
        return Err(format!(
            "{what}: flag bytes set (a deleted element; the store deletes none)"
        ));
    }
    if n > cap {
        return Err(format!("{what}: {n} links, more than the {cap} allowed"));
    }
    let ids: Vec<u32> = (0..n as usize).map(|j| u32_at(b, at + 4 + 4 * j)).collect();
    if let Some(bad) = ids.iter().find(|&&id| id as u64 >= count) {
        return Err(format!("{what}: link to element {bad}, of {count}"));
    }
    Ok(ids)
}

/// Checks an hnswlib index file's bytes against `p`; the error says what is wrong.
pub fn check(b: &[u8], p: &Params) -> Result<(), String> {
    if b.len() < HEADER {
        return Err(format!(
            "{} bytes, less than hnswlib's {HEADER}-byte header",
            b.len()
        ));
    }
    let n = p.count;
    if n == 0 || n > u32::MAX as u64 {
        return Err(format!("{n} elements: not an index the store builds"));
    }
    // hnswlib caps M at 10000 and raises ef_construction to at least M.
    let m = (p.m as u64).min(10_000);
    let (m0, dim) = (2 * m, p.dim as u64);
    let links0 = 4 * m0 + 4;
    let per = links0 + 4 * dim + 8;
    let links_up = 4 * m + 4;
    let want = [
        ("offsetLevel0", 0, 0),
        ("max_elements", 8, n),
        ("cur_element_count", 16, n),
        ("size_data_per_element", 24, per),
        ("label_offset", 32, links0 + 4 * dim),
        ("offsetData", 40, links0),
        ("maxM", 56, m),
        ("maxM0", 64, m0),
        ("M", 72, m),
        ("ef_construction", 88, (p.ef_construction as u64).max(m)),
    ];
    for (name, at, expect) in want {
        let got = u64_at(b, at);
        if got != expect {
            return Err(format!("header field {name} is {got}, expected {expect}"));
        }
    }
    let mult = f64::from_le_bytes(b[80..88].try_into().unwrap());
    if !(mult.is_finite() && mult > 0.0) {
        return Err(format!("header field mult is {mult}"));
    }
    let max_level = i32::from_le_bytes(b[48..52].try_into().unwrap());
    if max_level < 0 || max_level as u64 > MAX_LEVEL {
        return Err(format!("top level {max_level}, outside 0..={MAX_LEVEL}"));
    }
    let entry = u32_at(b, 52) as u64;
    if entry >= n {
        return Err(format!("entry point {entry}, of {n} elements"));
    }
    let level0_end = n
        .checked_mul(per)
        .and_then(|x| x.checked_add(HEADER as u64))
        .filter(|&end| end <= b.len() as u64)
        .ok_or_else(|| format!("{} bytes, too short for {n} elements of {per}", b.len()))?
        as usize;
    let (n_us, per_us) = (n as usize, per as usize);
    // Labels: exactly the span's token ids, each once.
    let mut seen = vec![false; n_us];
    for i in 0..n_us {
        let base = HEADER + i * per_us;
        let label = u64_at(b, base + (links0 + 4 * dim) as usize);
        match label.checked_sub(p.start).filter(|&x| x < n) {
            Some(x) if !seen[x as usize] => seen[x as usize] = true,
            _ => {
                return Err(format!(
                    "element {i} has label {label}, not a new id of the span"
                ))
            }
        }
        links(b, base, m0, n, &format!("element {i} level 0"))?;
    }
    // Upper levels: per element a u32 size, then `level` link lists of `links_up` bytes.
    let mut levels = vec![0u32; n_us];
    let mut lists = vec![0usize; n_us];
    let mut at = level0_end;
    for i in 0..n_us {
        if b.len() - at < 4 {
            return Err(format!("ends inside the upper links of element {i}"));
        }
        let size = u32_at(b, at) as u64;
        at += 4;
        let level = size / links_up;
        if !size.is_multiple_of(links_up) || level > max_level as u64 {
            return Err(format!(
                "element {i}: {size} bytes of upper links (top level {max_level})"
            ));
        }
        if ((b.len() - at) as u64) < size {
            return Err(format!("ends inside the upper links of element {i}"));
        }
        (levels[i], lists[i]) = (level as u32, at);
        at += size as usize;
    }
    if at != b.len() {
        return Err(format!("{} bytes after the last element", b.len() - at));
    }
    if levels[entry as usize] != max_level as u32 {
        return Err(format!(
            "entry point {entry} has level {}, the index's top level is {max_level}",
            levels[entry as usize]
        ));
    }
    for i in 0..n_us {
        for l in 1..=levels[i] as usize {
            let what = format!("element {i} level {l}");
            let list = lists[i] + (l - 1) * links_up as usize;
            for id in links(b, list, m, n, &what)? {
                // A search at level l reads the level-l list of every neighbour it moves to.
                if (levels[id as usize] as usize) < l {
                    return Err(format!(
                        "{what}: link to element {id}, which has no level {l}"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        start: 10,
        count: 2,
        dim: 1,
        m: 2,
        ef_construction: 8,
    };

    /// Two elements linked to each other; element 0 also on level 1 (the entry point).
    fn file() -> Vec<u8> {
        let (m, m0) = (2u64, 4u64);
        let links0 = 4 * m0 + 4;
        let per = links0 + 4 + 8;
        let mut b = Vec::new();
        for x in [0, 2, 2, per, links0 + 4, links0] {
            b.extend(u64::to_le_bytes(x));
        }
        b.extend(1i32.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        for x in [m, m0, m] {
            b.extend(u64::to_le_bytes(x));
        }
        b.extend((1.0 / 2f64.ln()).to_le_bytes());
        b.extend(8u64.to_le_bytes());
        for (other, label) in [(1u32, 10u64), (0, 11)] {
            b.extend(1u32.to_le_bytes());
            b.extend(other.to_le_bytes());
            b.extend([0u8; 12]);
            b.extend(1f32.to_le_bytes());
            b.extend(label.to_le_bytes());
        }
        b.extend(12u32.to_le_bytes()); // element 0: one upper list, empty
        b.extend([0u8; 12]);
        b.extend(0u32.to_le_bytes()); // element 1: level 0 only
        b
    }

    #[test]
    fn accepts_a_whole_file_and_refuses_each_damage() {
        let good = file();
        assert_eq!(check(&good, &P), Ok(()));
        const UPPER: usize = HEADER + 2 * 32 + 4; // element 0's level-1 list
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 9] = [
            ("entry point", |b| b[52] = 2),
            ("entry point 1 has level 0", |b| b[52] = 1),
            ("link to element 7", |b| b[HEADER + 4] = 7),
            ("9 links", |b| b[HEADER] = 9),
            ("flag bytes", |b| b[HEADER + 2] = 1),
            ("label 10", |b| b[HEADER + 56] = 10),
            ("which has no level 1", |b| {
                b[UPPER] = 1;
                b[UPPER + 4] = 1;
            }),
            ("after the last element", |b| b.push(0)),
            ("header field M", |b| b[72] = 3),
        ];
        for (what, damage) in damages {
            let mut b = good.clone();
            damage(&mut b);
            let err = check(&b, &P).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
        }
        for cut in [0, 95, 96, good.len() - 1] {
            assert!(check(&good[..cut], &P).is_err(), "cut at {cut}");
        }
    }
}
