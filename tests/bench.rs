//! `wgnn bench` as a script meets it: `--json` prints one well-formed array with a row for
//! every product and step, each with a positive time and rate. Speed itself is never asserted.

use assert_cmd::Command;

#[test]
fn bench_json_rows_are_well_formed() {
    let out = Command::cargo_bin("wgnn")
        .unwrap()
        .args(["bench", "--shapes", "small", "--repeats", "1", "--backend", "cpu", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wgnn bench failed: {stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");

    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().expect("name is a string")).collect();
    for name in [
        "matmul",
        "matmul_forward",
        "matmul_weight_grad",
        "matmul_input_delta",
        "sae_784_196_784",
        "softmax_784_10",
        "mlp_784_256_128_10",
    ] {
        assert!(names.contains(&name), "no {name} row in {names:?}");
    }
    for r in &rows {
        let fields: Vec<&String> = r.as_object().expect("each row is an object").keys().collect();
        assert_eq!(fields.len(), 6, "row fields {fields:?}");
        let backend = r["backend"].as_str().unwrap();
        assert!(backend == "cpu f32" || backend == "cpu f64", "--backend cpu gave a {backend} row");
        assert!(!r["adapter"].as_str().unwrap().is_empty(), "{r}");
        let shape = r["shape"].as_str().unwrap();
        if r["name"].as_str().unwrap().starts_with("matmul") {
            let dims: Vec<usize> = shape.split('x').map(|d| d.parse().expect("m x n x k")).collect();
            assert_eq!(dims.len(), 3, "{shape}");
        } else {
            assert!(shape.strip_prefix("batch=").is_some_and(|b| b.parse::<usize>().is_ok()), "{shape}");
        }
        let (s, rate) = (r["median_seconds"].as_f64().unwrap(), r["gflops"].as_f64().unwrap());
        assert!(s > 0.0 && s.is_finite(), "time {s} in {r}");
        assert!(rate > 0.0 && rate.is_finite(), "rate {rate} in {r}");
    }
    // Every product and step of the small preset is timed in f32, one row each.
    let f32_rows = rows.iter().filter(|r| r["backend"] == "cpu f32").count();
    assert_eq!(f32_rows, 1 + 3 + 3, "one square product, three layer products, three steps");
}

/// Asking for the GPU where wgpu finds no adapter ends with one line that says what to do.
/// (Metal does not exist on Linux, so `--gpu-api metal` finds nothing there.)
#[cfg(target_os = "linux")]
#[test]
fn bench_without_an_adapter_says_so_in_one_line() {
    let out = Command::cargo_bin("wgnn")
        .unwrap()
        .args(["bench", "--backend", "gpu", "--gpu-api", "metal", "--repeats", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {stderr}");
    assert!(out.stdout.is_empty(), "no table without an adapter");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("no GPU adapter found"), "{stderr}");
    assert!(lines[0].contains("--backend cpu"), "the error names the way out: {stderr}");
}
