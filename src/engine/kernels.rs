//! The CUDA kernel sources (`kernels/*.cu`), embedded by build.rs so an engine is always built from
//! the sources of the binary that builds it.
include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The source of the kernel file `stem` (file name without `.cu`).
pub fn source(stem: &str) -> Option<&'static str> {
    KERNEL_SOURCES.iter().find(|(s, _)| *s == stem).map(|(_, src)| *src)
}
