//! Go's build information (`.go.buildinfo`): the Go version and the module versions the binary
//! was built from, as `go version -m` prints them.
//!
//! Layout (Go 1.18+, `debug/buildinfo`): 16-byte header `"\xff Go buildinf:"`, pointer size,
//! flags (bit 2: strings follow inline), padding to 32 bytes, then two varint-prefixed strings:
//! the version and the module info, whose first and last 16 bytes are sentinels.

use super::GoBinError;

const MAGIC: &[u8] = b"\xff Go buildinf:";
const FLAG_INLINE: u8 = 2;

/// A module the binary was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.26.8`.
    pub go_version: String,
    /// The main module's path (`mod` line); empty for `go run`/`go build file.go` builds.
    pub main: Option<Module>,
    /// `dep` lines, with replacements applied.
    pub deps: Vec<Module>,
    /// `build` settings (`CGO_ENABLED`, `-ldflags`, ...).
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// `(major, minor, patch)` of the Go release (`go1.21` is `(1, 21, 0)`).
    pub fn go_semver(&self) -> Option<(u32, u32, u32)> {
        parse_go_version(&self.go_version)
    }

    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Version of a dependency (or of the main module).
    pub fn module_version(&self, path: &str) -> Option<&str> {
        self.deps.iter().chain(self.main.iter()).find(|m| m.path == path).map(|m| m.version.as_str())
    }
}

/// `go1.21.13` -> (1, 21, 13); pre-releases (`go1.22rc1`) count as their release; experiment
/// suffixes (`go1.25.0 X:nodwarf5`) are ignored.
pub fn parse_go_version(v: &str) -> Option<(u32, u32, u32)> {
    let v = v.split_whitespace().next()?.strip_prefix("go")?;
    let mut parts = v.split('.');
    let num = |s: Option<&str>| -> Option<u32> {
        let s = s?;
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let major = num(parts.next())?;
    let minor = num(parts.next())?;
    let patch = num(parts.next()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Parses the content of the `.go.buildinfo` section (or of the data segment that holds it).
pub fn parse(section: &[u8]) -> Result<BuildInfo, GoBinError> {
    // The header is 16-byte aligned within the first 64 KiB.
    let limit = section.len().min(64 * 1024);
    let start = (0..limit)
        .step_by(16)
        .find(|&i| section[i..].starts_with(MAGIC))
        .ok_or(GoBinError::BuildInfo("no build info header"))?;
    let d = &section[start..];
    if d.len() < 32 {
        return Err(GoBinError::BuildInfo("truncated header"));
    }
    if d[15] & FLAG_INLINE == 0 {
        return Err(GoBinError::BuildInfo("pointer-style build info (Go before 1.18) is not supported"));
    }
    let mut rest = &d[32..];
    let version = read_string(&mut rest).ok_or(GoBinError::BuildInfo("truncated version"))?;
    let modinfo = read_string(&mut rest).unwrap_or_default();
    let mut info = BuildInfo { go_version: String::from_utf8_lossy(version).into_owned(), ..Default::default() };
    // Sentinels: 16 bytes on each side, the last preceded by a newline.
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        modinfo
    };
    parse_modinfo(&String::from_utf8_lossy(modinfo), &mut info);
    Ok(info)
}

fn read_string<'a>(d: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    let mut shift = 0;
    let mut i = 0;
    loop {
        let b = *d.get(i)?;
        len |= u64::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let end = i.checked_add(usize::try_from(len).ok()?)?;
    let s = d.get(i..end)?;
    *d = &d[end..];
    Some(s)
}

fn parse_modinfo(text: &str, info: &mut BuildInfo) {
    for line in text.lines() {
        let mut f = line.split('\t');
        match f.next() {
            Some("mod") => {
                let path = f.next().unwrap_or_default().to_owned();
                let version = f.next().unwrap_or_default().to_owned();
                info.main = Some(Module { path, version });
            }
            Some("dep") => {
                let path = f.next().unwrap_or_default().to_owned();
                let version = f.next().unwrap_or_default().to_owned();
                info.deps.push(Module { path, version });
            }
            Some("=>") => {
                // Replacement of the previous dep: its version is what was built.
                let _path = f.next();
                if let (Some(v), Some(last)) = (f.next(), info.deps.last_mut()) {
                    last.version = v.to_owned();
                }
            }
            Some("build") => {
                if let Some((k, v)) = f.next().and_then(|kv| kv.split_once('=')) {
                    info.settings.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_go_version("go1.21.13"), Some((1, 21, 13)));
        assert_eq!(parse_go_version("go1.22rc1"), Some((1, 22, 0)));
        assert_eq!(parse_go_version("go1.26.8 X:nodwarf5"), Some((1, 26, 8)));
        assert_eq!(parse_go_version("devel"), None);
    }

    #[test]
    fn synthetic_section() {
        let mut d = vec![0u8; 48];
        d[16..16 + MAGIC.len()].copy_from_slice(MAGIC);
        d[16 + 14] = 8;
        d[16 + 15] = FLAG_INLINE;
        let v = b"go1.23.4";
        d.push(v.len() as u8);
        d.extend_from_slice(v);
        let mi = "path\texample.com/x\nmod\texample.com/x\t(devel)\t\ndep\tgoogle.golang.org/grpc\tv1.60.0\th1:x\n\
                  dep\tgolang.org/x/net\tv0.1.0\n=>\t../net\tv0.2.0\t\nbuild\tCGO_ENABLED=1\n";
        let mut m = vec![b'S'; 16];
        m.extend_from_slice(mi.as_bytes());
        m.extend_from_slice(&[b'E'; 16]);
        d.push(m.len() as u8 | 0x80);
        d.push((m.len() >> 7) as u8);
        d.extend_from_slice(&m);
        let info = parse(&d).unwrap();
        assert_eq!(info.go_version, "go1.23.4");
        assert_eq!(info.main.as_ref().unwrap().path, "example.com/x");
        assert_eq!(info.module_version("google.golang.org/grpc"), Some("v1.60.0"));
        assert_eq!(info.module_version("golang.org/x/net"), Some("v0.2.0"));
        assert_eq!(info.setting("CGO_ENABLED"), Some("1"));
    }
}
