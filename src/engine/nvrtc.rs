//! Kernel sources to cubins through NVRTC, loaded at run time (cudarc's dynamic loading), so the
//! binary builds and runs with no CUDA toolkit. Only `whisper-trt build` compiles; loading an engine
//! never does.
//!
//! Where NVRTC comes from: cudarc dlopens `libnvrtc.so`, then `libnvrtc.so.13` and other names,
//! through the normal library search (LD_LIBRARY_PATH, ldconfig). When that finds nothing, the
//! known install folders are tried by absolute path (`$WHISPER_TRT_NVRTC_LIB`, the wheels
//! `scripts/ci-nvrtc.sh` installs into `<repo>/.dev/nvrtc`, `$CUDA_HOME/lib64`,
//! `/usr/local/cuda/lib64`): a library loaded by path answers later dlopens of its soname.
use super::kernels::{headers, sources};
use anyhow::{bail, Context, Result};
use cudarc::nvrtc::sys;
use rayon::prelude::*;
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What to do when NVRTC is missing; every caller's error says it.
pub const MISSING: &str = "NVRTC not found: install the CUDA toolkit or run scripts/ci-nvrtc.sh \
                           (and export the LD_LIBRARY_PATH it prints)";

/// The compute capabilities CI compiles every kernel for (A100, A10, L4, H100).
pub const CI_ARCHS: [(u32, u32); 4] = [(8, 0), (8, 6), (8, 9), (9, 0)];

/// NVRTC options other than the architecture and include path. Part of [`kernel_hash`].
/// No `--use_fast_math`: the kernels are checked against the f32 CPU backend.
const OPTIONS: [&str; 3] = ["-default-device", "--std=c++17", "-lineinfo"];

/// The wheels' folder under this checkout (used when the binary runs where it was built).
fn wheel_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/nvrtc/nvidia/cu13")
}

fn cuda_homes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    out.push(PathBuf::from("/usr/local/cuda"));
    out
}

/// Checks that NVRTC can be loaded, trying the known folders when the library search finds none.
pub fn ensure_nvrtc() -> Result<()> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only dlopens candidate names and drops the handles.
    let present = *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() } || preload());
    if !present {
        bail!("{MISSING}");
    }
    Ok(())
}

/// Loads libnvrtc.so.13 (and the builtins library NVRTC dlopens by name) from a known folder, and
/// keeps them loaded for the life of the process.
fn preload() -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("WHISPER_TRT_NVRTC_LIB")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(wheel_root().join("lib"));
    for home in cuda_homes() {
        dirs.push(home.join("lib64"));
        dirs.push(home.join("targets/x86_64-linux/lib"));
    }
    for dir in dirs {
        let lib = dir.join("libnvrtc.so.13");
        if !lib.is_file() {
            continue;
        }
        let builtins = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libnvrtc-builtins.so.13"))
            });
        // SAFETY: these are NVIDIA's NVRTC libraries; their initialisers have no preconditions.
        unsafe {
            if let Some(b) = builtins {
                if let Ok(handle) = libloading::Library::new(&b) {
                    std::mem::forget(handle);
                }
            }
            if let Ok(handle) = libloading::Library::new(&lib) {
                std::mem::forget(handle);
                if sys::is_culib_present() {
                    return true;
                }
            }
        }
    }
    false
}

/// NVRTC's version, (major, minor).
pub fn version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the pointers are valid for the call.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(r, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The folder holding cuda_fp16.h: `$WHISPER_TRT_CUDA_INCLUDE`, else the first of
/// `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include` and the
/// scripts/ci-nvrtc.sh wheels that has it.
pub fn cuda_include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WHISPER_TRT_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let mut dirs: Vec<PathBuf> = cuda_homes().into_iter().map(|h| h.join("include")).collect();
    dirs.push(wheel_root().join("include"));
    dirs.into_iter().find(|d| d.join("cuda_fp16.h").is_file())
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        bail!("{what} failed: {r:?}")
    }
}

/// Destroys the program when dropped, whatever path the compile takes.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: self.0 came from nvrtcCreateProgram and is destroyed only here.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// Compiles `source` (the kernel file `name`.cu) into a cubin for sm_{major}{minor}.
/// The error carries NVRTC's compile log.
pub fn compile_cubin(name: &str, source: &str, major: u32, minor: u32) -> Result<Vec<u8>> {
    ensure_nvrtc()?;
    // Compute capability 9.0 compiles for sm_90a, Hopper's architecture-specific target (warpgroup
    // MMA in flash_attention.cu): its cubins run only on 9.0 GPUs, the one the engine is built for.
    let arch = if (major, minor) == (9, 0) { "sm_90a".to_string() } else { format!("sm_{major}{minor}") };
    let ctx = || format!("kernels/{name}.cu: NVRTC compile for {arch}");
    let src = CString::new(source).with_context(|| format!("kernels/{name}.cu: source contains a NUL byte"))?;
    let file =
        CString::new(format!("{name}.cu")).with_context(|| format!("kernel name {name:?} contains a NUL byte"))?;
    let mut options = vec![format!("--gpu-architecture={arch}")];
    options.extend(OPTIONS.iter().map(|o| o.to_string()));
    if let Some(dir) = cuda_include_dir() {
        options.push(format!("--include-path={}", dir.display()));
    }
    let options: Vec<CString> = options
        .into_iter()
        .map(CString::new)
        .collect::<Result<_, _>>()
        .with_context(ctx)?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

    // kernels/*.cuh, handed to NVRTC by name for `#include "NAME"`.
    let (header_names, header_srcs): (Vec<CString>, Vec<CString>) = headers()
        .iter()
        .map(|(n, h)| Ok((CString::new(*n)?, CString::new(*h)?)))
        .collect::<Result<Vec<_>, std::ffi::NulError>>()
        .with_context(|| "kernels/*.cuh: a header name or source contains a NUL byte")?
        .into_iter()
        .unzip();
    let name_ptrs: Vec<*const c_char> = header_names.iter().map(|n| n.as_ptr()).collect();
    let header_ptrs: Vec<*const c_char> = header_srcs.iter().map(|h| h.as_ptr()).collect();

    let mut raw = std::ptr::null_mut();
    // SAFETY: src, file and the header strings outlive the program (dropped at the end of this
    // function, after it); the two header arrays have the same length.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            file.as_ptr(),
            header_ptrs.len() as i32,
            header_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    };
    check(r, "nvrtcCreateProgram").with_context(ctx)?;
    let prog = Program(raw);
    // SAFETY: prog is a live program; option_ptrs point into `options`, alive for the call.
    let compiled = unsafe { sys::nvrtcCompileProgram(prog.0, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
    if compiled != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = program_log(&prog);
        let hint = if log.contains("cannot open source file") || log.contains("could not open source file") {
            " (set WHISPER_TRT_CUDA_INCLUDE to the folder holding cuda_fp16.h, or run scripts/ci-nvrtc.sh)"
        } else {
            ""
        };
        bail!("{}: {compiled:?}{hint}:\n{}", ctx(), log.trim_end());
    }
    let mut size = 0usize;
    // SAFETY: prog compiled successfully; size is a valid out-pointer.
    check(
        unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) },
        "nvrtcGetCUBINSize",
    )
    .with_context(ctx)?;
    if size == 0 {
        bail!("{}: NVRTC produced no cubin (is {arch} a real architecture?)", ctx());
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: cubin has the size NVRTC reported.
    check(
        unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char) },
        "nvrtcGetCUBIN",
    )
    .with_context(ctx)?;
    Ok(cubin)
}

fn program_log(prog: &Program) -> String {
    let mut size = 0usize;
    // SAFETY: prog is a live program; the buffer has the size NVRTC reported.
    unsafe {
        if sys::nvrtcGetProgramLogSize(prog.0, &mut size) != sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if sys::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char) != sys::nvrtcResult::NVRTC_SUCCESS {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

/// Compiles every embedded kernel file for sm_{major}{minor}, in parallel; (file stem, cubin) in
/// [`sources`] order.
pub fn compile_all(major: u32, minor: u32) -> Result<Vec<(String, Vec<u8>)>> {
    ensure_nvrtc()?;
    sources()
        .par_iter()
        .map(|(stem, src)| Ok((stem.to_string(), compile_cubin(stem, src, major, minor)?)))
        .collect()
}

/// The SM version a cubin was compiled for (e.g. 90 for sm_90), or None when `cubin` is not a
/// 64-bit CUDA ELF (e_machine 190).
pub fn cubin_sm(cubin: &[u8]) -> Option<u32> {
    let u16_at = |i: usize| cubin.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| {
        cubin
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if cubin.get(..4)? != b"\x7fELF" || *cubin.get(4)? != 2 || u16_at(18)? != 190 {
        return None;
    }
    let flags = u32_at(48)?;
    // CUDA ELF ABI version 8 and later keep the SM in bits 8..16 of e_flags, older ones in 0..8.
    Some(if *cubin.get(8)? >= 8 {
        (flags >> 8) & 0xff
    } else {
        flags & 0xff
    })
}

/// A hash of every kernel source, every header and the compile options (FNV-1a, 64 bits, as 16 hex digits).
/// An engine whose hash differs from the running binary's was built from other kernels.
pub fn kernel_hash() -> String {
    // Headers by file name (with .cuh), so they cannot collide with a kernel stem.
    let all: Vec<(&str, &str)> = sources().iter().chain(headers()).copied().collect();
    hash_sources(&all)
}

/// [`kernel_hash`] of any set of sources (exposed for tests).
pub fn hash_sources(sources: &[(&str, &str)]) -> String {
    let mut h = Fnv::new();
    for o in OPTIONS {
        h.write(o.as_bytes());
        h.write(&[0]);
    }
    for (stem, src) in sources {
        h.write(&[1]);
        h.write(stem.as_bytes());
        h.write(&[0]);
        h.write(&(src.len() as u64).to_le_bytes());
        h.write(src.as_bytes());
    }
    format!("{:016x}", h.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_any_source_byte_and_name() {
        let a = hash_sources(&[("a", "x"), ("b", "y")]);
        assert_eq!(a, hash_sources(&[("a", "x"), ("b", "y")]));
        assert_ne!(a, hash_sources(&[("a", "x"), ("b", "z")]));
        assert_ne!(a, hash_sources(&[("a", "x"), ("c", "y")]));
        // Moving a byte across the boundary between two files changes it too.
        assert_ne!(
            hash_sources(&[("a", "xy"), ("b", "")]),
            hash_sources(&[("a", "x"), ("b", "y")])
        );
        assert_eq!(a.len(), 16);
    }
}
