//! The CUDA kernel sources (`kernels/*.cu`) and the headers they include (`kernels/*.cuh`),
//! embedded by build.rs so an engine is always built from the sources of the binary that builds it.
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

type Files = Vec<(&'static str, &'static str)>;

/// For kernel development only: the `*.cu` files (by stem) and `*.cuh` files (by name) of the
/// folder `WHISPER_TRT_KERNEL_DIR` names, so a kernel change can be tried on the GPU machine
/// without rebuilding the binary.
fn from_dir() -> Option<&'static (Files, Files)> {
    static FROM_DIR: OnceLock<(Files, Files)> = OnceLock::new();
    let dir = std::env::var_os("WHISPER_TRT_KERNEL_DIR")?;
    Some(FROM_DIR.get_or_init(|| {
        let (mut cu, mut cuh) = (Vec::new(), Vec::new());
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("WHISPER_TRT_KERNEL_DIR {}: {e}", dir.to_string_lossy()));
        for entry in entries.flatten() {
            let path = entry.path();
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            let read = || std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(stem) = name.strip_suffix(".cu") {
                cu.push((leak(stem.to_string()), leak(read())));
            } else if name.ends_with(".cuh") {
                cuh.push((leak(name.clone()), leak(read())));
            }
        }
        cu.sort();
        cuh.sort();
        (cu, cuh)
    }))
}

/// Every kernel file as (file stem, source), sorted by stem: the embedded sources, or those of
/// `WHISPER_TRT_KERNEL_DIR` (see `from_dir`). The kernel hash covers whichever sources are used,
/// so engines built from a folder load only with the same folder.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    from_dir().map_or(KERNEL_SOURCES, |(cu, _)| cu.as_slice())
}

/// Every header the kernels may `#include "NAME"`, as (file name, source), from the same place
/// as [`sources`].
pub fn headers() -> &'static [(&'static str, &'static str)] {
    from_dir().map_or(KERNEL_HEADERS, |(_, cuh)| cuh.as_slice())
}

/// The source of the kernel file `stem` (file name without `.cu`).
pub fn source(stem: &str) -> Option<&'static str> {
    sources().iter().find(|(s, _)| *s == stem).map(|(_, src)| *src)
}
