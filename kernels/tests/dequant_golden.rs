//! Our dequantizers against golden values from the `gguf` Python package (llama.cpp's numpy
//! reference), made by `scripts/reference/dequant_golden.py`.

use cascade_kernels::quant::dequantize;
use cascade_weights::DType;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_type_matches_the_gguf_reference() {
    let json: serde_json::Value = serde_json::from_str(include_str!("data/dequant_golden.json"))
        .expect("golden file is JSON");
    let mut checked = 0;
    for dtype in DType::ALL {
        if dtype == DType::F32 {
            continue;
        }
        let case = json
            .get(dtype.name())
            .unwrap_or_else(|| panic!("no golden case for {dtype}"));
        let bytes = hex(case["hex"].as_str().unwrap());
        let want: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(dtype.bytes_for(want.len()), bytes.len(), "{dtype}");
        let mut got = vec![0f32; want.len()];
        dequantize(dtype, &bytes, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                "{dtype} value {i}: ours {g}, reference {w}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, DType::ALL.len() - 1);
}
