//! Every kernel compiles through NVRTC for every compute capability CI targets, with no GPU.
//! NVRTC comes from the pinned wheels: run scripts/ci-nvrtc.sh (scripts/test.sh does). These
//! tests fail, never skip, when NVRTC is missing.
use whisper_trt::engine::kernels::{KERNEL_HEADERS, KERNEL_SOURCES};
use whisper_trt::engine::nvrtc::{self, compile_cubin, cubin_sm, CI_ARCHS};

fn need_nvrtc() {
    if let Err(e) = nvrtc::ensure_nvrtc() {
        panic!("{e:#}");
    }
}

fn check_cubin(what: &str, cubin: &[u8], major: u32, minor: u32) {
    assert!(
        cubin.len() > 64,
        "{what}: cubin for sm_{major}{minor} is only {} bytes",
        cubin.len()
    );
    assert_eq!(
        &cubin[..4],
        b"\x7fELF",
        "{what}: cubin for sm_{major}{minor} is not an ELF file"
    );
    assert_eq!(
        cubin_sm(cubin),
        Some(major * 10 + minor),
        "{what}: cubin is not for sm_{major}{minor}"
    );
}

/// The pipeline itself, on a kernel that uses cuda_fp16.h as the real ones do.
#[test]
fn trivial_fp16_kernel_compiles_for_every_ci_arch() {
    need_nvrtc();
    let src = r#"
#include <cuda_fp16.h>
extern "C" __global__ void add_one(__half* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __hadd(x[i], __float2half(1.0f));
}
"#;
    for (major, minor) in CI_ARCHS {
        let cubin = compile_cubin("add_one", src, major, minor).unwrap_or_else(|e| panic!("{e:#}"));
        check_cubin("add_one", &cubin, major, minor);
    }
}

#[test]
fn every_kernel_compiles_for_every_ci_arch() {
    need_nvrtc();
    assert!(
        !KERNEL_SOURCES.is_empty(),
        "kernels/ has no .cu files: build.rs embedded nothing"
    );
    let mut failures = Vec::new();
    for (major, minor) in CI_ARCHS {
        match nvrtc::compile_all(major, minor) {
            Ok(cubins) => {
                assert_eq!(cubins.len(), KERNEL_SOURCES.len());
                for ((stem, cubin), (src_stem, _)) in cubins.iter().zip(KERNEL_SOURCES) {
                    assert_eq!(stem, src_stem);
                    check_cubin(stem, cubin, major, minor);
                }
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn compile_error_names_the_file_and_carries_the_log() {
    need_nvrtc();
    let err = compile_cubin(
        "broken",
        "extern \"C\" __global__ void k() { undefined_thing(); }",
        9,
        0,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("kernels/broken.cu"), "{msg}");
    assert!(msg.contains("sm_90"), "{msg}");
    assert!(msg.contains("undefined_thing"), "the compile log is missing: {msg}");
}

#[test]
fn kernel_sources_are_sorted_and_unique() {
    let names: Vec<&str> = KERNEL_SOURCES.iter().map(|(s, _)| *s).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted);
    // Each embedded source is the file on disk now (build.rs reruns when kernels/ changes).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    for (stem, src) in KERNEL_SOURCES {
        let on_disk = std::fs::read_to_string(dir.join(format!("{stem}.cu"))).unwrap();
        assert_eq!(*src, on_disk, "kernels/{stem}.cu");
    }
    // Headers too, by file name (the kernels `#include "common.cuh"`).
    assert!(KERNEL_HEADERS.iter().any(|(name, _)| *name == "common.cuh"), "kernels/common.cuh is not embedded");
    for (name, src) in KERNEL_HEADERS {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(*src, on_disk, "kernels/{name}");
    }
}
