use keyformer::Backend;
use keyformer::backend::wgpu::{WgpuBackend, WgpuDtype, WgpuOptions};
use std::time::Instant;

#[test]
fn bench() {
    let b = WgpuBackend::new(WgpuOptions {
        dtype: WgpuDtype::F32,
        ..Default::default()
    })
    .unwrap();
    for (rows, n_out, n_in, reps) in [
        (1usize, 49152usize, 576usize, 5),
        (1, 3072, 576, 20),
        (1, 576, 1536, 20),
        (200, 3072, 576, 3),
        (200, 576, 1536, 3),
        (200, 49152, 576, 1),
    ] {
        let x = b.upload(&vec![0.5f32; rows * n_in]).unwrap();
        let w = b.upload_weight(vec![0.01f32; n_out * n_in]).unwrap();
        let mut out = b.zeros(rows * n_out).unwrap();
        b.download(&out, 1).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            b.linear(&x, rows, &w, None, n_out, n_in, &mut out).unwrap();
        }
        b.download(&out, 1).unwrap();
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "linear rows {rows} {n_out}x{n_in}: {:.2} ms, {:.2} GFLOP/s",
            s * 1e3,
            2.0 * (rows * n_out * n_in) as f64 / s / 1e9
        );
    }
    let x = b.upload(&vec![0.5f32; 576]).unwrap();
    let w = b.upload_weight(vec![1.0f32; 576]).unwrap();
    let mut out = b.zeros(576).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        b.norm(
            keyformer::model::config::NormKind::RmsNorm,
            &x,
            &w,
            None,
            1e-5,
            1,
            576,
            &mut out,
        )
        .unwrap();
    }
    b.download(&out, 1).unwrap();
    println!("norm x100: {:.2} ms each", t.elapsed().as_secs_f64() * 10.0);
    let y = b.upload(&vec![0.5f32; 576]).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        b.add(&mut out, &y, 576).unwrap();
    }
    b.download(&out, 1).unwrap();
    println!("add x100: {:.2} ms each", t.elapsed().as_secs_f64() * 10.0);
}

#[test]
fn phases() {
    let path = std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let t = Instant::now();
    let gpu = keyformer::Model::load(
        path,
        WgpuBackend::new(WgpuOptions {
            dtype: WgpuDtype::F32,
            ..Default::default()
        })
        .unwrap(),
        &mut |_, _| {},
    )
    .unwrap();
    println!("gpu load {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let cpu = keyformer::Model::load(path, keyformer::CpuBackend, &mut |_, _| {}).unwrap();
    println!("cpu load {:.2}", t.elapsed().as_secs_f64());
    let prompt: Vec<u32> = (0..200).map(|i| (i * 37 % 4000) as u32 + 100).collect();
    let mut sc = cpu.new_session(210).unwrap();
    let mut sg = gpu.new_session(210).unwrap();
    let t = Instant::now();
    cpu.forward(&mut sc, &prompt, false).unwrap();
    println!("cpu prefill 200 {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    gpu.forward(&mut sg, &prompt, false).unwrap();
    println!("gpu prefill 200 {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    for i in 0..5 {
        gpu.forward(&mut sg, &[i + 300], false).unwrap();
    }
    println!("gpu decode x5 {:.2}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    for i in 0..5 {
        cpu.forward(&mut sc, &[i + 300], false).unwrap();
    }
    println!("cpu decode x5 {:.2}", t.elapsed().as_secs_f64());
}
