//! What the agent needs to know about a Go executable before probing it, read from the file
//! itself: the Go version and module versions (build info), function addresses (the ELF symbol
//! table, else Go's own `pclntab`, which survives `-s -w`), the file offsets of every return
//! instruction of a function (Go code is never given uretprobes: the runtime moves stacks and
//! unwinds through return addresses, so "return" probes are plain uprobes on each `RET`), struct
//! field offsets (DWARF, else a version-keyed table generated from real builds), and where the
//! current goroutine's `g` pointer lives in thread-local storage.
//!
//! Position-independent executables are handled by converting virtual addresses to file offsets
//! through the `PT_LOAD` segments (uprobes attach at file offsets); cgo builds by locating
//! `runtime.tlsg` in the `PT_TLS` block.

pub mod buildinfo;
pub mod offsets;
pub mod pclntab;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub use buildinfo::{BuildInfo, Module};

#[derive(Debug, thiserror::Error)]
pub enum GoBinError {
    #[error("reading {0}: {1}")]
    Io(std::path::PathBuf, #[source] std::io::Error),
    #[error("parsing ELF: {0}")]
    Elf(#[from] object::Error),
    #[error("not an x86-64 ELF executable")]
    Arch,
    #[error("not a Go program (no Go build info or pclntab)")]
    NotGo,
    #[error("build info: {0}")]
    BuildInfo(&'static str),
    #[error("pclntab: {0}")]
    Pclntab(&'static str),
    #[error("DWARF: {0}")]
    Dwarf(String),
}

/// A function's location: virtual address range and the file offset of its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunc {
    pub addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Where a struct field offset came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSource {
    Dwarf,
    /// The version-keyed table (`offsets.rs`), for binaries without DWARF.
    Table,
}

/// Where the symbol table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolSource {
    Symtab,
    Pclntab,
}

/// A Go executable, read whole into memory (the agent inspects each binary once).
pub struct GoBinary {
    data: Vec<u8>,
    pub build: BuildInfo,
    /// Function name -> location (every function of the table).
    funcs: HashMap<String, GoFunc>,
    pub symbols: SymbolSource,
    pub pie: bool,
    /// Linked against libc (cgo or external linking): `g` is found through `runtime.tlsg`.
    pub cgo: bool,
    /// Offset of the goroutine pointer `g` from the thread pointer (FS base).
    pub tls_g_offset: i64,
    /// `(vaddr, memsz, file offset, filesz)` of the PT_LOAD segments.
    loads: Vec<(u64, u64, u64, u64)>,
    has_dwarf: bool,
}

impl GoBinary {
    pub fn open(path: &Path) -> Result<Self, GoBinError> {
        let data = std::fs::read(path).map_err(|e| GoBinError::Io(path.to_path_buf(), e))?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, GoBinError> {
        let (build, funcs, symbols, pie, cgo, tls_g_offset, loads, has_dwarf) = {
            let file = object::File::parse(&*data)?;
            if file.architecture() != object::Architecture::X86_64 {
                return Err(GoBinError::Arch);
            }
            let loads: Vec<_> = match &file {
                object::File::Elf64(elf) => {
                    use object::read::elf::ProgramHeader as _;
                    let e = elf.endian();
                    elf.elf_program_headers()
                        .iter()
                        .filter(|p| p.p_type(e) == object::elf::PT_LOAD)
                        .map(|p| (p.p_vaddr(e), p.p_memsz(e), p.p_offset(e), p.p_filesz(e)))
                        .collect()
                }
                _ => file
                    .segments()
                    .map(|s| {
                        let (off, len) = s.file_range();
                        (s.address(), s.size(), off, len)
                    })
                    .collect(),
            };
            let pie = file.kind() == object::ObjectKind::Dynamic;
            let build = match file.section_by_name(".go.buildinfo") {
                Some(s) => buildinfo::parse(s.data()?)?,
                None => return Err(GoBinError::NotGo),
            };
            // Symbols: the ELF symbol table when present (exact sizes), else pclntab.
            let mut funcs = HashMap::new();
            for sym in file.symbols() {
                if sym.kind() != object::SymbolKind::Text || sym.address() == 0 {
                    continue;
                }
                if let Ok(name) = sym.name() {
                    funcs.insert(name.to_owned(), (sym.address(), sym.size()));
                }
            }
            let symbols = if funcs.contains_key("runtime.newproc1") || funcs.contains_key("runtime.main") {
                SymbolSource::Symtab
            } else {
                funcs.clear();
                let text = file.section_by_name(".text").map(|s| s.address()).unwrap_or(0);
                let pcln = file
                    .section_by_name(".gopclntab")
                    .or_else(|| file.section_by_name(".data.rel.ro.gopclntab"))
                    .ok_or(GoBinError::Pclntab("no .gopclntab section"))?;
                let table = pclntab::Pclntab::parse(pcln.data()?, text)?;
                for f in table.funcs() {
                    funcs.insert(f.name, (f.entry, f.end.saturating_sub(f.entry)));
                }
                SymbolSource::Pclntab
            };
            let interp = file.section_by_name(".interp").is_some();
            // CGO_ENABLED=1 builds that import no cgo package are linked statically by Go's own
            // linker, like CGO_ENABLED=0 ones; real cgo builds need the dynamic loader.
            let cgo = interp && build.setting("CGO_ENABLED") == Some("1");
            let tls_g_offset = tls_g_offset(&file);
            let has_dwarf =
                file.section_by_name(".debug_info").is_some() || file.section_by_name(".zdebug_info").is_some();
            (build, funcs, symbols, pie, cgo, tls_g_offset, loads, has_dwarf)
        };
        let mut bin = Self { data, build, funcs: HashMap::new(), symbols, pie, cgo, tls_g_offset, loads, has_dwarf };
        bin.funcs = funcs
            .into_iter()
            .filter_map(|(name, (addr, size))| {
                let file_offset = bin.file_offset(addr)?;
                Some((name, GoFunc { addr, size, file_offset }))
            })
            .collect();
        Ok(bin)
    }

    /// File offset of a virtual address, through the PT_LOAD segment that maps it.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|(va, _, _, filesz)| vaddr >= *va && vaddr < va + filesz)
            .map(|(va, _, off, _)| vaddr - va + off)
    }

    pub fn func(&self, name: &str) -> Option<&GoFunc> {
        self.funcs.get(name)
    }

    /// The function whose name starts with `prefix` (the first by name, should there be
    /// several): for compiler-named closures such as `….gowrap2`, whose number varies.
    pub fn func_starting(&self, prefix: &str) -> Option<&GoFunc> {
        self.funcs.iter().filter(|(n, _)| n.starts_with(prefix)).min_by_key(|(n, _)| n.as_str()).map(|(_, f)| f)
    }

    pub fn func_count(&self) -> usize {
        self.funcs.len()
    }

    /// File offsets of every `RET` instruction of a function (for uprobes standing in for
    /// return probes). Empty when the function has none (e.g. it ends in a tail jump).
    pub fn ret_offsets(&self, name: &str) -> Option<Vec<u64>> {
        let (f, code) = self.code(name)?;
        Some(ret_offsets(code, f.addr, f.file_offset))
    }

    /// File offset where a function's body starts, past its stack-bound check: where an entry
    /// probe goes (see [`body_start`]).
    pub fn body_offset(&self, name: &str) -> Option<u64> {
        let (f, code) = self.code(name)?;
        Some(f.file_offset + body_start(code, f.addr))
    }

    /// A function and its machine code.
    fn code(&self, name: &str) -> Option<(&GoFunc, &[u8])> {
        let f = self.funcs.get(name)?;
        let start = usize::try_from(f.file_offset).ok()?;
        let end = start.checked_add(usize::try_from(f.size).ok()?)?;
        Some((f, self.data.get(start..end)?))
    }

    /// Offset of `field` in struct `strukt` (Go names, e.g. `runtime.g`, `goid`): from DWARF
    /// when the binary has it, else from the version-keyed table.
    pub fn field_offset(&self, strukt: &str, field: &str) -> Option<(u64, OffsetSource)> {
        if self.has_dwarf
            && let Ok(Some(off)) = self.dwarf_field_offset(strukt, field)
        {
            return Some((off, OffsetSource::Dwarf));
        }
        let v = self.build.go_semver()?;
        offsets::lookup(strukt, field, v).map(|o| (o, OffsetSource::Table))
    }

    /// Whether the binary carries DWARF (struct layouts come from it first).
    pub fn has_dwarf(&self) -> bool {
        self.has_dwarf
    }

    /// File offset of the symbol-table symbol named `name` (data symbols too: itabs), if the
    /// binary has a symbol table and the symbol lies in a loaded segment.
    pub fn symbol_file_offset(&self, name: &str) -> Option<u64> {
        self.file_offset(self.symbol_address(name)?)
    }

    /// Virtual address of the symbol-table symbol named `name`.
    fn symbol_address(&self, name: &str) -> Option<u64> {
        let file = object::File::parse(&*self.data).ok()?;
        file.symbols().find(|s| s.name() == Ok(name)).map(|s| s.address())
    }

    /// `len` bytes at `offset` into the data symbol `name` (ELF symbol table only: stripped
    /// binaries have none).
    pub fn symbol_bytes(&self, name: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(self.file_offset(self.symbol_address(name)?.checked_add(offset)?)?).ok()?;
        self.data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
    }

    /// Offset of a struct field from DWARF only.
    pub fn dwarf_field_offset(&self, strukt: &str, field: &str) -> Result<Option<u64>, GoBinError> {
        let file = object::File::parse(&*self.data)?;
        dwarf_member_offset(&file, strukt, field)
    }
}

/// Offsets of RET instructions in `code` (at virtual address `addr`, file offset `file_off`).
pub fn ret_offsets(code: &[u8], addr: u64, file_off: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut dec = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    for ins in &mut dec {
        if ins.is_invalid() {
            continue;
        }
        if matches!(ins.mnemonic(), Mnemonic::Ret | Mnemonic::Retf) {
            out.push(file_off + (ins.ip() - addr));
        }
    }
    out
}

/// How far into `code` (a Go function at virtual address `addr`) its body starts.
///
/// A Go function opens by comparing the stack pointer (or, for a big frame, the frame's lowest
/// address) with `g.stackguard0` (`CMP reg, [R14+0x10]`) and branching, when the stack is too
/// small, to a block that calls `runtime.morestack` and then jumps back to the function's FIRST
/// instruction. A probe there fires twice for a call that grows its stack, and a probe that
/// takes something (a published context) would find it gone the second time. Past the check's
/// conditional branch every call passes exactly once, with its arguments still in registers
/// (the check only touches R12 and the flags). Functions without the check (nosplit) start at 0.
pub fn body_start(code: &[u8], addr: u64) -> u64 {
    let mut dec = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut checked = false;
    for ins in dec.iter().take(6) {
        if ins.is_invalid() {
            break;
        }
        // JBE (JLS in Go's assembler); JB for the overflow test of a frame beyond StackBig comes
        // before the comparison.
        if checked && ins.mnemonic() == Mnemonic::Jbe {
            return ins.next_ip() - addr;
        }
        if ins.mnemonic() == Mnemonic::Cmp && ins.memory_base() == Register::R14 && ins.memory_displacement64() == 0x10
        {
            checked = true;
        }
    }
    0
}

/// Offset of `g` from the thread pointer. Go's own linker places `runtime.tlsg` so that `g` is
/// at FS-8; with an external linker (cgo) the executable's TLS block ends at the thread pointer
/// (x86-64 TLS variant II), so `g` is at `st_value(runtime.tlsg) - round_up(PT_TLS.memsz, align)`.
fn tls_g_offset(file: &object::File) -> i64 {
    let object::File::Elf64(elf) = file else { return -8 };
    use object::read::elf::ProgramHeader as _;
    let e = elf.endian();
    let Some(tls) = elf.elf_program_headers().iter().find(|p| p.p_type(e) == object::elf::PT_TLS) else {
        return -8;
    };
    let align = tls.p_align(e).max(1);
    let memsz = tls.p_memsz(e).div_ceil(align) * align;
    let tlsg = file.symbols().find(|s| s.name() == Ok("runtime.tlsg")).map(|s| s.address()).unwrap_or(0);
    // `runtime.tlsg`'s value is its offset in the TLS block (0 when it is its only variable).
    let base = tls.p_vaddr(e);
    let within = if tlsg >= base && tlsg < base + memsz { tlsg - base } else { tlsg };
    within as i64 - memsz as i64
}

fn dwarf_member_offset(file: &object::File, strukt: &str, field: &str) -> Result<Option<u64>, GoBinError> {
    use gimli::{AttributeValue, EndianSlice, LittleEndian};
    let err = |e: gimli::Error| GoBinError::Dwarf(e.to_string());
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, GoBinError> {
        Ok(match file.section_by_name(id.name()) {
            Some(s) => s.uncompressed_data()?,
            None => Cow::Borrowed(&[][..]),
        })
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(err)? {
        let unit = dwarf.unit(header).map_err(err)?;
        let mut entries = unit.entries();
        let mut in_struct: Option<isize> = None;
        let mut depth: isize = 0;
        while let Some((delta, e)) = entries.next_dfs().map_err(err)? {
            depth += delta;
            if let Some(d) = in_struct {
                if depth <= d {
                    // Left the struct without finding the field.
                    return Ok(None);
                }
                if depth == d + 1 && e.tag() == gimli::DW_TAG_member {
                    let name = match e.attr_value(gimli::DW_AT_name).map_err(err)? {
                        Some(v) => dwarf.attr_string(&unit, v).map_err(err)?.to_string_lossy().into_owned(),
                        None => continue,
                    };
                    if name == field {
                        return Ok(match e.attr_value(gimli::DW_AT_data_member_location).map_err(err)? {
                            Some(AttributeValue::Udata(v)) => Some(v),
                            Some(v) => v.udata_value(),
                            None => None,
                        });
                    }
                }
                continue;
            }
            if e.tag() == gimli::DW_TAG_structure_type
                && let Some(v) = e.attr_value(gimli::DW_AT_name).map_err(err)?
            {
                let n = dwarf.attr_string(&unit, v).map_err(err)?;
                if n.slice() == strukt.as_bytes() {
                    in_struct = Some(depth);
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;

/// `tracer go-inspect`: a human-readable summary of each binary, or (with `offsets_table`) the
/// source of `offsets_table.rs` measured from the binaries' DWARF.
pub fn inspect_command(binaries: &[std::path::PathBuf], offsets_table: bool, probed: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut rows = Vec::new();
    for path in binaries {
        let bin = GoBinary::open(path).with_context(|| path.display().to_string())?;
        if offsets_table {
            for (s, f) in offsets::FIELDS {
                let off = bin
                    .dwarf_field_offset(s, f)?
                    .with_context(|| format!("{}: no DWARF offset for {s}.{f}", path.display()))?;
                rows.push((s.to_string(), f.to_string(), bin.build.go_version.clone(), off));
            }
            continue;
        }
        println!("{}", path.display());
        println!("  go version: {}", bin.build.go_version);
        if let Some(m) = &bin.build.main {
            println!("  main module: {} {}", m.path, m.version);
        }
        for d in &bin.build.deps {
            println!("  dep: {} {}", d.path, d.version);
        }
        println!(
            "  symbols: {:?} ({} functions); pie: {}; cgo: {}; g at fs{:+}",
            bin.symbols,
            bin.func_count(),
            bin.pie,
            bin.cgo,
            bin.tls_g_offset
        );
        for (s, f) in offsets::FIELDS {
            match bin.field_offset(s, f) {
                Some((off, src)) => println!("  {s}.{f}: {off} ({src:?})"),
                None => println!("  {s}.{f}: unknown"),
            }
        }
        for name in probed {
            match bin.func(name) {
                Some(f) => println!(
                    "  {name}: vaddr {:#x} size {} file offset {:#x}; RET at {:x?}",
                    f.addr,
                    f.size,
                    f.file_offset,
                    bin.ret_offsets(name).unwrap_or_default()
                ),
                None => println!("  {name}: not found"),
            }
        }
    }
    if offsets_table {
        print!("{}", offsets::render_table(&rows));
    }
    Ok(())
}
