//! Reader for Go's `pclntab` (the runtime's function table), which survives `-s -w` stripping.
//!
//! Layout of Go 1.18+ (magic `0xfffffff0`; 1.20+ `0xfffffff1`, same layout), from
//! `runtime/symtab.go`: a `pcHeader` (magic u32, two pad bytes, minLC u8, ptrSize u8, then
//! `nfunc`, `nfiles`, `textStart`, `funcnameOffset`, `cuOffset`, `filetabOffset`, `pctabOffset`,
//! `pclnOffset`, each pointer-sized); at `pclnOffset` the function table: `nfunc + 1` pairs of
//! u32 `(entryOff, funcOff)`, entry offsets relative to `textStart`, the last pair marking the end
//! of the text; at `pclnOffset + funcOff` each function's `_func`, whose first two fields are
//! `entryOff u32` and `nameOff i32` (into the NUL-terminated names at `funcnameOffset`).

use super::GoBinError;

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;

/// One function of the table: its name and `[entry, end)` as virtual addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PclnFunc {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

/// A parsed table header; functions are decoded on demand.
pub struct Pclntab<'a> {
    data: &'a [u8],
    ptr_size: usize,
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    pcln: usize,
}

impl<'a> Pclntab<'a> {
    /// Parses the header. `text_fallback` is used as the text base when the header's
    /// `textStart` is zero (position-independent executables carry it as a relocation).
    pub fn parse(data: &'a [u8], text_fallback: u64) -> Result<Self, GoBinError> {
        let magic = u32_at(data, 0).ok_or(GoBinError::Pclntab("truncated header"))?;
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return Err(GoBinError::Pclntab("unsupported pclntab version (Go 1.18 or later is needed)"));
        }
        let ptr_size = *data.get(7).ok_or(GoBinError::Pclntab("truncated header"))? as usize;
        if ptr_size != 8 && ptr_size != 4 {
            return Err(GoBinError::Pclntab("bad pointer size"));
        }
        let word = |i: usize| -> Result<u64, GoBinError> {
            let off = 8 + i * ptr_size;
            let v = if ptr_size == 8 { u64_at(data, off) } else { u32_at(data, off).map(u64::from) };
            v.ok_or(GoBinError::Pclntab("truncated header"))
        };
        let nfunc = word(0)? as usize;
        let mut text_start = word(2)?;
        if text_start == 0 {
            text_start = text_fallback;
        }
        let funcname = word(3)? as usize;
        let pcln = word(7)? as usize;
        if funcname >= data.len() || pcln >= data.len() || nfunc > data.len() / 8 {
            return Err(GoBinError::Pclntab("header offsets out of range"));
        }
        Ok(Self { data, ptr_size, nfunc, text_start, funcname, pcln })
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    pub fn ptr_size(&self) -> usize {
        self.ptr_size
    }

    /// The `i`th function of the table.
    pub fn func(&self, i: usize) -> Option<PclnFunc> {
        if i >= self.nfunc {
            return None;
        }
        let ft = self.pcln + i * 8;
        let entry_off = u32_at(self.data, ft)?;
        let func_off = u32_at(self.data, ft + 4)? as usize;
        let end_off = u32_at(self.data, ft + 8)?;
        let f = self.pcln + func_off;
        let name_off = u32_at(self.data, f + 4)? as i32;
        if name_off < 0 {
            return None;
        }
        let start = self.funcname + name_off as usize;
        let rest = self.data.get(start..)?;
        let nul = rest.iter().position(|b| *b == 0)?;
        let name = String::from_utf8_lossy(&rest[..nul]).into_owned();
        Some(PclnFunc {
            name,
            entry: self.text_start + u64::from(entry_off),
            end: self.text_start + u64::from(end_off),
        })
    }

    /// Every function of the table.
    pub fn funcs(&self) -> impl Iterator<Item = PclnFunc> + '_ {
        (0..self.nfunc).filter_map(|i| self.func(i))
    }
}

pub(super) fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

pub(super) fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built table with two functions, checked field by field.
    #[test]
    fn parses_a_synthetic_table() {
        let mut d = vec![0u8; 8 + 8 * 8];
        d[..4].copy_from_slice(&MAGIC_120.to_le_bytes());
        d[6] = 1;
        d[7] = 8;
        let names = d.len();
        d.extend_from_slice(b"main.a\0main.b\0");
        let pcln = d.len();
        // functab: (0, f0) (0x40, f1) (0x80, end)
        let f0 = 3 * 8;
        let f1 = f0 + 8;
        for (e, f) in [(0u32, f0 as u32), (0x40, f1 as u32), (0x80, 0)] {
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&f.to_le_bytes());
        }
        for (e, n) in [(0u32, 0u32), (0x40, 7)] {
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&n.to_le_bytes());
        }
        let w = |d: &mut Vec<u8>, i: usize, v: u64| d[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        w(&mut d, 0, 2);
        w(&mut d, 2, 0x401000);
        w(&mut d, 3, names as u64);
        w(&mut d, 7, pcln as u64);
        let t = Pclntab::parse(&d, 0).unwrap();
        let f: Vec<_> = t.funcs().collect();
        assert_eq!(
            f,
            vec![
                PclnFunc { name: "main.a".into(), entry: 0x401000, end: 0x401040 },
                PclnFunc { name: "main.b".into(), entry: 0x401040, end: 0x401080 },
            ]
        );
        d[0] = 0xfb;
        assert!(Pclntab::parse(&d, 0).is_err());
    }
}
