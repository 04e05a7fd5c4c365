//! Every CUDA kernel file compiles with NVRTC, for each storage type and for the A100 and H100
//! architectures, whenever libnvrtc can be loaded (CI installs the nvidia-cuda-nvrtc package).

use keyformer::backend::cuda::CudaDtype;
use keyformer::backend::cuda::kernels::{QUANT, SOURCES, compile, quant_source};
use keyformer::backend::cuda::quant::FORMATS;

#[test]
fn every_kernel_compiles_with_nvrtc() {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!(
            "SKIP every_kernel_compiles_with_nvrtc: libnvrtc not found (install nvidia-cuda-nvrtc and add its lib folder to LD_LIBRARY_PATH)"
        );
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for dtype in [CudaDtype::F16, CudaDtype::Bf16, CudaDtype::F32] {
            for (name, source) in SOURCES {
                if let Err(e) = compile(name, source, arch, dtype) {
                    panic!("{name} for {arch} {}: {e}", dtype.name());
                }
            }
            println!(
                "compiled {} kernel files for {arch} {}",
                SOURCES.len(),
                dtype.name()
            );
        }
    }
}

/// kernels/quant.cu instantiated for each block format the backend reads, as the backend
/// compiles it when it meets the format.
#[test]
fn every_block_format_compiles_with_nvrtc() {
    // SAFETY: only tries to open the shared library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("SKIP every_block_format_compiles_with_nvrtc: libnvrtc not found");
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for dtype in [CudaDtype::F16, CudaDtype::Bf16, CudaDtype::F32] {
            for (name, _) in FORMATS {
                if let Err(e) = compile("quant.cu", &quant_source(name), arch, dtype) {
                    panic!("quant.cu for {name} on {arch} {}: {e}", dtype.name());
                }
            }
            println!(
                "compiled {} block formats for {arch} {}",
                FORMATS.len(),
                dtype.name()
            );
        }
    }
}

/// The backend lets each kernel start before the previous one has finished (programmatic
/// dependent launch), so every kernel must reach `await_inputs` before it reads or writes what
/// other kernels use: directly, or through a device function that calls it.
#[test]
fn every_kernel_awaits_its_inputs() {
    let bodies: Vec<(String, bool, String)> = SOURCES
        .iter()
        .map(|(_, source)| *source)
        .chain([QUANT])
        .flat_map(functions)
        .collect();
    // await_inputs itself, and the functions that call it.
    let waiting: Vec<&str> = bodies
        .iter()
        .filter(|(_, _, body)| body.contains("await_inputs()"))
        .map(|(name, _, _)| name.as_str())
        .chain(["await_inputs"])
        .collect();
    let kernels: Vec<_> = bodies.iter().filter(|(_, global, _)| *global).collect();
    assert!(kernels.len() >= 15, "found only {} kernels", kernels.len());
    for (name, _, body) in kernels {
        assert!(
            waiting
                .iter()
                .any(|w| body.contains(&format!("{w}(")) || body.contains(&format!("{w}<"))),
            "kernel {name} never calls await_inputs"
        );
    }
}

/// (name, is a kernel, body) of each function defined in a CUDA source: a kernel is
/// `__global__`, other functions `__device__`; bodies are matched by braces.
fn functions(source: &str) -> Vec<(String, bool, String)> {
    let mut found = Vec::new();
    for (at, _) in source
        .match_indices("__global__")
        .chain(source.match_indices("__device__"))
    {
        let head_end = match source[at..].find(['{', ';']) {
            Some(i) if source[at + i..].starts_with('{') => at + i,
            _ => continue,
        };
        let head = &source[at..head_end];
        let Some(name) = head
            .split('(')
            .next()
            .and_then(|h| h.split_whitespace().last())
        else {
            continue;
        };
        let mut depth = 0;
        let mut end = head_end;
        for (i, c) in source[head_end..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = head_end + i;
                break;
            }
        }
        let global = head.starts_with("__global__");
        found.push((name.to_string(), global, source[head_end..end].to_string()));
    }
    found
}
