//! Every `unsafe` in the project's sources states why it is sound: each `unsafe` block and
//! `unsafe impl` has a `// SAFETY:` comment in the lines just above it, and each `unsafe fn` a
//! `# Safety` section in its doc comment. (The kernel and weights crates also deny
//! `unsafe_op_in_unsafe_fn`, so an `unsafe fn`'s body is no blanket permission.)

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                sources(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The code of a line, without its `//` comment (good enough for these sources: no `//` in
/// strings next to `unsafe`).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Whether byte `i` of `c` is outside string literals (an even number of quotes before it).
fn in_code(c: &str, i: usize) -> bool {
    c[..i].matches('"').count().is_multiple_of(2)
}

fn is_unsafe_fn(c: &str) -> bool {
    c.match_indices("unsafe fn ").any(|(i, _)| in_code(c, i))
}

fn is_unsafe_block(c: &str) -> bool {
    c.match_indices("unsafe")
        .filter(|&(i, _)| in_code(c, i))
        .any(|(i, _)| {
            let before = c[..i].chars().last();
            let after = c[i + 6..].trim_start();
            !before.is_some_and(|b| b.is_alphanumeric() || b == '_')
                && (after.starts_with('{') || after.starts_with("impl"))
        })
}

#[test]
fn every_unsafe_says_why_it_is_sound() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "src", "weights", "kernels", "engine", "gpu", "bench", "tests", "fuzz",
    ] {
        sources(&root.join(dir), &mut files);
    }
    let (mut blocks, mut fns, mut missing) = (0, 0, Vec::new());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let c = code(line);
            let here = || format!("{}:{}: {}", f.display(), i + 1, line.trim());
            if is_unsafe_block(c) {
                blocks += 1;
                let above = &lines[i.saturating_sub(6)..=i];
                if !above.iter().any(|l| l.contains("SAFETY")) {
                    missing.push(here());
                }
            }
            if is_unsafe_fn(c) {
                fns += 1;
                let mut j = i;
                while j > 0 && {
                    let t = lines[j - 1].trim_start();
                    t.starts_with("///") || t.starts_with("#[")
                } {
                    j -= 1;
                }
                if !lines[j..i].iter().any(|l| l.contains("# Safety")) {
                    missing.push(format!("{} (no # Safety)", here()));
                }
            }
        }
    }
    eprintln!("unsafe blocks and impls: {blocks}, unsafe fns: {fns}");
    assert!(
        blocks > 50 && fns > 30,
        "the scan found too little: {blocks} {fns}"
    );
    assert!(
        missing.is_empty(),
        "unsafe without a safety argument:\n{}",
        missing.join("\n")
    );
}
