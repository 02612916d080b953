//! Tests against real Go binaries, built by the test with the machine's Go toolchain (skipped,
//! with a message, where `go` is missing). Results are checked against Go's own tools
//! (`go tool nm`, `go tool objdump`, `go version -m`), not against this reader.

use super::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const PROGRAM: &str = r#"package main

import (
	"fmt"
	"net/http"
	"sync"
)

func main() {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); fmt.Println("child") }()
	wg.Wait()
	resp, err := http.Get("http://127.0.0.1:1/")
	fmt.Println(resp, err)
}
"#;

const CGO_PROGRAM: &str = r#"package main

// int twice(int x) { return 2 * x; }
import "C"

import (
	"fmt"
	"net/http"
)

func main() {
	fmt.Println(C.twice(21))
	resp, err := http.Get("http://127.0.0.1:1/")
	fmt.Println(resp, err)
}
"#;

struct Builds {
    plain: PathBuf,
    stripped: PathBuf,
    pie: PathBuf,
    pie_stripped: PathBuf,
    cgo: PathBuf,
}

fn go_available() -> bool {
    Command::new("go").arg("version").output().is_ok_and(|o| o.status.success())
}

fn build(dir: &Path, src: &str, name: &str, args: &[&str], cgo: bool) -> PathBuf {
    let srcdir = dir.join(format!("src-{name}"));
    std::fs::create_dir_all(&srcdir).unwrap();
    std::fs::write(srcdir.join("main.go"), src).unwrap();
    std::fs::write(srcdir.join("go.mod"), "module gobintest\n\ngo 1.21\n").unwrap();
    let out = dir.join(name);
    let status = Command::new("go")
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&srcdir)
        .env("CGO_ENABLED", if cgo { "1" } else { "0" })
        .status()
        .expect("running go build");
    assert!(status.success(), "go build {name} failed");
    out
}

fn builds() -> Option<&'static Builds> {
    static B: OnceLock<Option<Builds>> = OnceLock::new();
    B.get_or_init(|| {
        if !go_available() {
            eprintln!("go is not installed: skipping tests on real Go binaries");
            return None;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/gobin-tests");
        std::fs::create_dir_all(&dir).unwrap();
        Some(Builds {
            plain: build(&dir, PROGRAM, "plain", &[], false),
            stripped: build(&dir, PROGRAM, "stripped", &["-ldflags=-s -w"], false),
            pie: build(&dir, PROGRAM, "pie", &["-buildmode=pie"], false),
            pie_stripped: build(&dir, PROGRAM, "pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"], false),
            cgo: build(&dir, CGO_PROGRAM, "cgo", &[], true),
        })
    })
    .as_ref()
}

/// `go tool nm -size` of a binary: name -> (addr, size).
fn nm(path: &Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("go").args(["tool", "nm", "-size"]).arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || !matches!(f[2], "T" | "t") {
                return None;
            }
            Some((f[3..].join(" "), (u64::from_str_radix(f[0], 16).ok()?, f[1].parse().ok()?)))
        })
        .collect()
}

/// Number of RET instructions `go tool objdump` shows in a function.
fn objdump_rets(path: &Path, func: &str) -> usize {
    let re = format!("^{}$", func.replace('.', "\\.").replace('(', "\\(").replace(')', "\\)").replace('*', "\\*"));
    let out = Command::new("go").args(["tool", "objdump", "-s", &re]).arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split('\t').any(|f| f.trim() == "RET" || f.trim().starts_with("RET ")))
        .count()
}

const PROBED: &[&str] = &["runtime.newproc1", "net/http.(*Transport).roundTrip", "net/http.(*Request).write"];

#[test]
fn symbols_match_go_tool_nm_with_and_without_symtab() {
    let Some(b) = builds() else { return };
    let want = nm(&b.plain);
    let plain = GoBinary::open(&b.plain).unwrap();
    let stripped = GoBinary::open(&b.stripped).unwrap();
    assert_eq!(plain.symbols, SymbolSource::Symtab);
    assert_eq!(stripped.symbols, SymbolSource::Pclntab);
    assert!(!plain.pie && !stripped.pie);
    for name in PROBED {
        let (addr, size) = want[*name];
        let p = plain.func(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((p.addr, p.size), (addr, size), "{name} from the symbol table");
        // pclntab gives the entry exactly; its end includes the alignment padding.
        let s = stripped.func(name).unwrap_or_else(|| panic!("{name} missing from pclntab"));
        assert_eq!(s.addr, addr, "{name} from pclntab");
        assert!(s.size >= size && s.size < size + 64, "{name}: pclntab size {} vs {size}", s.size);
        assert_eq!(plain.ret_offsets(name), Some(stripped.ret_offsets(name).unwrap()));
    }
    // Every function of the symbol table is in pclntab too.
    let n = want.keys().filter(|k| stripped.func(k).is_some()).count();
    assert!(n * 100 / want.len() >= 95, "pclntab has {n} of {} functions", want.len());
}

#[test]
fn ret_offsets_match_objdump_and_point_at_ret() {
    let Some(b) = builds() else { return };
    for path in [&b.plain, &b.pie, &b.cgo] {
        let bin = GoBinary::open(path).unwrap();
        let data = std::fs::read(path).unwrap();
        for name in PROBED {
            let rets = bin.ret_offsets(name).unwrap();
            assert_eq!(rets.len(), objdump_rets(path, name), "{name} in {}", path.display());
            assert!(!rets.is_empty());
            let f = bin.func(name).unwrap();
            for r in rets {
                assert_eq!(data[r as usize], 0xc3, "{name}: byte at {r:#x}");
                assert!(r >= f.file_offset && r < f.file_offset + f.size);
            }
        }
    }
}

#[test]
fn pie_file_offsets_and_stripped_pie() {
    let Some(b) = builds() else { return };
    let pie = GoBinary::open(&b.pie).unwrap();
    let pie_s = GoBinary::open(&b.pie_stripped).unwrap();
    assert!(pie.pie && pie_s.pie);
    assert_eq!(pie_s.symbols, SymbolSource::Pclntab);
    let want = nm(&b.pie);
    let data = std::fs::read(&b.pie).unwrap();
    for name in PROBED {
        let p = pie.func(name).unwrap();
        assert_eq!(p.addr, want[*name].0);
        assert_eq!(pie_s.func(name).unwrap().addr, p.addr, "{name}: pclntab in a PIE");
        assert_eq!(pie_s.ret_offsets(name).unwrap(), pie.ret_offsets(name).unwrap());
        // The entry's bytes at the file offset are the function's first instruction: Go's
        // prologue loads the stack bound through R14 (`49 3b 66 10`: CMP RSP, 0x10(R14)) or the
        // function is a leaf starting elsewhere; in both cases objdump agrees on the bytes.
        let off = p.file_offset as usize;
        assert!(data[off..off + 16].iter().any(|b| *b != 0));
    }
    // Go's own PIE text segment is not mapped at file offset == vaddr.
    let newproc = pie.func("runtime.newproc1").unwrap();
    assert!(newproc.addr != newproc.file_offset || pie.loads.iter().all(|l| l.0 == l.2));
}

#[test]
fn build_info_matches_go_version_m() {
    let Some(b) = builds() else { return };
    let out = Command::new("go").args(["version", "-m"]).arg(&b.plain).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "<path>: go1.26.8"
    let version = text.lines().next().unwrap().rsplit(' ').next().unwrap().to_owned();
    for path in [&b.plain, &b.stripped, &b.pie, &b.cgo] {
        let bin = GoBinary::open(path).unwrap();
        assert_eq!(bin.build.go_version, version);
        assert_eq!(bin.build.main.as_ref().map(|m| m.path.as_str()), Some("gobintest"));
    }
    assert_eq!(GoBinary::open(&b.cgo).unwrap().build.setting("CGO_ENABLED"), Some("1"));
    assert_eq!(GoBinary::open(&b.plain).unwrap().build.setting("CGO_ENABLED"), Some("0"));
}

#[test]
fn goid_offset_from_dwarf_and_from_the_table() {
    let Some(b) = builds() else { return };
    let plain = GoBinary::open(&b.plain).unwrap();
    let stripped = GoBinary::open(&b.stripped).unwrap();
    let (off, src) = plain.field_offset("runtime.g", "goid").unwrap();
    assert_eq!(src, OffsetSource::Dwarf);
    // goid follows the stack bounds, panic/defer links, m, sched (gobuf) etc.: well inside g.
    assert!(off > 64 && off < 512 && off % 8 == 0, "goid at {off}");
    assert_eq!(plain.dwarf_field_offset("runtime.g", "no_such_field").unwrap(), None);
    assert_eq!(plain.dwarf_field_offset("runtime.no_such_type", "goid").unwrap(), None);
    assert_eq!(stripped.dwarf_field_offset("runtime.g", "goid").unwrap(), None);
    // The stripped binary has no DWARF: the table must give the same answer.
    assert_eq!(stripped.field_offset("runtime.g", "goid"), Some((off, OffsetSource::Table)));
    assert_eq!(GoBinary::open(&b.cgo).unwrap().field_offset("runtime.g", "goid").map(|o| o.0), Some(off));
}

#[test]
fn tls_offset_of_g() {
    let Some(b) = builds() else { return };
    let plain = GoBinary::open(&b.plain).unwrap();
    assert!(!plain.cgo);
    assert_eq!(plain.tls_g_offset, -8);
    let cgo = GoBinary::open(&b.cgo).unwrap();
    assert!(cgo.cgo);
    assert!(cgo.tls_g_offset < 0 && cgo.tls_g_offset % 8 == 0, "{}", cgo.tls_g_offset);
}

#[test]
fn rejects_what_is_not_go() {
    let me = std::env::current_exe().unwrap();
    assert!(matches!(GoBinary::open(&me), Err(GoBinError::NotGo)));
    assert!(GoBinary::open(Path::new("/nonexistent")).is_err());
    assert!(GoBinary::parse(b"not an elf".to_vec()).is_err());
}

#[test]
fn ret_scan_on_handmade_code() {
    // push rbp; ret; (endbr64); mov eax,1; ret 8
    let code = [0x55, 0xc3, 0xf3, 0x0f, 0x1e, 0xfa, 0xb8, 1, 0, 0, 0, 0xc2, 8, 0];
    assert_eq!(ret_offsets(&code, 0x1000, 0x200), vec![0x201, 0x20b]);
}

#[test]
fn body_starts_past_the_stack_check() {
    // (*loopyWriter).originateStream, grpc-go 1.70 / Go 1.25: CMP RSP, [R14+0x10]; JBE; PUSH RBP
    let small = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xe2, 0, 0, 0, 0x55, 0x48, 0x89, 0xe5];
    assert_eq!(body_start(&small, 0x830ea0), 10);
    // (*Server).handleStream: LEA R12, [RSP-0x160]; CMP R12, [R14+0x10]; JBE; PUSH RBP
    let big =
        [0x4c, 0x8d, 0xa4, 0x24, 0xa0, 0xfe, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x6a, 0x10, 0, 0, 0x55];
    assert_eq!(body_start(&big, 0x8c5600), 18);
    // A frame beyond StackBig: MOV R12, RSP; SUB R12, 0x3000; JB; CMP R12, [R14+0x10]; JBE
    let huge = [
        0x49, 0x89, 0xe4, 0x49, 0x81, 0xec, 0x00, 0x30, 0, 0, 0x0f, 0x82, 0x40, 0, 0, 0, 0x4d, 0x3b, 0x66, 0x10, 0x0f,
        0x86, 0x30, 0, 0, 0, 0x55,
    ];
    assert_eq!(body_start(&huge, 0x1000), 26);
    // No check (a nosplit leaf): the body starts at the entry.
    assert_eq!(body_start(&[0x48, 0x89, 0xc3, 0xc3], 0x1000), 0);
    // Another comparison with R14 that is not the stack bound is not taken for one.
    assert_eq!(body_start(&[0x49, 0x3b, 0x46, 0x18, 0x0f, 0x86, 0, 0, 0, 0, 0x55], 0x1000), 0);
}

#[test]
fn body_offsets_land_past_the_check_in_real_builds() {
    let Some(b) = builds() else { return };
    for path in [&b.plain, &b.pie, &b.cgo, &b.stripped] {
        let bin = GoBinary::open(path).unwrap();
        let data = std::fs::read(path).unwrap();
        for name in PROBED {
            let f = bin.func(name).unwrap();
            let body = bin.body_offset(name).unwrap();
            let code = &data[f.file_offset as usize..body as usize];
            // The skipped prologue ends with the check's JBE (0f 86 rel32 or 76 rel8).
            assert!(body > f.file_offset, "{name}: no stack check found in {}", path.display());
            let n = code.len();
            let jbe = (n >= 6 && code[n - 6..n - 4] == [0x0f, 0x86]) || (n >= 2 && code[n - 2] == 0x76);
            assert!(jbe, "{name}: prologue {code:02x?}");
        }
    }
}

#[test]
fn crypto_tls_points_and_socket_offsets_with_and_without_dwarf() {
    let Some(b) = builds() else { return };
    use crate::golang::tls;
    use tracer_common::names::programs as p;
    let plain = GoBinary::open(&b.plain).unwrap();
    let (offsets, points) = tls::plan(&plain).unwrap().expect("net/http links crypto/tls");
    // `Conn.conn` is the first field; `netFD.pfd` the first, `FD.Sysfd` after the 16-byte fdMutex.
    assert_eq!(offsets, tracer_common::GoTlsProc { conn: 0, netfd_sysfd: 16 });
    let programs: Vec<_> = points.iter().map(|(prog, _)| *prog).collect();
    assert_eq!(
        programs,
        [p::GO_TLS_WRITE, p::GO_TLS_READ, p::GO_TLS_READ_RET, p::GO_TLS_HANDSHAKE, p::GO_TLS_HANDSHAKE_RET]
    );
    assert_eq!(points[2].1.len(), objdump_rets(&b.plain, tls::READ), "one probe per RET of Read");
    let handshake_rets = objdump_rets(&b.plain, tls::CLIENT_HANDSHAKE);
    assert_eq!(points[4].1.len(), handshake_rets, "one probe per RET of clientHandshake");
    // Without DWARF the table gives the same layout.
    let stripped = GoBinary::open(&b.stripped).unwrap();
    assert_eq!(tls::plan(&stripped).unwrap().map(|(o, _)| o), Some(offsets));
}

/// A net/http server that makes calls. Run with an argument, it prints what Go itself says of
/// its contexts (the address of each wrapper's first itab method, `Deadline`, and
/// `Request.ctx`'s offset) and waits for its stdin to close.
const CTX_PROGRAM: &str = r#"package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"time"
	"unsafe"
)

func deadline(c context.Context) uintptr {
	itab := *(*uintptr)(unsafe.Pointer(&c))
	return *(*uintptr)(unsafe.Pointer(itab + 24))
}

func main() {
	if len(os.Args) > 1 {
		bg := context.Background()
		c, cancel := context.WithCancel(bg)
		defer cancel()
		t, stop := context.WithTimeout(bg, time.Minute)
		defer stop()
		f, _ := reflect.TypeOf(http.Request{}).FieldByName("ctx")
		l, _ := reflect.TypeOf(http.Request{}).FieldByName("ContentLength")
		fmt.Println(deadline(c), deadline(t), deadline(context.WithValue(bg, 1, 2)), deadline(context.WithoutCancel(c)), f.Offset, l.Offset)
		io.Copy(io.Discard, os.Stdin)
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.Get("http://127.0.0.1:1/") })
	http.ListenAndServe("127.0.0.1:0", nil)
}
"#;

#[test]
fn context_plan_matches_what_go_says_in_the_running_process() {
    if !go_available() {
        return;
    }
    use crate::golang::context;
    use std::io::BufRead as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/gobin-tests");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, args) in
        [("ctx-plain", &[][..]), ("ctx-pie", &["-buildmode=pie"][..]), ("ctx-stripped", &["-ldflags=-s -w"][..])]
    {
        let bin = build(&dir, CTX_PROGRAM, name, args, false);
        let (proc, points) =
            context::plan(&GoBinary::open(&bin).unwrap(), true).unwrap().expect("a server making calls");
        // With DWARF, requests are recorded at the background read's goroutine (no uprobe of
        // their own); without, at ServeHTTP.
        if name == "ctx-stripped" {
            assert_eq!(points, [(tracer_common::names::programs::GO_HTTP_SERVE, points[0].1.clone())], "{name}");
            assert_eq!(proc.background_read, 0, "{name}");
        } else {
            assert_eq!(points, [], "{name}");
            assert_ne!(proc.background_read, 0, "{name}");
            assert_ne!(proc.tcp_itab, 0, "{name}: the socket of a request with a body");
        }
        assert_eq!(proc.stream_ctx, tracer_common::GO_CTX_NONE, "no grpc-go here");
        // The newproc1 probe reads the goroutine id with the context entry's own copy.
        let whole = crate::golang::probes::plan(&GoBinary::open(&bin).unwrap()).unwrap();
        assert_ne!(whole.proc.goid_off, 0, "{name}");
        assert_eq!(whole.ctx.map(|c| c.goid_off), Some(whole.proc.goid_off), "{name}");
        let mut child = Command::new(&bin)
            .arg("print")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let said: Vec<u64> = line.split_whitespace().map(|w| w.parse().unwrap()).collect();
        let running = context::in_process(child.id(), &proc).expect("the executable's mappings");
        drop(child.stdin.take());
        child.wait().unwrap();
        // cancelCtx, timerCtx, valueCtx, withoutCancelCtx, in GO_CTX_WRAPPERS' order.
        assert_eq!(running.wrappers[..4], said[..4], "{name}");
        assert_eq!(u64::from(proc.request_ctx), said[4], "{name}");
        if proc.background_read != 0 {
            assert_eq!(u64::from(proc.serve.request_length), said[5], "{name}");
            assert_ne!(running.background_read, proc.background_read, "{name}: an address, not a file offset");
        }
    }
    // A program that makes calls but serves no request has nothing to link them to: no probe.
    let Some(b) = builds() else { return };
    assert_eq!(context::plan(&GoBinary::open(&b.plain).unwrap(), true), Ok(None));
}
