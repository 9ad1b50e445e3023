//! The CUDA kernel sources (`kernels/*.cu`), embedded by build.rs so an engine is always built from
//! the sources of the binary that builds it.
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// Every kernel file as (file stem, source), sorted by stem: the embedded sources, or, for kernel
/// development only, the `*.cu` files of the folder `WHISPER_TRT_KERNEL_DIR` names (so a kernel
/// change can be tried on the GPU machine without rebuilding the binary). The kernel hash covers
/// whichever sources are used, so engines built from a folder load only with the same folder.
pub fn sources() -> &'static [(&'static str, &'static str)] {
    static FROM_DIR: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    match std::env::var_os("WHISPER_TRT_KERNEL_DIR") {
        None => KERNEL_SOURCES,
        Some(dir) => FROM_DIR.get_or_init(|| {
            let mut out = Vec::new();
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("WHISPER_TRT_KERNEL_DIR {}: {e}", dir.to_string_lossy()));
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "cu") {
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    out.push((&*Box::leak(stem.into_boxed_str()), &*Box::leak(src.into_boxed_str())));
                }
            }
            out.sort();
            out
        }),
    }
}

/// The source of the kernel file `stem` (file name without `.cu`).
pub fn source(stem: &str) -> Option<&'static str> {
    sources().iter().find(|(s, _)| *s == stem).map(|(_, src)| *src)
}
